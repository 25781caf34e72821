"""dimse-service against peers that do not speak DICOM, or stop in the middle (issue 11).

Each peer here is a raw TCP client. What it gets back is what PS3.8 (9.2, the state table;
9.3.8, A-ABORT) says: before an association (Sta2) an unrecognised or unexpected PDU gets an
A-ABORT (AA-1) and the connection is closed; after one (Sta6) an invalid PDU gets an A-ABORT
from the service-provider (AA-8); a PDU longer than we allow gets an A-ABORT with reason
invalid-PDU-parameter value before its body is read; a peer that says nothing, or stops in the
middle of a PDU, is disconnected after the ACSE timeout (ARTIM, AA-2). After each: nothing
is left in the uploads folder, no job was made, C-ECHO and /ready still answer, and the
service never died (the e2e fixture fails a test whose System logged a crash: a pynetdicom
thread that dies of an exception is logged as one).
"""

from __future__ import annotations

import io
import random
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydicom import dcmread
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from shared import redis_names as names
from testbed.series import ct_slice
from testbed.system import System, start_system, stop_system

pytestmark = pytest.mark.e2e
ACSE_TIMEOUT = 2.0  # also the read timeout (the shorter of the ACSE and network timeouts)
NETWORK_TIMEOUT = 4.0
MAX_PDU = 16382
MAX_ASSOCIATIONS = 3
MAX_FILE_SIZE = 1 << 20
A_ABORT, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE = 0x07, 0x02, 0x03
VERIFICATION_CX, STORAGE_CX = 1, 3


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(
        tmp_path_factory.mktemp("dimse-hostile"),
        DIMSE_ACSE_TIMEOUT=str(ACSE_TIMEOUT),
        DIMSE_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT),
        DIMSE_MAX_PDU=str(MAX_PDU),
        DIMSE_MAX_ASSOCIATIONS=str(MAX_ASSOCIATIONS),
        MAX_FILE_SIZE=str(MAX_FILE_SIZE),
    )
    yield running
    stop_system(running)


# -- a raw peer ------------------------------------------------------------------------------


