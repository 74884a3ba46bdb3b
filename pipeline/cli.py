"""The `tinyops` command. Thin: parse arguments, call the stage functions, turn errors into
messages and exit codes. Heavy frameworks are imported only by the commands that need them.
"""

from __future__ import annotations

import enum
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.errors import ConfigError, TinyopsError

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
    ignore_preflight: Annotated[
        bool,
        typer.Option(help="Train even when preflight finds that no device can take the model."),
    ] = False,
) -> None:
    """Run the pipeline as the Prefect `retrain` flow and print the metrics.

    Every stage runs through DVC under one MLflow parent run, on Prefect's ephemeral server or
    the one at PREFECT_API_URL. With nothing new since the last success it ends as skipped
    (without a server, before Prefect starts at all).
    """
    from flows.schedule import configured_api_url, prefect_defaults, require_server
    from pipeline.core.config import load_params
    from pipeline.core.preflight import preflight
    from pipeline.orchestration.dvc import require_tracked
    from pipeline.orchestration.run import nothing_new

    try:  # bad config, no MLflow store or Prefect server, a full disk, too many workers: now
        loaded = load_params(params)
        require_tracked(params)
        api = configured_api_url()
        if api is not None:
            require_server(api)
        if not force and api is None:
            reason = nothing_new(params)
            if reason:
                typer.echo(f"skipped: {reason}")
                return
        preflight(loaded)
    except TinyopsError as exc:
        _fail(exc)
    if loaded.orchestrate.preflight:
        _preflight_in_child(params, ignore_preflight)
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


@app.command("preflight")
def preflight_command(
    params: ParamsOpt = Path("params.yaml"),
    warn_only: Annotated[
        bool, typer.Option(help="Report a model no device can take, but exit 0.")
    ] = False,
) -> None:
    """Before training: will the model, on each device, run fully int8 in TensorFlow Lite Micro
    and fit? Exits 2 when no device can take it. Writes metrics/preflight.json."""
    from pipeline.core.config import load_params
    from pipeline.orchestration.dvc import require_tracked

    try:
        loaded = load_params(params)
        require_tracked(params)
        _model_preflight(loaded, ignore=warn_only)
    except TinyopsError as exc:
        _fail(exc)


def _preflight_in_child(params: Path, ignore: bool) -> None:
    """`tinyops preflight` as a child process: it imports torch and litert-torch, or
    TensorFlow, which would otherwise stay in the flow's process for the whole run (and
    TensorFlow's logging set-up takes over Prefect's console format). Its exit code is ours;
    its stderr reaches ours without the lines no user can act on."""
    import subprocess
    import sys

    from pipeline.core.quiet import is_noise
    from pipeline.orchestration.dvc import tool

    cmd = [tool("tinyops"), "preflight", "--params", str(params)]
    cmd += ["--warn-only"] if ignore else []
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as child:
        try:
            assert child.stderr is not None
            for line in child.stderr:
                if not is_noise(line):
                    sys.stderr.write(line)
            code = child.wait()
        finally:  # Ctrl-C or SIGTERM here: the child goes too, never left behind
            if child.poll() is None:
                child.terminate()
                child.wait()
    if code:
        raise typer.Exit(code if code > 0 else 128 - code)


