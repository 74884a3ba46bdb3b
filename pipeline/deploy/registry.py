"""Per-device model registry in MLflow: `tinyops-<device>`, one version per deploy, the alias
`production` on the version the fleet runs; rollback moves `production` back and restores the
bundle byte for byte. MLflow I/O only: whether to promote is the champion's rule
(pipeline/deploy/champion.py).

Teammates share one registry, so `production` moves only under a per-device promotion lock, and
only if it is still the version the champion judged against (compare and set): two deploys
racing never both win.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import interrupt
from pipeline.core.catalog import Manifest
from pipeline.core.errors import ArtifactError, RegistryContention, RegistryError
from pipeline.deploy.bundle import replace_bundle, verify_bundle

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

ALIAS = "production"
TAG_PROMOTED = "tinyops.promoted"
TAG_ROLLED_BACK = "tinyops.rolled_back"
LOCK_SUFFIX = ".promotion-lock"  # a registered model that exists while one deploy promotes
LOCK_WAIT_S = 60.0  # a promotion holds it for a second or two; longer means a killed holder


MODEL_PREFIX = "tinyops-"


def model_name(device: str) -> str:
    return f"{MODEL_PREFIX}{device}"


def device_of(name: str) -> str:
    """The device a registered model is for: model_name's inverse."""
    return name.removeprefix(MODEL_PREFIX)


def lock_name(device: str) -> str:
    return model_name(device) + LOCK_SUFFIX


@contextlib.contextmanager
def promotion_lock(
    client: MlflowClient, device: str, wait_s: float = LOCK_WAIT_S
) -> Iterator[None]:
    """One alias move per device at a time, across every clone that shares the tracking store.
    Creating a registered model is atomic in the store (names are unique, in SQLite, PostgreSQL
    and through the server alike), so the lock is a registered model that exists while held."""
    from mlflow.exceptions import MlflowException

    from pipeline.core.procs import wait_until

    name, holder = lock_name(device), f"{socket.gethostname()} pid {os.getpid()}"

    def take() -> bool:
        try:
            client.create_registered_model(name, tags={"holder": holder}, description=_LOCK_DOC)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                # MLflow's store, refusing a name that exists, reads the model back to word its
                # error; the holder let go in between (seen on PostgreSQL): not ours, try again.
                return False
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Ours, when the client retried a create whose first answer was lost.
            return _holder(client, name) == holder
        return True

    try:
        wait_until(take, wait_s, f"the promotion lock {name}", interval=0.1)
    except TimeoutError:
        raise RegistryContention(
            f"{name} has been held by {_holder(client, name)} for over {wait_s:g} s: another "
            f"deploy of '{device}' is promoting, or one was killed while it held the lock. If "
            f"none is running, `tinyops unlock {device}` removes it."
        ) from None
    try:
        yield
    finally:
        _release(client, name)


def _release(client: MlflowClient, name: str) -> None:
    """Delete the lock; already gone is released too (the client retried a delete whose first
    answer was lost, or someone ran `tinyops unlock`)."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


_LOCK_DOC = "tinyops: held while a deploy moves `production`; delete it only if no deploy runs."


def _holder(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name).tags.get("holder", "an unknown holder")
    except MlflowException:
        return "a holder that has just let go"


def unlock(client: MlflowClient, device: str) -> str | None:
    """Remove a lock left by a killed deploy; returns who held it (None: it was not held)."""
    from mlflow.exceptions import MlflowException

    name = lock_name(device)
    holder = _holder(client, name)
    try:
        client.delete_registered_model(name)
    except MlflowException:
        return None
    return holder


def require_unmoved(client: MlflowClient, device: str, version: str, judged: str | None) -> None:
    """Under the promotion lock: refuse when `production` is no longer the version `version` was
    judged against (`judged`, None: there was none). The version stays registered, and its
    description says why it was not promoted."""
    current = production(client, device)
    now = str(current.version) if current else None  # an int or a str, by API call
    if now == (None if judged is None else str(judged)):
        return
    why = (
        f"production moved to v{now} while v{version} was judged against "
        f"{f'v{judged}' if judged else 'no production version'}"
    )
    client.update_model_version(model_name(device), version, description=f"Not promoted: {why}.")
    raise RegistryContention(
        f"{model_name(device)}: {why}; v{version} stays registered, not promoted. Deploy again "
        f"to judge it against v{now}."
    )


def production(client: MlflowClient, device: str):  # type: ignore[no-untyped-def]
    """The production ModelVersion of a device, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name(device), ALIAS)
    except MlflowException:
        return None


