"""Put on PYTHONPATH by the tests: every Python process that starts while TINYOPS_IMPORT_LOG names
a folder writes, at exit, the project modules it loaded, with its pid, parent pid and argv.

tests/orchestration/test_dvc_deps.py rebuilds the process tree from these files, so the modules of a stage
include those of its torchrun workers and export subprocesses.
"""

import atexit
import json
import os
import sys
import time

_LOG = os.environ.get("TINYOPS_IMPORT_LOG")


def _dump() -> None:
    modules = {
        name: getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in ("pipeline", "flows", "__main__")  # `python -m` runs as __main__
    }
    record = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv, "modules": modules}
    path = os.path.join(_LOG, f"{os.getpid()}-{time.monotonic_ns()}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(record, fh)
    os.replace(path + ".tmp", path)


if _LOG:
    atexit.register(_dump)