def _model_preflight(params: Any, ignore: bool) -> None:
    """Print the preflight table; refuse (exit 2) a model no device can take unless `ignore`."""
    import time

    from rich.table import Table

    from pipeline.core.errors import ConfigError
    from pipeline.orchestration.preflight import refusal, rows, run_preflight

    started = time.perf_counter()
    report, cached = run_preflight(params)
    took = "cached" if cached else f"{time.perf_counter() - started:.1f} s"
    if "skipped" in report:
        typer.echo(f"preflight: skipped: {report['skipped']}")
        return
    table = Table(title=f"preflight: {report['model']} ({took})")
    for column in ("device", "runtime", "fits", "flash B", "RAM B", "latency ms", "why"):
        table.add_column(column, overflow="fold")
    for row in rows(report):
        table.add_row(*row)
    _console().print(table)
    why = refusal(report)
    if why and not ignore:
        raise ConfigError(why)
    if why:
        typer.echo(f"warning: {why}\nGoing on anyway (--ignore-preflight).", err=True)


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
    pool: Annotated[
        str | None,
        typer.Option(help="A work pool: deploy for its workers and return (default: serve here)."),
    ] = None,
) -> None:
    """Schedule retraining: deployment retrain/NAME, served from this workspace.

    Needs a Prefect server (PREFECT_API_URL, else 127.0.0.1:4200: see `tinyops server`); serves
    until Ctrl-C. A run with no new data, params or code ends at once as Skipped. With --pool,
    the deployment is made for that work pool (created if missing) and this command returns:
    `prefect worker start --pool NAME` runs it (docs/team.md: serve or pool).
    """
    from flows.schedule import deploy_to_pool, prefect_defaults, serve

    prefect_defaults()
    try:
        if pool:
            deploy_to_pool(cron, pool, name, timezone, str(params), force)
        else:
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
    from pipeline.core.errors import ConfigError
    from pipeline.stages import STAGES, recorded

    try:
        if (name is StageName.deploy) != bool(device):
            raise ConfigError(
                "`tinyops stage deploy` needs --device NAME (see `tinyops devices`)."
                if name is StageName.deploy
                else f"--device applies to the deploy stage only, not '{name.value}'."
            )
        if device:  # before the name becomes part of a path
            from pipeline.core.config import check_device_name

            try:
                check_device_name(device)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        target = f"deploy@{device}" if device else name.value
        with recorded(target):
            STAGES[name.value](params, *([device] if device else []))
    except TinyopsError as exc:
        _fail(exc)


