"""The DICOM listener's connections: what pynetdicom's association server leaves to its user.

pynetdicom 3 reads a PDU (PS3.8 9.3) as its 6-byte header and then as many bytes as the
header's length field says, from a blocking socket without a timeout, and completes a TLS
handshake on the one thread that accepts connections. Left so,

- a peer that sends part of a PDU and stops holds its association thread, and one of the
  DIMSE_MAX_ASSOCIATIONS places, for ever (the ARTIM and idle timers are looked at only
  between PDUs), and the service cannot stop while it does;
- a length field of 4 GiB is read into memory as fast as the peer sends;
- after a PDU of an unknown type, the rest of the peer's bytes are read as more PDUs, each
  answered with another A-ABORT;
- a peer that opens the TLS port and says nothing keeps every other peer from connecting.

``Listener`` (a pynetdicom ``ThreadedAssociationServer``) guards each connection:

- each read and write has a timeout (``DimseSettings.io_timeout``): one that makes no progress
  ends the connection, which pynetdicom sees as the peer closing it (PS3.8 9.2, Evt17);
- the TLS handshake runs on the connection's own thread, under that timeout; a failed one is
  logged (peer address, reason) and the connection closed;
- each PDU header is read as it arrives (``PduFrames``): a P-DATA-TF longer than the maximum
  we announced (DIMSE_MAX_PDU; PS3.8 D.1: a protocol error), or any other PDU over 1 MiB, is
  answered with an A-ABORT (source service-provider, reason invalid-PDU-parameter value,
  PS3.8 9.3.8) before its body is read, and the connection ends; after a PDU of an unknown
  type, pynetdicom answers it as the state table says (A-ABORT) and reads nothing more;
- each DIMSE message is decoded under ``MessageGuard``: pynetdicom lets a command set it cannot
  decode raise out of its state machine, which ends the association's DUL thread and closes
  the connection without a word; a message of any size would be taken (a C-STORE's data set
  onto the disk, any other into memory), so one longer than MAX_FILE_SIZE (and 64 KiB for its
  command) is refused as it arrives.
  Either is now an invalid PDU (Evt19): A-ABORT from the service-provider, as the state table
  says for one (AA-8), and nothing more of that peer is decoded;
- a data set still arriving when its association ends (an abort, a refusal, a closed or
  timed-out connection) is removed (``dimse_service.incoming``): only whole ones stay.

``Listener.stop`` stops accepting, aborts the associations still open and closes what is left,
so the process ends even while a peer says nothing.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import struct
import sys
import time
import weakref
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import ThreadedAssociationServer

from dimse_service.incoming import discard_in_progress
from shared.errors import frames, safe_error

log = structlog.get_logger()

HEADER = struct.Struct(">BBL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
P_DATA_TF = 0x04
PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ ... A-ABORT
# an A-ASSOCIATE-RQ proposing 128 presentation contexts of many transfer syntaxes each stays
# well below this; A-RELEASE and A-ABORT PDUs are 4 bytes long
OTHER_PDU_MAX = 1 << 20
UNLIMITED_P_DATA_MAX = 1 << 26  # DIMSE_MAX_PDU=0 ("no maximum") still reads 64 MiB at most
MESSAGE_SLACK = 1 << 16  # a DIMSE message: its data set, and its command set within this


class Refused(Exception):
    """A PDU header after which nothing more of that connection is read."""

    def __init__(self, reason: str, pdu_type: int, length: int, *, abort: bool) -> None:
        super().__init__(reason)
        self.reason, self.pdu_type, self.length, self.abort = reason, pdu_type, length, abort


class PduFrames:
    """Where the PDUs begin in the bytes received on a connection; checks each header."""

    def __init__(self, max_p_data: int) -> None:
        self.max_p_data = max_p_data or UNLIMITED_P_DATA_MAX
        self._header = bytearray()
        self._body_left = 0

    def feed(self, data: bytes) -> None:
        """Follow ``data``, the next bytes received; ``Refused`` at a header not to read on."""
        at = 0
        while at < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - at)
                self._body_left -= step
                at += step
                continue
            step = min(HEADER.size - len(self._header), len(data) - at)
            self._header += data[at : at + step]
            at += step
            if len(self._header) == HEADER.size:
                pdu_type, _, length = HEADER.unpack(self._header)
                self._header.clear()
                self._check(pdu_type, length)
                self._body_left = length

    def _check(self, pdu_type: int, length: int) -> None:
        if pdu_type not in PDU_TYPES:
            raise Refused("unknown-pdu-type", pdu_type, length, abort=False)
        limit = self.max_p_data if pdu_type == P_DATA_TF else OTHER_PDU_MAX
        if length > limit:
            raise Refused("pdu-too-long", pdu_type, length, abort=True)


def _abort_pdu() -> bytes:
    """A-ABORT, source DICOM UL service-provider (2), reason invalid-PDU-parameter value (6)."""
    pdu = A_ABORT_RQ()
    pdu.source, pdu.reason_diagnostic = 0x02, 0x06
    return pdu.encode()


ABORT_INVALID_PARAMETER = _abort_pdu()


class _Guarded:
    """``recv`` that follows the PDUs and, after a refused header, reads as a closed connection
    (a mixin for the socket classes; pynetdicom reads a connection only through ``recv``)."""

    frames: PduFrames
    peer: str = "?"
    refused: bool = False

    def recv(self, *args: Any) -> bytes:
        if self.refused:
            return b""
        data: bytes = super().recv(*args)  # type: ignore[misc]
        try:
            self.frames.feed(data)
        except Refused as exc:
            self.refused = True
            log.warning(
                "dimse.pdu_refused",
                peer=self.peer,
                reason=exc.reason,
                pdu_type=f"0x{exc.pdu_type:02X}",
                length=exc.length,
            )
            if exc.abort:
                with contextlib.suppress(OSError):
                    self.sendall(ABORT_INVALID_PARAMETER)  # type: ignore[attr-defined]
        return data


class GuardedSocket(_Guarded, socket.socket):
    """A plain TCP connection, guarded."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):
    """A TLS connection, guarded (the TLS context's ``sslsocket_class``)."""


