"""The `tinyops` command. Thin: parse arguments, call the stage functions, turn errors into
messages and exit codes. Heavy frameworks are imported only by the commands that need them.
"""

from __future__ import annotations

import enum
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import TinyopsError

app = typer.Typer(
    name="tinyops",
    help="Labelled data → int8 TinyML models: prepare, distributed training, LiteRT export, validation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params.yaml to use.")]


class StageName(enum.StrEnum):
    prepare = "prepare"
    train = "train"
    export = "export"
    evaluate = "evaluate"
    deploy = "deploy"
    report = "report"


def _console():  # type: ignore[no-untyped-def]
    """A terminal gets its own width; a pipe or log gets tables wide enough not to truncate."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _fail(exc: TinyopsError) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[
        bool, typer.Option(help="Rerun every stage even if DVC finds it up to date.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(help="If another run holds this workspace, wait for it instead of failing."),
    ] = False,
) -> None:
    """Run the pipeline as the Prefect `retrain` flow and print the metrics.

    Every stage runs through DVC under one MLflow parent run, on Prefect's ephemeral server or
    the one at PREFECT_API_URL. With nothing new since the last success it ends as skipped
    (without a server, before Prefect starts at all).
    """
    from flows.schedule import configured_api_url, prefect_defaults
    from pipeline.config import load_params
    from pipeline.preflight import preflight
    from pipeline.run import nothing_new

    try:  # bad config, no MLflow store, a full disk, too many workers: fail now, not mid-run
        loaded = load_params(params)
        if not force and configured_api_url() is None:
            reason = nothing_new(params)
            if reason:
                typer.echo(f"skipped: {reason}")
                return
        preflight(loaded)
    except TinyopsError as exc:
        _fail(exc)
    prefect_defaults()
    from flows.retrain import retrain

    try:
        result = retrain(params_path=str(params), force=force, wait=wait)
    except TinyopsError as exc:
        _fail(exc)
    if result.get("skipped"):
        typer.echo(f"skipped: {result['reason']}")
        return
    _print_summary(result)


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you must.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = 4200,
) -> None:
    """Start a Prefect server for scheduled runs (UI at http://127.0.0.1:4200).

    Its database lives in .tinyops/prefect/. Runs until Ctrl-C.
    """
    from flows.schedule import start_server

    start_server(host, port)


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="When to retrain, e.g. '0 3 * * *' (03:00 daily).")],
    name: Annotated[str, typer.Option(help="Deployment name: retrain/NAME.")] = "nightly",
    timezone: Annotated[str, typer.Option(help="IANA timezone of the cron fields.")] = "UTC",
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[
        bool, typer.Option(help="Retrain on every run, even when nothing is new.")
    ] = False,
) -> None:
    """Schedule retraining: deployment retrain/NAME, served from this workspace.

    Needs a Prefect server (PREFECT_API_URL, else 127.0.0.1:4200: see `tinyops server`); serves
    until Ctrl-C. A run with no new data, params or code ends at once as Skipped.
    """
    from flows.schedule import prefect_defaults, serve

    prefect_defaults()
    try:
        serve(cron, name=name, timezone=timezone, params_path=str(params), force=force)
    except TinyopsError as exc:
        _fail(exc)


@app.command()
def stage(
    name: Annotated[StageName, typer.Argument(help="The stage to run.")],
    params: ParamsOpt = Path("params.yaml"),
    device: Annotated[
        str | None, typer.Option(help="deploy: the device (a key of params.yaml's devices).")
    ] = None,
) -> None:
    """Run one stage (what dvc.yaml calls). Logs a nested MLflow run under the pipeline's run."""
    from pipeline.errors import ConfigError
    from pipeline.stages import STAGES, run_deploy

    try:
        if name is StageName.deploy:
            if not device:
                raise ConfigError(
                    "`tinyops stage deploy` needs --device NAME (see `tinyops devices`)."
                )
            run_deploy(params, device)
        elif device:
            raise ConfigError(f"--device applies to the deploy stage only, not '{name.value}'.")
        else:
            STAGES[name.value](params)
    except TinyopsError as exc:
        _fail(exc)


def _move_production(device: str, move: str, version: str | None = None) -> None:
    """rollback/promote: check the name, move the alias (the bundle is verified), say where."""
    from pipeline import registry, tracking
    from pipeline.config import check_device_name
    from pipeline.deploy import DEPLOY_ROOT
    from pipeline.errors import ConfigError

    try:
        try:
            check_device_name(device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        client = tracking.client()
        if move == "rollback":
            old, new = registry.rollback(client, device, DEPLOY_ROOT)
        else:
            old, new = registry.promote_version(client, device, str(version), DEPLOY_ROOT)
    except TinyopsError as exc:
        _fail(exc)
    typer.echo(f"{device}: production v{old or '-'} → v{new}; {DEPLOY_ROOT / device}/ restored.")


@app.command()
def rollback(
    device: Annotated[str, typer.Argument(help="The device whose production version moves back.")],
) -> None:
    """Move the device's `production` alias to the previous version; restore deploy/<device>/."""
    _move_production(device, "rollback")


@app.command()
def promote(
    device: Annotated[str, typer.Argument(help="The device.")],
    version: Annotated[str, typer.Argument(help="The registered version to put in production.")],
) -> None:
    """Put a registered version in production by hand; its bundle is verified first."""
    _move_production(device, "promote", version)


@app.command()
def devices(params: ParamsOpt = Path("params.yaml")) -> None:
    """Every device with its production version, variant, size, arena, accuracy and latency."""
    from rich.table import Table

    from pipeline import registry, tracking
    from pipeline.config import load_params

    try:
        parsed = load_params(params)
    except TinyopsError as exc:
        _fail(exc)
    client = tracking.client()
    table = Table(title="tinyops devices")
    for col in (
        "device",
        "runtime",
        "production",
        "variant",
        "size (B)",
        "arena (B)",
        "accuracy",
        "latency (ms)",
    ):
        table.add_column(col)
    for name, profile in sorted(parsed.devices.items()):
        v = registry.production(client, name)
        if v is None:
            table.add_row(name, profile.runtime, "-", "-", "-", "-", "-", "-")
            continue
        t = v.tags
        table.add_row(
            name,
            profile.runtime,
            f"v{v.version}",
            t.get("variant", "?"),
            t.get("model_bytes", "?"),
            t.get("arena_bytes") or "-",
            t.get("accuracy", "?"),
            f"{t.get('latency_ms', '?')} ({'est.' if profile.runtime == 'tflm' else 'host'})",
        )
    _console().print(table)


@app.command()
def check(params: ParamsOpt = Path("params.yaml")) -> None:
    """Validate params.yaml and print the resolved configuration, doing no work."""
    import yaml

    from pipeline.config import load_params

    try:
        parsed = load_params(params)
    except TinyopsError as exc:
        _fail(exc)
    typer.echo(yaml.safe_dump(parsed.model_dump(mode="json"), sort_keys=False))


@app.command()
def bench(
    rounds: Annotated[int, typer.Option(min=1, help="Measured rounds after the warm-up.")] = 5,
) -> None:
    """Measure speed, size, memory and overhead side by side; write bench/results.json.

    Uses the workspace's last pipeline run (run `tinyops run` first); about 18 minutes on 2 cores.
    """
    from rich.table import Table

    from pipeline.bench import bench as run_bench

    r = run_bench(rounds, on_progress=lambda s: typer.echo(s, err=True))
    table = Table(
        title=f"tinyops bench: {r['machine']['cores']} cores, torch {r['machine']['torch']}"
    )
    for col in ("measure", "median", "min–max", "ratio"):
        table.add_column(col)
    for model, rows in r["throughput"].items():
        base = rows["1 proc × 1 thread"]["median"]
        for name, s in rows.items():
            table.add_row(
                f"{model}: {name} (samples/s)",
                f"{s['median']:,.1f}",
                f"{s['min']:,.1f}–{s['max']:,.1f}",
                f"{s['median'] / base:.2f}×",
            )
        for way, s in r["allreduce_ms"].get(model, {}).items():
            table.add_row(
                f"{model}: all-reduce of the gradients, {way} (ms)",
                f"{s['median']:.3f}",
                f"{s['min']:.3f}–{s['max']:.3f}",
                "",
            )
    for variant, s in r["latency_ms"].items():
        base = r["latency_ms"]["fp32"]["median"]
        table.add_row(
            f"{'' if variant.startswith('tflm') else 'LiteRT '}{variant} invoke, host (ms)",
            f"{s['median']:.4f}",
            f"{s['min']:.4f}–{s['max']:.4f}",
            "" if variant.startswith("tflm") else f"{s['median'] / base:.2f}×",
        )
    q = r["quantization"]
    for level, value in q["accuracy"].items():
        table.add_row(level, f"{value:.4f}", "", "")
    table.add_row("int8/fp32 agreement", f"{q['int8_fp32_agreement']:.4f}", "", "")
    for variant, size in q["bytes"].items():
        table.add_row(
            f".tflite {variant} (B)", f"{size:,}", "", f"{size / q['bytes']['int8']:.2f}× int8"
        )
    heavy = r["resnet8_export"]
    for variant in ("fp32", "int8"):
        size = heavy["bytes"][variant]
        ratio = f"{size / heavy['bytes']['int8']:.2f}× int8"
        table.add_row(f"resnet8: .tflite {variant} (B)", f"{size:,}", "", ratio)
    for name, arenas in (("default", q["arena_bytes"]), ("resnet8", heavy["arena_bytes"])):
        for variant in ("fp32", "int8"):
            ratio = f"{arenas[variant] / arenas['int8']:.2f}× int8"
            table.add_row(
                f"{name}: TFLite Micro arena {variant} (B)", f"{arenas[variant]:,}", "", ratio
            )
    for device, ratio in q["bundled_arena_over_need"].items():
        table.add_row(f"bundled arena ÷ need: {device}", f"{ratio:.3f}", "", "")
    table.add_row(
        "resnet8: TFLite Micro int8 invoke, host (ms)",
        f"{heavy['tflm_int8_invoke_ms']:.2f}",
        "",
        "",
    )
    for device, ms in q["mcu_estimated_latency_ms"].items():
        table.add_row(f"estimated latency: {device} (ms)", f"{ms:.2f}", "", "")
    for stage, mib in r["memory"].items():
        table.add_row(f"peak RSS: {stage} (MiB)", f"{mib:,.0f}", "", "")
    for name, s in r["overhead"].items():
        span = f"{s['min']:.3f}–{s['max']:.3f}" if "min" in s else ""
        table.add_row(name, f"{s['median']:.3f}", span, "")
    console = _console()
    console.print(table)
    for t in r["targets"]:
        value = "" if t["value"] is None else f" ({t['value']:.3g})"
        console.print(f"{t['status']:>12}  {t['target']}{value}")


def _print_summary(result: dict) -> None:
    from rich.table import Table

    table = Table(title="tinyops: test-split results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "torch_fp32_accuracy",
        "tflite_fp32_accuracy",
        "tflite_int8_accuracy",
        "tflm_int8_accuracy",
        "tflite_fp32_bytes",
        "tflite_int8_bytes",
        "tflm_arena_bytes",
    ):
        if key in result:
            value = result[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console = _console()
    console.print(table)
    console.print(
        f"MLflow run {result.get('run_id')}: "
        "mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db"
    )


def main() -> None:
    from pipeline import interrupt

    interrupt.install()  # SIGTERM unwinds like Ctrl-C: outputs stay whole, MLflow runs end KILLED
    try:
        try:
            app()
        except SystemExit as done:
            if interrupt.received is None:
                raise
            raise KeyboardInterrupt from done
        interrupt.check()  # a stop whose exception some library swallowed still counts
    except KeyboardInterrupt:  # Terminated included (some libraries re-raise it as this type)
        signum = interrupt.received or signal.SIGINT
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"{what} (signal {int(signum)}); earlier outputs are unchanged", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
