"""The field endpoint over real HTTP: each bad request refused with its status and reason, and
nothing written (the bad-input suite's ingest rows); good batches from concurrent clients all
land; `tinyops field serve` starts, answers and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.field.server import Limits, make_server
from tests.conftest import BIN, tree_digest
from tests.field.conftest import MCU, PI, Field, batch


@pytest.fixture
def server(field: Field) -> Iterator[tuple[Field, str]]:
    limits = Limits(max_bytes=64 * 1024, rate=5.0, burst=10)
    srv = make_server("127.0.0.1", 0, field.store, field.tokens, limits)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield field, f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def post(url: str, body: object, token: str | None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/batches", data=data, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _revoked(field: Field) -> str:
    field.tokens.revoke(field.token[MCU].split("_")[1])
    return field.token[MCU]


def _grid(value: float, rows: int = 8) -> list:
    """Four samples of `rows` × 8 × 1, every value `value`."""
    return [[[[value]] * 8] * rows] * 4


Case = Callable[[Field], tuple[dict | bytes, str | None]]
MCU_TOKEN: Callable[[Field], str] = lambda f: f.token[MCU]  # noqa: E731
CASES: dict[str, tuple[Case, int, str]] = {
    "no_token": (lambda f: (batch("n1"), None), 401, "no bearer token"),
    "wrong_token": (lambda f: (batch("n1"), f.token[MCU][:-2] + "zz"), 401, "unknown token"),
    "revoked_token": (lambda f: (batch("n1"), _revoked(f)), 401, "was revoked"),
    "another_devices_token": (
        lambda f: (batch("n1"), f.token[PI]), 403, "writes for 'raspberry_pi_4'"
    ),
    "oversized_payload": (lambda f: (batch("n1", n=200), MCU_TOKEN(f)), 413, "at most 65536"),
    "nan_sample": (
        lambda f: (batch("n1", device=PI, samples=_grid(float("nan"))), f.token[PI]), 400, "NaN"
    ),
    "wrong_shape": (
        lambda f: (batch("n1", samples=_grid(1, rows=7)), MCU_TOKEN(f)), 400,
        "shape [4, 7, 8, 1]; the bundle takes [4, 8, 8, 1]",
    ),
    "out_of_int8_range": (
        lambda f: (batch("n1", samples=_grid(300)), MCU_TOKEN(f)), 400, "-128..127"
    ),
    "ragged_sample": (
        lambda f: (batch("n1", samples=[[1, 2], [3]]), MCU_TOKEN(f)), 400, "not a rectangular"
    ),
    "unknown_label": (
        lambda f: (batch("n1", labels=["0", "1", "2", "cat"]), MCU_TOKEN(f)), 400,
        "'cat' is not a class",
    ),
    "misspelled_key": (
        lambda f: ({**batch("n1"), "lables": []}, MCU_TOKEN(f)), 400, "lables: Extra inputs"
    ),
    "path_in_batch_id": (lambda f: (batch("../evil"), MCU_TOKEN(f)), 400, "batch_id"),
    "not_json": (lambda f: (b"{not json", MCU_TOKEN(f)), 400, "not JSON"),
    "no_bundle_deployed": (
        lambda f: (batch("n1", device="esp32_s3"), f.tokens.issue("esp32_s3")), 404,
        "no bundle is deployed",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_requests_are_refused_with_a_reason_and_write_nothing(
    server: tuple[Field, str], name: str
) -> None:
    field, url = server
    make, status, reason = CASES[name]
    body, token = make(field)
    before = tree_digest(field.root)
    code, answer = (
        post(url, None, token, body) if isinstance(body, bytes) else post(url, body, token)
    )
    assert (code, reason in answer.get("error", "")) == (status, True), (code, answer)
    assert tree_digest(field.root) == before


def test_a_replayed_batch_is_refused_and_the_first_kept(server: tuple[Field, str]) -> None:
    field, url = server
    assert post(url, batch("r1"), field.token[MCU])[0] == 201
    before = tree_digest(field.root)
    code, answer = post(url, batch("r1", labels=None), field.token[MCU])
    assert code == 409 and "stored already" in answer["error"]
    assert tree_digest(field.root) == before


def test_a_device_over_its_rate_is_told_to_wait(server: tuple[Field, str]) -> None:
    field, url = server
    codes = [post(url, batch(f"q{i}", n=1), field.token[MCU])[0] for i in range(14)]
    assert codes[:10] == [201] * 10 and 429 in codes[10:], codes  # burst 10, then 5/s
    assert post(url, batch("p1", device=PI, n=1), field.token[PI])[0] == 201  # per device


def test_concurrent_clients_all_land_in_order(server: tuple[Field, str]) -> None:
    field, url = server
    field.tokens.issue("esp32_s3")
    codes: list[int] = []

    def client(device: str, prefix: str) -> None:
        for i in range(5):
            codes.append(post(url, batch(f"{prefix}{i}", device=device), field.token[device])[0])

    threads = [
        threading.Thread(target=client, args=(d, p)) for d, p in ((MCU, "a"), (MCU, "b"), (PI, "c"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [201] * 15
    assert sorted(int(p.name[:8]) for p in (field.root / MCU).glob("*.npz")) == list(range(1, 11))


def test_a_public_address_without_tls_is_refused(field: Field) -> None:
    with pytest.raises(ConfigError, match="--tls-cert"):
        make_server("0.0.0.0", 0, field.store, field.tokens, Limits())


def test_the_serve_command_answers_and_stops_on_sigterm(field: Field, tmp_path: Path) -> None:
    from pipeline.core.procs import start

    log = tmp_path / "serve.log"
    argv = [str(BIN / "tinyops"), "field", "serve", "--port", "0"]
    proc = start("field endpoint", argv, log, healthy=lambda: "/v1/batches" in log.read_text(),
                 cwd=Path.cwd())  # fmt: skip
    try:
        url = log.read_text().split("field endpoint: ")[1].split("/v1/batches")[0]
        assert post(url, batch("s1"), field.token[MCU])[0] == 201
        assert post(url, batch("s1"), field.token[MCU])[0] == 409
    finally:
        status = proc.stop(grace=10)  # SIGTERM first
    assert status == 128 + signal.SIGTERM and "terminated" in log.read_text(), log.read_text()
    assert "refused 409 from 127.0.0.1: batch 's1' was stored already" in log.read_text()


def test_with_a_certificate_the_endpoint_speaks_tls(field: Field, tmp_path: Path) -> None:
    """A self-signed certificate for 127.0.0.1: a client that trusts it stores a batch; one
    that does not is refused by TLS itself, before any token is sent."""
    import ssl

    cert, key = _self_signed(tmp_path)
    srv = make_server("127.0.0.1", 0, field.store, field.tokens, Limits(), tls=(cert, key))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"https://127.0.0.1:{srv.server_port}/v1/batches"
        body = json.dumps(batch("t1")).encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Authorization", f"Bearer {field.token[MCU]}")
        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(request, timeout=10, context=trusted) as response:
            assert response.status == 201
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context())
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
    assert len(list((field.root / MCU).glob("*.npz"))) == 1


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    here = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(here, False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    return cert_path, key_path
