"""DICOM TLS on dimse-service (issue 11; PS3.15 Annex B): a port of its own beside the plain one,
TLS 1.2 at least, and, with a CA file, client certificates required and verified.

The certificates come from a throwaway CA made in the test (``tests.pki``). The clients are
pynetdicom (``tls_args``) and, when Debian's build has TLS, dcmtk's echoscu and storescu
(``+tls``); the pipeline runs as processes, as ``make run`` starts it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from testbed.processes import free_port, listening
from testbed.series import ct_slice, write_ct_series
from testbed.system import ROOT, System, log_records, start_system, stop_system
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.e2e


def _dcmtk_has_tls() -> bool:
    if not (shutil.which("echoscu") and shutil.which("storescu")):
        return False
    usage = subprocess.run(["storescu", "--help"], capture_output=True, text=True, check=False)
    return "+tls" in usage.stdout + usage.stderr


DCMTK_TLS = _dcmtk_has_tls()


@dataclass
class Tls:
    system: System
    port: int
    pki: Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Tls]:
    port = free_port()
    running = start_system(
        tmp_path_factory.mktemp("dimse-tls"),
        DIMSE_TLS_PORT=str(port),
        DIMSE_TLS_CERT_FILE=str(pki.server_cert),
        DIMSE_TLS_KEY_FILE=str(pki.server_key),
        DIMSE_TLS_CA_FILE=str(pki.ca),
    )
    yield Tls(running, port, pki)
    stop_system(running)


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS client that trusts the test CA (and checks the server's name), with ``cert``."""
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def associate(port: int, context: ssl.SSLContext | None, calling: str = "TLSCLIENT") -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title="DICOMFLOW", tls_args=tls_args)


def _tls_refusals(system: System) -> list[str]:
    records = log_records(system.log.read_text(errors="replace"))
    return [str(r.get("reason")) for r in records if r.get("event") == "dimse.tls_refused"]