def associate_rq(calling: str = "HOSTILE") -> bytes:
    """A valid A-ASSOCIATE-RQ proposing Verification (context 1) and CT Image Storage (3)."""
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title, request.called_ae_title = calling, "DICOMFLOW"
    length = MaximumLengthNotification()
    length.maximum_length_received = MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    request.user_information = [length, implementation]
    contexts = []
    for context_id, sop_class in ((VERIFICATION_CX, Verification), (STORAGE_CX, CTImageStorage)):
        context = build_context(sop_class)
        context.context_id = context_id
        contexts.append(context)
    request.presentation_context_definition_list = contexts
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(request)
    return bytes(pdu.encode())


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (presentation context id, message control header, fragment) PDVs."""
    body = b"".join(
        struct.pack(">LBB", len(data) + 2, cx, control) + data for cx, control, data in pdvs
    )
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


class Peer:
    """A TCP connection to the DICOM port that sends what it is told and reads whole PDUs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def associate(self) -> None:
        self.send(associate_rq())
        answer = self.read_pdu()
        assert answer is not None
        assert answer[0] == A_ASSOCIATE_AC_TYPE, answer[:16].hex()
        A_ASSOCIATE_AC().decode(answer)

    def read_pdu(self, seconds: float = 10) -> bytes | None:
        """The next whole PDU, or None when the service closed the connection."""
        self.sock.settimeout(seconds)
        header = self._read(6)
        if header is None:
            return None
        (length,) = struct.unpack(">L", header[2:])
        body = self._read(length)
        assert body is not None, "the connection closed in the middle of a PDU"
        return header + body

    def _read(self, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            try:
                chunk = self.sock.recv(count - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def answers_until_closed(self, seconds: float = 10) -> list[bytes]:
        """Every PDU the service sends until it closes the connection (fails if it does not
        within ``seconds``)."""
        deadline = time.monotonic() + seconds
        pdus = []
        while (pdu := self.read_pdu(max(deadline - time.monotonic(), 0.01))) is not None:
            pdus.append(pdu)
        return pdus


def abort_of(pdu: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT PDU."""
    assert pdu[0] == A_ABORT, f"not an A-ABORT: {pdu[:16].hex()}"
    abort = A_ABORT_RQ()
    abort.decode(pdu)
    return int(abort.source or 0), int(abort.reason_diagnostic or 0)


# -- what must hold after every hostile peer ---------------------------------------------------


def _jobs(system: System) -> int:
    client = redis.Redis.from_url(system.redis.url)
    try:
        return int(client.zcard(names.JOBS_BY_TIME))
    finally:
        client.close()


@pytest.fixture
def unharmed(system: System) -> Iterator[None]:
    """After the test: no file or temporary file was left, no job made, and the service still
    associates, answers C-ECHO and is ready."""
    files, jobs = set(system.uploads.iterdir()), _jobs(system)
    yield
    assert set(system.uploads.iterdir()) == files, "a file was left in the uploads folder"
    assert _jobs(system) == jobs, "a job was made"
    assert _echo(system) == 0x0000
    with system.client("dimse") as c:
        assert c.get("/ready").status_code == 200


def _echo(system: System, seconds: float = 10) -> int:
    """C-ECHO's status, once a place is free (those of a test's peers free as they end)."""
    deadline = time.monotonic() + seconds
    while not (assoc := _associate(system, "AFTERWARDS")).is_established:
        assert assoc.is_rejected, "the service did not answer the association request"
        assert time.monotonic() < deadline, "no association place came free"
        time.sleep(0.1)
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


# -- before an association (Sta2) -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_get_an_abort_or_a_closed_connection(
    system: System, unharmed: None, seed: int
) -> None:
    garbage = random.Random(seed).randbytes(300)
    with Peer(system.dimse_port) as peer:
        peer.send(garbage)
        started = time.monotonic()
        answers = peer.answers_until_closed(ACSE_TIMEOUT + 5)
        assert time.monotonic() - started < ACSE_TIMEOUT + 3
    for pdu in answers:  # at most one answer: nothing of the peer is read as PDUs afterwards
        abort_of(pdu)
    assert len(answers) <= 1


def test_unknown_pdu_type_gets_an_abort_and_the_rest_is_not_read(
    system: System, unharmed: None
) -> None:
    with Peer(system.dimse_port) as peer:
        peer.send(b"\x09\x00" + struct.pack(">L", 4) + b"abcd" + b"\x01\x00\x00")
        answers = peer.answers_until_closed(2)  # at once: not after a timeout
    # Sta2 + Evt19 (unrecognised PDU) -> AA-1: A-ABORT, source service-user (PS3.8 Table 9-9)
    assert [abort_of(pdu) for pdu in answers] == [(0, 0)]


def test_a_length_of_gigabytes_gets_an_abort_before_anything_is_read(
    system: System, unharmed: None
) -> None:
    with Peer(system.dimse_port) as peer:
        peer.send(b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0) + b"\x00\x01\x00\x00")
        answers = peer.answers_until_closed(2)
    # service-provider (2), invalid-PDU-parameter value (6): the length, over 1 MiB
    assert [abort_of(pdu) for pdu in answers] == [(2, 6)]


def test_an_associate_request_cut_short_is_dropped_after_the_acse_timeout(
    system: System, unharmed: None
) -> None:
    request = associate_rq()
    with Peer(system.dimse_port) as peer:
        peer.send(request[: len(request) // 2])
        started = time.monotonic()
        answers = peer.answers_until_closed(ACSE_TIMEOUT + 5)
        waited = time.monotonic() - started
    assert answers == []  # ARTIM expired in Sta2 -> AA-2: the connection is closed
    assert ACSE_TIMEOUT - 0.5 < waited < ACSE_TIMEOUT + 3, waited


def test_an_associate_request_cut_short_by_a_closed_connection_leaves_nothing(
    system: System, unharmed: None
) -> None:
    request = associate_rq()
    with Peer(system.dimse_port) as peer:
        peer.send(request[:10])
        peer.sock.shutdown(socket.SHUT_WR)
        assert peer.answers_until_closed(2) == []


def test_p_data_before_an_association_gets_an_abort(system: System, unharmed: None) -> None:
    with Peer(system.dimse_port) as peer:
        peer.send(p_data((VERIFICATION_CX, 0x03, b"\x00" * 20)))
        answers = peer.answers_until_closed(2)
    assert [abort_of(pdu) for pdu in answers] == [(0, 0)]  # Sta2 + Evt10 -> AA-1


def test_a_silent_peer_is_dropped_after_the_acse_timeout(system: System, unharmed: None) -> None:
    with Peer(system.dimse_port) as peer:
        started = time.monotonic()
        assert peer.answers_until_closed(ACSE_TIMEOUT + 5) == []
        waited = time.monotonic() - started
    assert ACSE_TIMEOUT - 0.5 < waited < ACSE_TIMEOUT + 3, waited


# -- after an association (Sta6) --------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            p_data((VERIFICATION_CX, 0x03, random.Random(7).randbytes(40))), id="garbage-command"
        ),
        pytest.param(p_data((VERIFICATION_CX, 0x03, b"\x00" * 20)), id="command-without-fields"),
        pytest.param(p_data((VERIFICATION_CX, 0x02, b"\x00" * 20)), id="data-before-command"),
        pytest.param(p_data((99, 0x03, b"\x00" * 20)), id="unknown-context"),
        pytest.param(
            struct.pack(">BBL", 0x04, 0, 10) + struct.pack(">LBB", 100, 1, 3) + b"abcd",
            id="pdv-longer-than-pdu",
        ),
        pytest.param(associate_rq(), id="second-associate-request"),
    ],
)
def test_a_malformed_message_gets_an_abort_from_the_service_provider(
    system: System, unharmed: None, message: bytes
) -> None:
    with Peer(system.dimse_port) as peer:
        peer.associate()
        peer.send(message)
        answers = peer.answers_until_closed(2)
    [(source, _)] = [abort_of(pdu) for pdu in answers]  # Sta6 + Evt19/Evt6 -> AA-8
    assert source == 2


def test_a_p_data_longer_than_our_maximum_gets_an_abort_before_it_is_read(
    system: System, unharmed: None
) -> None:
    with Peer(system.dimse_port) as peer:
        peer.associate()
        peer.send(struct.pack(">BBL", 0x04, 0, MAX_PDU + 1) + b"\x00" * 64)
        answers = peer.answers_until_closed(2)
    assert [abort_of(pdu) for pdu in answers] == [(2, 6)]


def test_a_p_data_cut_short_is_dropped_after_the_timeout(system: System, unharmed: None) -> None:
    with Peer(system.dimse_port) as peer:
        peer.associate()
        peer.send(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 100)
        started = time.monotonic()
        assert peer.answers_until_closed(ACSE_TIMEOUT + 5) == []
        waited = time.monotonic() - started
    assert ACSE_TIMEOUT - 0.5 < waited < ACSE_TIMEOUT + 3, waited


def test_a_data_set_over_max_file_size_gets_an_abort_and_nothing_is_kept(
    system: System, unharmed: None
) -> None:
    ds = dcmread(io.BytesIO(ct_slice(0, rows=512, columns=512, seed=41)))
    ds.PixelData = ds.PixelData * 3  # 1.5 MiB, over MAX_FILE_SIZE
    ds.NumberOfFrames = 3
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID = 1, ds.SOPClassUID
    request.AffectedSOPInstanceUID, request.Priority = ds.SOPInstanceUID, 2
    encoded = encode(ds, True, True)
    assert encoded is not None
    request.DataSet = io.BytesIO(encoded)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    with Peer(system.dimse_port) as peer:
        peer.associate()
        answers: list[bytes] = []
        try:
            for primitive in message.encode_msg(STORAGE_CX, MAX_PDU):
                pdu = P_DATA_TF()
                pdu.from_primitive(primitive)
                peer.send(pdu.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service stopped reading: it aborted
        answers = peer.answers_until_closed(5)
    [(source, _)] = [abort_of(pdu) for pdu in answers]
    assert source == 2


# -- limits and timeouts ----------------------------------------------------------------------


def _associate(system: System, calling: str) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW")


def test_associations_beyond_the_limit_are_rejected_transiently(
    system: System, unharmed: None
) -> None:
    held = [_associate(system, f"HOLDER{i}") for i in range(MAX_ASSOCIATIONS)]
    try:
        assert all(a.is_established for a in held)
        with Peer(system.dimse_port) as peer:
            peer.send(associate_rq("ONETOOMANY"))
            answer = peer.read_pdu()
        assert answer is not None
        assert answer[0] == A_ASSOCIATE_RJ_TYPE
        reject = A_ASSOCIATE_RJ()
        reject.decode(answer)
        # rejected-transient, service-provider (presentation), local-limit-exceeded (PS3.8 9.3.4)
        assert (reject.result, reject.source, reject.reason_diagnostic) == (2, 3, 2)
    finally:
        for assoc in held:
            assoc.release()


def test_peers_stalled_mid_pdu_do_not_hold_the_association_places(
    system: System, unharmed: None
) -> None:
    """Before the read timeout, a peer that sent 3 bytes of a header held its place for ever:
    MAX_ASSOCIATIONS of them shut everyone out."""
    stalled = [Peer(system.dimse_port) for _ in range(MAX_ASSOCIATIONS)]
    try:
        for peer in stalled:
            peer.send(b"\x01\x00\x00")
        deadline = time.monotonic() + ACSE_TIMEOUT + 10
        while True:
            assoc = _associate(system, "PATIENT1")
            if assoc.is_established:
                assoc.release()
                break
            assert time.monotonic() < deadline, "the stalled peers still hold every place"
            time.sleep(0.2)
        for peer in stalled:
            assert peer.answers_until_closed(1) == []
    finally:
        for peer in stalled:
            peer.sock.close()


def test_an_idle_association_is_aborted_after_the_network_timeout(
    system: System, unharmed: None
) -> None:
    assoc = _associate(system, "IDLER")
    assert assoc.is_established
    started = time.monotonic()
    deadline = started + NETWORK_TIMEOUT + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    waited = time.monotonic() - started
    assert assoc.is_aborted
    assert NETWORK_TIMEOUT - 0.5 < waited < NETWORK_TIMEOUT + 3, waited