class MessageGuard:
    """An association's ``receive_primitive`` (its DIMSE provider's, which the DUL thread calls
    with each P-DATA received), made to refuse a message it cannot decode or one over
    ``limit`` bytes: an invalid PDU (Evt19), as pynetdicom itself does with a message whose
    command it decodes but does not know."""

    def __init__(self, assoc: Association, limit: int) -> None:
        self.assoc, self.limit = assoc, limit
        self.receive = assoc.dimse.receive_primitive
        self.size = 0
        self.refused = False

    def __call__(self, primitive: P_DATA) -> None:
        if self.refused:
            return
        if self.assoc.dimse.message is None:
            self.size = 0  # a new message begins
        self.size += sum(len(data) for _, data in primitive.presentation_data_value_list)
        try:
            if self.size > self.limit:
                raise MessageTooLarge(f"over {self.limit} bytes")
            self.receive(primitive)
        except Exception as exc:
            self.refused = True
            discard_in_progress(self.assoc)
            self.assoc.dimse.message = None
            requestor = self.assoc.requestor
            log.warning(
                "dimse.message_refused",
                peer=f"{requestor.address}:{requestor.port}",
                error=safe_error(exc),
            )
            self.assoc.dul.event_queue.put("Evt19")


class MessageTooLarge(Exception):
    """A DIMSE message (command and data set) longer than the listener takes."""


class Listener(ThreadedAssociationServer):
    """pynetdicom's threaded association server, each connection guarded (see the module)."""

    daemon_threads = True

    def __init__(
        self, *args: Any, io_timeout: float, max_pdu: int, max_message: int, **kwargs: Any
    ) -> None:
        self.io_timeout = io_timeout
        self.max_pdu = max_pdu
        self.max_message = max_message
        self.connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        super().__init__(*args, **kwargs)
        if self.ssl_context is not None:
            self.ssl_context.sslsocket_class = GuardedSSLSocket
        self.bind(evt.EVT_CONN_OPEN, self._guard_messages)
        self.bind(evt.EVT_CONN_CLOSE, lambda event: discard_in_progress(event.assoc))

    def _guard_messages(self, event: Event) -> None:
        """EVT_CONN_OPEN, before the association's threads start: its ``MessageGuard``."""
        event.assoc.dimse.receive_primitive = MessageGuard(  # type: ignore[method-assign]
            event.assoc, self.max_message
        )

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, with its timeout and guard; a TLS one is not yet shaken hands."""
        assert self.socket is not None
        conn, address = self.socket.accept()
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out at once
            conn.settimeout(self.io_timeout)
            if self.ssl_context is not None:
                sock: Any = self.ssl_context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
            else:
                sock = GuardedSocket(conn.family, conn.type, conn.proto, fileno=conn.detach())
                sock.settimeout(self.io_timeout)
        except OSError:
            conn.close()
            raise
        sock.frames, sock.peer = PduFrames(self.max_pdu), _peer(address)
        self.connections.add(sock)
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake, then pynetdicom's association."""
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                log.info("dimse.tls_refused", peer=_peer(client_address), reason=_tls_why(exc))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failure while setting up an association: logged safely (no traceback text)."""
        exc = sys.exc_info()[1]
        if exc is not None:
            log.error(
                "dimse.connection_failed",
                peer=_peer(client_address),
                error=safe_error(exc),
                frames=frames(exc),
            )

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket (pynetdicom's own ``shutdown`` also
        takes the server off its AE's list, which only ``AE.start_server`` puts it on)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, abort every association still established (A-ABORT), and after
        ``grace`` seconds close every connection still open, a TLS handshake's too."""
        self.shutdown()
        for assoc in self.active_associations:
            if assoc.is_established:
                assoc.abort(block=False)
        deadline = time.monotonic() + grace
        while self.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for sock in list(self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def _tls_why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return safe_error(exc)