def register(  # type: ignore[no-untyped-def]
    client: MlflowClient, device: str, run_id: str, tags: dict[str, str], description: str = ""
):
    """A new version from the bundle logged under the run's `bundle/` artifacts."""
    from mlflow.exceptions import MlflowException

    name = model_name(device)
    with contextlib.suppress(MlflowException):  # it exists already
        client.create_registered_model(name, description=f"tinyops bundles for device '{device}'")
    source = f"{client.get_run(run_id).info.artifact_uri}/bundle"
    return client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description or None
    )


def promote(client: MlflowClient, device: str, version: str) -> None:
    client.set_model_version_tag(model_name(device), version, TAG_PROMOTED, "true")
    client.set_registered_model_alias(model_name(device), ALIAS, version)


def download_bundle(client: MlflowClient, version: Any, dest: Path) -> Manifest:
    """Fetch a version's bundle files into dest and verify them against their manifest."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from pipeline.core.stores import redact, scrub

    try:
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest))
    except (MlflowException, OSError) as exc:  # the store lost it, or cannot be read
        said = scrub(str(exc).strip().splitlines()[-1], version.source)
        raise RegistryError(
            f"{version.name} v{version.version}: its bundle cannot be read from the artifact "
            f"store at {redact(version.source)} ({said}). Restore it there, or move production "
            f"to a version whose bundle is whole: tinyops promote {device_of(version.name)} VERSION"
        ) from None
    try:
        manifest = verify_bundle(bundle_folder(dest))
    except ArtifactError as exc:
        raise RegistryError(f"{version.name} v{version.version}: {exc}") from None
    if manifest.model_sha256 != version.tags.get("model_sha256"):
        raise RegistryError(
            f"{version.name} v{version.version}: the stored bundle's model (sha256 "
            f"{manifest.model_sha256[:12]}…) is not the one registered "
            f"({str(version.tags.get('model_sha256'))[:12]}…); refusing to restore it."
        )
    return manifest


def bundle_folder(dest: Path) -> Path:
    """Where a downloaded version's files are: MLflow keeps the `bundle/` artifact folder."""
    return dest / "bundle" if (dest / "bundle").is_dir() else dest


def restore(client: MlflowClient, version: Any, target: Path) -> Manifest:
    """Replace `target` with the version's bundle, verified first; byte for byte as registered."""
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        manifest = download_bundle(client, version, Path(tmp))
        replace_bundle(bundle_folder(Path(tmp)), target)
    return manifest


def rollback(client: MlflowClient, device: str, deploy_root: Path) -> tuple[str, str]:
    """Move production to the previously promoted version and restore its bundle, under the
    promotion lock. Returns (from_version, to_version)."""
    with promotion_lock(client, device):
        return _rollback(client, device, deploy_root)


def _rollback(client: MlflowClient, device: str, deploy_root: Path) -> tuple[str, str]:
    current = production(client, device)
    if current is None:
        raise RegistryError(f"device '{device}' has no production version in {model_name(device)}.")
    versions = client.search_model_versions(f"name = '{model_name(device)}'")
    earlier = [
        v
        for v in versions
        if int(v.version) < int(current.version)
        and v.tags.get(TAG_PROMOTED) == "true"
        and v.tags.get(TAG_ROLLED_BACK) != "true"
    ]
    if not earlier:
        raise RegistryError(
            f"device '{device}': production is v{current.version} and no earlier version was ever "
            "in production; nothing to roll back to."
        )
    target = max(earlier, key=lambda v: int(v.version))
    with interrupt.deferred():  # bundle and alias move together, or neither
        restore(client, target, deploy_root / device)  # verified before anything moves
        client.set_model_version_tag(model_name(device), current.version, TAG_ROLLED_BACK, "true")
        client.set_registered_model_alias(model_name(device), ALIAS, target.version)
    return current.version, target.version


def promote_version(
    client: MlflowClient, device: str, version: str, deploy_root: Path
) -> tuple[str | None, str]:
    """Put a registered version into production by hand (e.g. forward again after a rollback):
    its stored bundle is verified, then restored, then the alias moves. Returns (from, to)."""
    from mlflow.exceptions import MlflowException

    try:
        chosen = client.get_model_version(model_name(device), version)
    except MlflowException:
        raise RegistryError(
            f"{model_name(device)} has no version '{version}'; `tinyops devices` shows production."
        ) from None
    with promotion_lock(client, device):
        current = production(client, device)
        with interrupt.deferred():
            restore(client, chosen, deploy_root / device)
            promote(client, device, chosen.version)
            if chosen.tags.get(TAG_ROLLED_BACK):  # it may be rolled back to again
                client.delete_model_version_tag(model_name(device), chosen.version, TAG_ROLLED_BACK)
    return (current.version if current else None), chosen.version