def _wait_refusal(system: System, before: int, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while len(refusals := _tls_refusals(system)) <= before:
        assert time.monotonic() < deadline, "the service logged no refused TLS handshake"
        time.sleep(0.1)
    return refusals[before]


def test_pynetdicom_over_tls_echoes_and_stores_an_archived_job(tls: Tls) -> None:
    assoc = associate(tls.port, client_context(tls.pki, tls.pki.client_cert, tls.pki.client_key))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        ds = dcmread(io.BytesIO(ct_slice(0, rows=32, columns=32, seed=51)))
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    [job] = _dimse_jobs(tls.system, "TLSCLIENT", 1)
    final = tls.system.wait_final([job])[job]
    assert final["status"] == "archived", final
    assert final["details"]["source"] == "dimse"
    plain = associate(tls.system.dimse_port, None)  # the plain port is served as well
    assert plain.is_established
    plain.release()


def test_a_client_without_tls_on_the_tls_port_does_not_associate(tls: Tls) -> None:
    before = len(_tls_refusals(tls.system))
    assoc = associate(tls.port, None, calling="PLAIN")
    assert not assoc.is_established
    assert _wait_refusal(tls.system, before) == "WRONG_VERSION_NUMBER"


def test_a_client_without_a_certificate_is_refused(tls: Tls) -> None:
    before = len(_tls_refusals(tls.system))
    assoc = associate(tls.port, client_context(tls.pki), calling="NOCERT")
    assert not assoc.is_established
    assert _wait_refusal(tls.system, before) == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_a_client_certificate_of_another_ca_is_refused(tls: Tls) -> None:
    before = len(_tls_refusals(tls.system))
    context = client_context(tls.pki, tls.pki.stranger_cert, tls.pki.stranger_key)
    assoc = associate(tls.port, context, calling="STRANGER")
    assert not assoc.is_established
    assert _wait_refusal(tls.system, before) == "CERTIFICATE_VERIFY_FAILED"


def test_tls_below_1_2_is_refused(tls: Tls) -> None:
    context = client_context(tls.pki, tls.pki.client_cert, tls.pki.client_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    before = len(_tls_refusals(tls.system))
    assoc = associate(tls.port, context, calling="OLDTLS")
    assert not assoc.is_established
    assert _wait_refusal(tls.system, before) == "UNSUPPORTED_PROTOCOL"


def test_a_silent_peer_on_the_tls_port_does_not_hold_up_the_others(tls: Tls) -> None:
    """pynetdicom shakes hands on the thread that accepts connections: one peer that connects
    and says nothing would keep every other TLS peer waiting."""
    with socket.create_connection(("127.0.0.1", tls.port)):
        started = time.monotonic()
        context = client_context(tls.pki, tls.pki.client_cert, tls.pki.client_key)
        assoc = associate(tls.port, context, calling="NEXTINLINE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert time.monotonic() - started < 5


@pytest.mark.skipif(not DCMTK_TLS, reason="dcmtk with TLS (echoscu, storescu +tls) not installed")
def test_dcmtk_echoscu_and_storescu_with_tls(tls: Tls, tmp_path: Path) -> None:
    pki, port = tls.pki, str(tls.port)
    tls_options = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    echo = _tool("echoscu", *tls_options, "-aet", "ECHOSCU", "-aec", "DICOMFLOW", "127.0.0.1", port)
    assert echo.returncode == 0, echo.stderr
    folder = tmp_path / "send"
    slices = write_ct_series(folder, 3, seed=52, rows=32, columns=32)
    store = _tool(
        "storescu", *tls_options, "-aet", "STORESCU", "-aec", "DICOMFLOW", "+sd", "+r",
        "127.0.0.1", port, str(folder),
    )  # fmt: skip
    assert store.returncode == 0, store.stderr
    jobs = _dimse_jobs(tls.system, "STORESCU", len(slices))
    finals = tls.system.wait_final(jobs)
    assert all(s["status"] == "archived" for s in finals.values()), finals


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _dimse_jobs(system: System, calling_ae: str, count: int, seconds: float = 30) -> list[str]:
    """The ids of ``count`` jobs that ``calling_ae`` sent (fails if they do not come)."""
    deadline = time.monotonic() + seconds
    with system.client() as c:
        while True:
            uploads = c.get("/uploads", params={"limit": 1000}).json()["uploads"]
            ids = [
                u["upload_id"]
                for u in uploads
                if u.get("details", {}).get("calling_ae") == calling_ae
            ]
            if len(ids) >= count:
                return ids
            assert time.monotonic() < deadline, f"{len(ids)} of {count} jobs from {calling_ae}"
            time.sleep(0.2)


# -- the service alone: TLS only, and the errors that stop it at start -------------------------


def _service(tmp_path: Path, http_port: int = 0, /, **env: str) -> subprocess.Popen[str]:
    """dimse-service as a process of its own (no Redis: C-ECHO and start-up need none)."""
    variables = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DIMSE_")},
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UPLOADS_PATH": str(tmp_path / "uploads"),
        "ARCHIVE_PATH": str(tmp_path / "archive"),
        "DIMSE_HTTP_PORT": str(http_port or free_port()),
        "LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "dimse-service")]),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dimse_service"],
        env=variables,
        cwd=tmp_path,  # no .env of the checkout's
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_healthy(service: subprocess.Popen[str], http_port: int, seconds: float = 30) -> None:
    """Until /health answers: the service runs, its SIGTERM handling in place."""
    deadline = time.monotonic() + seconds
    while True:
        assert service.poll() is None, "the service ended"
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the service never answered /health"
        time.sleep(0.1)


def test_tls_only_when_the_plain_port_is_0(tmp_path: Path, pki: Pki) -> None:
    port, http_port = free_port(), free_port()
    service = _service(
        tmp_path,
        http_port,
        DIMSE_PORT="0",
        DIMSE_TLS_PORT=str(port),
        DIMSE_TLS_CERT_FILE=str(pki.server_cert),
        DIMSE_TLS_KEY_FILE=str(pki.server_key),
    )
    try:
        _wait_healthy(service, http_port)
        assert listening(port, 1), "the TLS port does not listen"
        assoc = associate(port, client_context(pki))  # no CA file: no client certificate asked
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        service.terminate()
        output, _ = service.communicate(timeout=30)
    assert service.returncode == 0, output
    listeners = [r for r in log_records(output) if r.get("event") == "dimse.listening"]
    assert [(r["port"], r["tls"]) for r in listeners] == [(port, True)]


def test_a_stop_is_prompt_whatever_the_peers_do(tmp_path: Path, pki: Pki) -> None:
    """SIGTERM with an idle association, one stalled in the middle of a PDU and a TLS peer
    stalled in its handshake: the service aborts the association and ends at once, not after
    the read timeout (30 s here), nor never (pynetdicom's threads would wait for ever)."""
    plain, port, http_port = free_port(), free_port(), free_port()
    service = _service(
        tmp_path,
        http_port,
        DIMSE_PORT=str(plain),
        DIMSE_TLS_PORT=str(port),
        DIMSE_TLS_CERT_FILE=str(pki.server_cert),
        DIMSE_TLS_KEY_FILE=str(pki.server_key),
    )
    peers: list[socket.socket] = []
    try:
        _wait_healthy(service, http_port)
        idle = associate(plain, None, calling="IDLE")
        assert idle.is_established
        stalled = associate(plain, None, calling="STALLED")
        assert stalled.is_established
        assert stalled.dul.socket is not None
        assert stalled.dul.socket.socket is not None
        stalled.dul.socket.socket.sendall(b"\x04\x00\x00")  # half a P-DATA-TF header
        peers.append(_stalled_in_handshake(port, pki))
        started = time.monotonic()
        service.terminate()
        output, _ = service.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        for peer in peers:
            peer.close()
        if service.poll() is None:
            service.kill()
    assert service.returncode == 0, output
    assert took < 10, f"the service took {took:.1f}s to stop"
    deadline = time.monotonic() + 10
    while not idle.is_aborted:
        assert time.monotonic() < deadline, "the idle association was not aborted"
        time.sleep(0.05)


def _stalled_in_handshake(port: int, pki: Pki) -> socket.socket:
    """A connection whose TLS handshake the service has begun (its ServerHello came back)
    and that says nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(pki).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    sock.sendall(outgoing.read())  # ClientHello
    assert sock.recv(5), "no ServerHello"
    return sock


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param(
            {"DIMSE_TLS_CERT_FILE": "missing.crt", "DIMSE_TLS_KEY_FILE": "server.key"},
            "configuration error: DIMSE_TLS_CERT_FILE: Path does not point to a file",
            id="missing-certificate",
        ),
        pytest.param(
            {"DIMSE_TLS_CERT_FILE": "garbage.crt", "DIMSE_TLS_KEY_FILE": "server.key"},
            "configuration error: DIMSE_TLS_CERT_FILE, DIMSE_TLS_KEY_FILE: cannot use them as "
            "a PEM certificate and its private key",
            id="not-a-certificate",
        ),
        pytest.param(
            {"DIMSE_TLS_CERT_FILE": "server.crt", "DIMSE_TLS_KEY_FILE": "client.key"},
            "configuration error: DIMSE_TLS_CERT_FILE, DIMSE_TLS_KEY_FILE: cannot use them as "
            "a PEM certificate and its private key (KEY_VALUES_MISMATCH)",
            id="key-of-another-certificate",
        ),
        pytest.param(
            {"DIMSE_TLS_CERT_FILE": "server.crt"},
            "configuration error: DIMSE_TLS_CERT_FILE and DIMSE_TLS_KEY_FILE go together",
            id="certificate-without-key",
        ),
        pytest.param(
            {"DIMSE_PORT": "0"},
            "configuration error: DIMSE_PORT=0 (no plain listener) needs TLS",
            id="no-listener-at-all",
        ),
    ],
)
def test_unusable_tls_settings_stop_the_service_with_one_clear_line(
    tmp_path: Path, pki: Pki, files: dict[str, str], message: str
) -> None:
    (pki.ca.parent / "garbage.crt").write_text("not a certificate\n")
    env = {
        name: str(pki.ca.parent / value) if value.endswith((".crt", ".key")) else value
        for name, value in files.items()
    }
    service = _service(tmp_path, **env)
    output, _ = service.communicate(timeout=60)
    assert service.returncode == 2, output
    assert message in output
    assert "Traceback" not in output
