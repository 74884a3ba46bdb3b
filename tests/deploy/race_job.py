"""One of two deploys racing for `production` (tests/deploy/test_registry.py): register a
version, judge it against production as read now, wait until the rival has judged too, then
move the alias under the promotion lock with compare and set. Prints `promoted` or `refused`."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(name: str, barrier: Path) -> None:
    from pipeline.core import tracking
    from pipeline.core.errors import RegistryContention
    from pipeline.deploy import registry

    client = tracking.client()
    run = tracking.start_parent(client, f"deploy {name}", {})
    version = registry.register(client, "dev", run.run_id, {}, name).version
    judged = registry.production(client, "dev").version
    (barrier / name).touch()
    while len(list(barrier.iterdir())) < 2:  # both have judged against the same production
        time.sleep(0.01)
    try:
        with registry.promotion_lock(client, "dev"):
            registry.require_unmoved(client, "dev", version, judged)
            registry.promote(client, "dev", version)
    except RegistryContention as exc:
        print(f"refused {version}: {exc}")
        return
    print(f"promoted {version}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