@app.command()
def worker(
    params: ParamsOpt = Path("params.yaml"),
    rdzv: Annotated[
        str | None,
        typer.Option(help="host:port of node 0's rendezvous (default: train.rdzv_endpoint)."),
    ] = None,
) -> None:
    """Join node 0's training job from this machine's own clone (train.nnodes above 1). Its code,
    params and prepared data must hash as node 0's; run `tinyops stage prepare` here first."""
    from pipeline.core.config import load_params
    from pipeline.training.launcher import join

    try:
        code = join(load_params(params), params, rdzv)
    except TinyopsError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _move_production(device: str, move: str, version: str | None = None) -> None:
    """rollback/promote: check the name, move the alias (the bundle is verified), say where."""
    from pipeline.core import tracking
    from pipeline.core.catalog import DEPLOY_ROOT
    from pipeline.core.config import check_device_name
    from pipeline.core.errors import ConfigError
    from pipeline.deploy import registry

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
def unlock(
    device: Annotated[str, typer.Argument(help="The device whose promotion lock to remove.")],
) -> None:
    """Remove a device's promotion lock left by a killed deploy (only when no deploy runs)."""
    from pipeline.core import tracking
    from pipeline.core.config import check_device_name
    from pipeline.core.errors import ConfigError
    from pipeline.deploy import registry

    try:
        try:
            check_device_name(device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        holder = registry.unlock(tracking.client(), device)
    except TinyopsError as exc:
        _fail(exc)
    name = registry.lock_name(device)
    typer.echo(f"{name}: removed (held by {holder})." if holder else f"{name}: was not held.")


@app.command()
def devices(params: ParamsOpt = Path("params.yaml")) -> None:
    """Every device with its production version, variant, size, arena, accuracy and latency."""
    from rich.table import Table

    from pipeline.core import tracking
    from pipeline.core.config import load_params
    from pipeline.deploy import registry

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
def firmware(
    params: ParamsOpt = Path("params.yaml"),
    op: Annotated[
        list[str] | None, typer.Option(help="TFLite op to compile a kernel for (repeatable).")
    ] = None,
) -> None:
    """Cross-compile TensorFlow Lite Micro for every microcontroller in params.yaml, once per core,
    kernels and commit (cached; see tflm.cache_dir), so that deploy only links and runs.

    Default ops: those of small int8 CNNs. A deploy compiles any other kernel its model needs.
    """
    from pipeline.core.config import load_params
    from pipeline.deploy import mcu

    try:
        parsed = load_params(params)
    except TinyopsError as exc:
        _fail(exc)
    for line in mcu.warm(parsed, tuple(op) if op else mcu.WARM_OPS):
        typer.echo(line)


@app.command()
def example(
    path: Annotated[
        Path, typer.Argument(help="An example overlay, e.g. examples/basicmotions.yaml.")
    ],
    arch: Annotated[str | None, typer.Option(help="model.arch to set (e.g. gru).")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Overlay an example's sections on params.yaml (the old file is kept as params.yaml.bak)."""
    import shutil

    import yaml

    from pipeline.core import atomic
    from pipeline.core.config import with_example
    from pipeline.core.errors import ConfigError

    try:
        if not path.is_file():
            raise ConfigError(f"{path}: no such example; see examples/.")
        base = yaml.safe_load(params.read_text(encoding="utf-8"))
        merged = with_example(
            base, yaml.safe_load(path.read_text(encoding="utf-8")), str(path), arch
        )
    except yaml.YAMLError as exc:
        _fail(ConfigError(f"{path} or {params}: not valid YAML: {exc}"))
    except TinyopsError as exc:
        _fail(exc)
    shutil.copyfile(params, params.with_name(params.name + ".bak"))
    atomic.write_bytes(params, yaml.safe_dump(merged, sort_keys=False).encode())
    m = merged["model"]
    print(
        f"{params}: {merged['prepare']['source']} with model.arch {m['arch']} "
        f"(previous file: {params.name}.bak). Next: tinyops run"
    )


@app.command()
def check(
    params: ParamsOpt = Path("params.yaml"),
    explain: Annotated[
        str | None,
        typer.Option(
            help="Print what a key (train.lr) or a section (train) means; `all`: every key."
        ),
    ] = None,
    write: Annotated[
        bool,
        typer.Option(
            help="Fill in the keys dvc.yaml tracks that the file leaves out, with their defaults "
            "(the old file is kept as params.yaml.bak)."
        ),
    ] = False,
) -> None:
    """Validate params.yaml and print the resolved configuration, doing no work."""
    if explain is not None:
        _explain(explain)
        return
    import yaml

    from pipeline.core.config import load_params
    from pipeline.core.preflight import check_files
    from pipeline.orchestration.dvc import require_tracked

    try:
        parsed = load_params(params)
        if write:
            _fill_tracked(params)
        require_tracked(params)
        check_files(parsed)
    except TinyopsError as exc:
        _fail(exc)
    typer.echo(yaml.safe_dump(parsed.model_dump(mode="json"), sort_keys=False))
    _check_stores()


def _check_stores() -> None:
    """The stores in use and whether each answers, as YAML comments (stdout stays the params);
    any that does not is an error naming it, without its password."""
    from flows.schedule import prefect_store
    from pipeline.core.errors import PipelineError
    from pipeline.core.preflight import mlflow_store
    from pipeline.core.stores import remote_store
    from pipeline.orchestration.dvc import tool

    stores = [mlflow_store(), prefect_store(), remote_store(tool("dvc"))]
    typer.echo("# stores (from the environment and DVC's config, never params.yaml):")
    for store in stores:
        typer.echo(f"#   {store.line()}")
    down = [f"{s.role} at {s.where}: {s.problem}" for s in stores if s.problem]
    if down:
        _fail(PipelineError("not every store answers:\n  " + "\n  ".join(down)))


def _fill_tracked(params: Path) -> None:
    """Write the defaults of the tracked keys the file leaves out (none left out: no write);
    the file's leading comments stay, the rest is rewritten as plain YAML."""
    import itertools
    import shutil

    import yaml

    from pipeline.core import atomic
    from pipeline.core.config import missing_keys, read_params, with_defaults
    from pipeline.orchestration.dvc import tracked_params

    raw = read_params(params) or {}
    missing = missing_keys(raw, tracked_params())
    if not missing:
        return
    shutil.copyfile(params, params.with_name(params.name + ".bak"))
    lines = params.read_text(encoding="utf-8").splitlines(True)
    header = "".join(itertools.takewhile(lambda ln: ln.startswith("#") or not ln.strip(), lines))
    filled = yaml.safe_dump(with_defaults(raw, missing), sort_keys=False)
    atomic.write_text(params, header + filled)
    typer.echo(f"{params}: filled in {', '.join(missing)} (previous file: {params.name}.bak)")


def _explain(key: str) -> None:
    from pipeline.core.params_doc import explain

    try:
        entries = explain(key)
    except TinyopsError as exc:
        _fail(exc)
    for e in entries:
        if e.kind == "section":
            typer.echo(f"\n{e.key}: {e.doc}")
        else:
            typer.echo(f"{e.key}  ({e.kind}, default {e.default})\n    {e.doc}")


@app.command()
def docs() -> None:
    """Regenerate the generated pages: docs/params.md from the params field docstrings,
    docs/exit-codes.md from the error families, docs/performance.md from bench/results.json."""
    from pipeline.core import atomic

    try:
        pages = generated_pages()
    except TinyopsError as exc:
        _fail(exc)
    for path, text in pages.items():
        atomic.write_text(path, text)
        typer.echo(f"wrote {path}")


def generated_pages() -> dict[Path, str]:
    """Each generated docs page and its text (tests/architecture/test_docs.py compares them)."""
    import json

    from pipeline.bench.page import markdown as performance
    from pipeline.core import catalog, errors
    from pipeline.core.errors import ArtifactError
    from pipeline.core.params_doc import markdown as params_reference

    try:
        results = json.loads(catalog.BENCH_RESULTS.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"{catalog.BENCH_RESULTS}: unreadable ({exc}); run `tinyops bench` (or restore it "
            "with git) before `tinyops docs`."
        ) from None
    return {
        catalog.PARAMS_DOC: params_reference(),
        catalog.EXIT_CODES_DOC: errors.markdown(),
        catalog.PERFORMANCE_DOC: performance(results),
    }


@app.command()
def bench(
    rounds: Annotated[int, typer.Option(min=1, help="Measured rounds after the warm-up.")] = 5,
    only: Annotated[
        str | None,
        typer.Option(help="Run one section only (merged into bench/results.json); see --list."),
    ] = None,
    list_sections: Annotated[
        bool, typer.Option("--list", help="List the sections with their expected duration.")
    ] = False,
) -> None:
    """Measure speed, size, memory and overhead side by side; write bench/results.json.

    Uses the workspace's last pipeline run (run `tinyops run` first); about 40 minutes on 2 cores
    for every section; `--list` names each section with its expected duration, `--only NAME`
    runs one and merges it into bench/results.json. `tinyops docs` then regenerates
    docs/performance.md from it.
    """
    from pipeline.bench.runner import SECTIONS, bench_only, listing
    from pipeline.bench.runner import bench as run_bench
    from pipeline.bench.table import print_results

    if list_sections:
        typer.echo(listing())
        return
    if only is not None and only not in SECTIONS:
        import difflib

        close = difflib.get_close_matches(only, list(SECTIONS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        _fail(ConfigError(f"no bench section '{only}'{hint} (sections: {', '.join(SECTIONS)})"))

    progress = lambda s: typer.echo(s, err=True)  # noqa: E731
    results = bench_only(only, rounds, progress) if only else run_bench(rounds, progress)
    print_results(results, _console())


def _print_summary(result: dict) -> None:
    from rich.table import Table

    table = Table(title="tinyops: test-split results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "framework_fp32_accuracy",
        "tflite_fp32_accuracy",
        "tflite_int8_accuracy",
        "tflm_int8_accuracy",
        "framework_fp32_auc",  # autoencoder: anomaly-score AUC beside the detection accuracy
        "tflite_int8_auc",
        "tflm_int8_auc",
        "tflite_fp32_bytes",
        "tflite_int8_bytes",
        "tflm_arena_bytes",
        "tflm_streaming_int8_accuracy",  # gru/lstm: the step model, frame by frame
        "tflite_streaming_int8_bytes",
        "tflm_streaming_arena_bytes",
    ):
        if key in result:
            value = result[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    if (
        "int8_worst_layer" in result
    ):  # where int8 departs most from float (metrics/int8_layers.json)
        table.add_row("int8_worst_layer", result["int8_worst_layer"])
    console = _console()
    console.print(table)
    console.print(f"MLflow run {result.get('run_id')}: {_where_to_browse()}")


def _where_to_browse() -> str:
    """A tracking server is browsed at its address; the embedded store with `mlflow ui`."""
    import os

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        from pipeline.core.stores import redact

        return f"open {redact(uri)}"
    return "mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db"


stack_app = typer.Typer(
    help="The team stack on this box: PostgreSQL, Swift (S3), MLflow and Prefect servers "
    "(docs/team.md).",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
StackDir = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="The stack's folder: data, configs, secrets, logs [.tinyops/stack]."
    ),
]


def _stack_dir(folder: Path | None) -> Path:
    from pipeline.core.catalog import STACK_DIR

    return folder or STACK_DIR


@stack_app.command("up")
def stack_up(folder: StackDir = None) -> None:
    """Start every service of the stack that is not running; each healthy before the next."""
    folder = _stack_dir(folder)
    from pipeline.core.extras import require

    try:
        for module in ("psycopg2", "swift", "boto3", "flask_wtf"):
            require(module, "The team stack")
        from pipeline.team import stack

        stack.up(folder)
    except TinyopsError as exc:
        _fail(exc)
    print(f'The stack is up. In each shell: eval "$(tinyops stack env --dir {folder})"\n'
          f"In each clone, once: tinyops stack remote --dir {folder}  (the DVC remote)")  # fmt: skip


@stack_app.command("down")
def stack_down(folder: StackDir = None) -> None:
    """Stop the stack's services (their data stays in the folder)."""
    folder = _stack_dir(folder)
    from pipeline.team import stack

    stack.down(folder)


@stack_app.command("status")
def stack_status(folder: StackDir = None) -> None:
    """Each service: up, running but not answering, or down. Exit 13 unless all are up."""
    folder = _stack_dir(folder)
    from pipeline.core.errors import ServiceError
    from pipeline.team import stack

    states = stack.status(folder)
    for name, state in states.items():
        print(f"{name:<16} {state}")
    if not states or any(state != "up" for state in states.values()):
        _fail(ServiceError(f"the team stack in {folder} is not all up"))


@stack_app.command("env")
def stack_env(folder: StackDir = None) -> None:
    """Print the exports that point tinyops (MLflow, Prefect) at the stack, secrets included."""
    folder = _stack_dir(folder)
    import shlex

    from pipeline.team import stack

    try:
        cfg = stack.load(folder)
    except TinyopsError as exc:
        _fail(exc)
    for key, value in stack.client_env(cfg).items():
        print(f"export {key}={shlex.quote(value)}")


@stack_app.command("remote")
def stack_remote(folder: StackDir = None) -> None:
    """Make the stack's bucket this clone's default DVC remote: its address in .dvc/config (commit
    it), its keys in .dvc/config.local (never committed)."""
    folder = _stack_dir(folder)
    import subprocess

    from pipeline.team import stack

    try:
        cfg = stack.load(folder)
    except TinyopsError as exc:
        _fail(exc)
    for argv in stack.dvc_remote_commands(cfg):
        done = subprocess.run([_dvc(), *argv[1:]], capture_output=True, text=True)
        if done.returncode != 0:  # not a DVC project, say: DVC's own words, without the key
            said = (done.stderr or done.stdout).strip().replace(cfg.s3_key, "***")
            _fail(ConfigError(f"`{' '.join(argv[:4])} …` failed in {Path.cwd()}: {said}"))
    print(f"DVC remote '{stack.DVC_REMOTE}' is the default: `dvc push` and `dvc pull` use it")


field_app = typer.Typer(
    help="Field data: batches devices send back, checked against their bundle (docs/field.md).",
    no_args_is_help=True,
)
app.add_typer(field_app, name="field")
token_app = typer.Typer(help="Per-device ingest tokens (stored hashed).", no_args_is_help=True)
field_app.add_typer(token_app, name="token")


@token_app.command("issue")
def field_token_issue(
    device: Annotated[str, typer.Argument(help="The device (a key of params.yaml's devices).")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Print a new token for DEVICE, once: only its hash is kept. It writes only DEVICE's stream."""
    from pipeline.core.config import load_params, require_device
    from pipeline.field.tokens import TokenStore

    try:
        require_device(load_params(params), device, str(params))
    except TinyopsError as exc:
        _fail(exc)
    print(TokenStore().issue(device))


@token_app.command("revoke")
def field_token_revoke(
    which: Annotated[str, typer.Argument(help="A token id (its second part), or a device.")],
) -> None:
    """Revoke one token, or every token of a device; a running server refuses it at once."""
    from pipeline.field.tokens import TokenStore

    try:
        revoked = TokenStore().revoke(which)
    except TinyopsError as exc:
        _fail(exc)
    print(f"revoked: {', '.join(revoked) or 'nothing (already revoked)'}")


@token_app.command("list")
def field_token_list() -> None:
    """Every token by id and device, and whether it is revoked (never the token itself)."""
    from pipeline.field.tokens import TokenStore

    for token in TokenStore().tokens().values():
        print(f"{token.id}  {token.device:<28} {'revoked' if token.revoked else 'active'}")


@field_app.command("ingest")
def field_ingest(
    file: Annotated[Path, typer.Argument(help="One batch as JSON (docs/field.md); - for stdin.")],
) -> None:
    """Check one batch against its device's bundle and store it under data/field/ (all or
    nothing; a replayed batch id is refused)."""
    import json

    from pipeline.core.errors import FieldRefusal
    from pipeline.field.store import FieldStore

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
        stored = FieldStore().ingest(json.loads(text))
    except (OSError, ValueError, FieldRefusal) as exc:  # the file named, with what is wrong
        _fail(FieldRefusal(f"{file}: {exc}"))
    print(f"stored {stored.samples} samples: {stored.path}")


@field_app.command("monitor")
def field_monitor(
    device: Annotated[
        list[str] | None,
        typer.Option(help="Only this device (repeatable); default: all with data."),
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            help="Run the Prefect `monitor` flow: record in MLflow and Prefect, and where drift "
            "is confirmed with labels, merge them into the raw data and retrain."
        ),
    ] = False,
    deployment: Annotated[
        str | None,
        typer.Option(
            help="With --retrain and a Prefect server: start a run of this deployment "
            "(retrain/NAME, from tinyops schedule) instead of retraining here."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Judge each device's field data against the training split, one monitor interval at a
    time; write report/drift/<device>/ and say where drift is confirmed."""
    from pipeline.core.catalog import DRIFT_DIR, DRIFT_MD
    from pipeline.core.config import load_params
    from pipeline.monitor.report import monitor_workspace, verdict

    try:
        parsed = load_params(params)
        if deployment and not retrain:
            raise ConfigError("--deployment goes with --retrain")
        if retrain:
            _monitor_flow(params, device, deployment)
            return
        results = monitor_workspace(parsed, device)
    except TinyopsError as exc:
        _fail(exc)
    if not results:
        print("no field data from the deployed models yet (tinyops field ingest or serve)")
    for drift in results.values():
        print(f"{verdict(drift, parsed.monitor)}  [{DRIFT_DIR / drift.device / DRIFT_MD}]")


def _monitor_flow(params: Path, devices: list[str] | None, deployment: str | None) -> None:
    from flows.schedule import configured_api_url, prefect_defaults, require_server

    api = configured_api_url()
    if deployment and api is None:
        raise ConfigError(f"--deployment {deployment} needs a Prefect server: set PREFECT_API_URL")
    if api is not None:
        require_server(api)
    prefect_defaults()
    from flows.monitor import monitor

    result = monitor(params_path=str(params), devices=devices, deployment=deployment)
    retrained = result.get("result")
    if not result["drifted"]:
        print("no labelled drift confirmed: nothing to retrain")
    elif retrained and retrained.get("skipped"):
        print(f"skipped: {retrained['reason']}")
    elif retrained:
        _print_summary(retrained)


@field_app.command("serve")
def field_serve(
    host: Annotated[str, typer.Option(help="Address to bind; another than loopback needs TLS.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed).")] = 8765,
    max_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1 << 20,
    max_samples: Annotated[int, typer.Option(min=1, help="Most samples in one batch.")] = 256,
    rate: Annotated[float, typer.Option(min=0.01, help="Batches/s per device, sustained.")] = 20.0,
    burst: Annotated[int, typer.Option(min=1, help="Batches a device may send at once.")] = 40,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (with --tls-key).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
) -> None:
    """Serve POST /v1/batches to devices' gateways until stopped (Ctrl-C or SIGTERM)."""
    from pipeline.field.server import Limits, make_server
    from pipeline.field.store import FieldStore
    from pipeline.field.tokens import TokenStore

    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    try:
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        server = make_server(
            host, port, FieldStore(max_samples=max_samples), TokenStore(),
            Limits(max_bytes, rate, burst), tls,
        )  # fmt: skip
    except (TinyopsError, OSError) as exc:
        _fail(exc if isinstance(exc, TinyopsError) else ConfigError(f"{host}:{port}: {exc}"))
    scheme = "https" if tls else "http"
    print(f"field endpoint: {scheme}://{host}:{server.server_port}/v1/batches", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def main() -> None:
    from pipeline.core import interrupt
    from pipeline.core.quiet import quiet_third_party

    quiet_third_party()  # only what a user can act on reaches the log
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
