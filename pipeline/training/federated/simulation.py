"""train.federated.engine simulation: the ServerApp and ClientApp in Flower's Simulation Engine,
one Ray actor per concurrently trained client, each given one CPU. Run by the launcher as its
own process group (`python -m pipeline.training.federated.simulation`), so Ray and its actors go with it
on every path."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def main() -> int:
    from pipeline.training.federated import job

    here = job.current()
    os.chdir(here.workspace)
    started = time.perf_counter()
    from flwr.simulation import run_simulation

    from pipeline.training.federated import server
    from pipeline.training.federated.client import app as client_app

    server._quiet_flower()
    cores = len(os.sched_getaffinity(0))
    try:
        _simulate(
            run_simulation, server.app, client_app, here.params.train.federated.clients, cores
        )
    except Exception:
        if not server.FAILURE:
            raise
    if server.FAILURE:
        exc = server.FAILURE[0]
        print(f"federated training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"simulation engine: {time.perf_counter() - started:.1f} s in all", file=sys.stderr)
    return 0


def _simulate(
    run_simulation: Any, server_app: Any, client_app: Any, clients: int, cores: int
) -> None:
    """One Ray actor per concurrently trained client, one CPU each; no dashboard."""
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cores,
                "include_dashboard": False,
                "logging_level": "error",
                "log_to_driver": True,
            },
        },
    )


if __name__ == "__main__":
    sys.exit(main())
