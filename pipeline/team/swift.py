"""OpenStack Swift as the team's S3 object store: one replica on one device, an account, container
and object server, and a proxy with the `s3api` middleware. Everything lives in one folder (its
rings, configs and data), so a stack never touches /etc/swift."""

from __future__ import annotations

import getpass
from pathlib import Path

from pipeline.core import atomic

SERVERS = ("account", "container", "object")
S3_REGION = "us-east-1"  # s3api's default location; DVC and boto3 must sign for the same one
# The proxy's WSGI pipeline. tempauth checks the S3 signatures (its user is the access key); no
# `cache`: without memcached, tempauth still authenticates each S3 request by its signature.
PROXY_PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging listing_formats s3api tempauth copy slo "
    "dlo proxy-logging proxy-server"
)
FILTERS = ("catch_errors", "gatekeeper", "healthcheck", "listing_formats", "copy", "slo", "dlo")


def _common(folder: Path, port: int) -> str:
    return (
        f"[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\n"
        f"swift_dir = {folder}\ndevices = {folder / 'srv'}\nmount_check = false\n"
        f"disable_fallocate = true\nuser = {getpass.getuser()}\nlog_level = WARNING\n"
    )


def write_config(folder: Path, ports: dict[str, int], user: str, key: str) -> None:
    """swift.conf, the three rings (built in-process, seconds faster than swift-ring-builder) and
    one config per server. `user` is tempauth's `account:user`, the S3 access key id."""
    from swift.common.ring import RingBuilder

    (folder / "srv" / "d1").mkdir(parents=True, exist_ok=True)
    (folder / "swift.conf").write_text(
        "[swift-hash]\nswift_hash_path_suffix = tinyops\nswift_hash_path_prefix = tinyops\n"
        "[storage-policy:0]\nname = default\ndefault = yes\n"
    )
    for name in SERVERS:
        builder = RingBuilder(8, 1, 1)
        dev = {"region": 1, "zone": 1, "ip": "127.0.0.1", "port": ports[name], "device": "d1"}
        builder.add_dev({**dev, "weight": 1})
        builder.rebalance()
        builder.get_ring().save(str(folder / f"{name}.ring.gz"))
        (folder / f"{name}-server.conf").write_text(
            _common(folder, ports[name])
            + f"[pipeline:main]\npipeline = {name}-server\n"
            + f"[app:{name}-server]\nuse = egg:swift#{name}\n"
        )
    account, name = user.split(":")
    filters = "".join(f"[filter:{f}]\nuse = egg:swift#{f}\n" for f in FILTERS)
    atomic.write_private(  # it holds the S3 key
        folder / "proxy-server.conf",
        _common(folder, ports["proxy"])
        + f"[pipeline:main]\npipeline = {PROXY_PIPELINE}\n"
        + "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
        + f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_{account}_{name} = {key} .admin\n"
        + f"[filter:s3api]\nuse = egg:swift#s3api\nlocation = {S3_REGION}\n"
        + "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n"
        + filters,
    )


def argv(bin_dir: Path, folder: Path, server: str) -> list[str]:
    """`server` is one of SERVERS or "proxy"; -v logs to the console (our log file), not syslog."""
    return [str(bin_dir / f"swift-{server}-server"), str(folder / f"{server}-server.conf"), "-v"]
