"""The DIMSE listener's life: a pynetdicom Application Entity beside the HTTP probes.

The AE (PS3.7, PS3.8) listens on ``DIMSE_BIND:DIMSE_PORT`` and, given a certificate and its
key, over TLS on ``DIMSE_TLS_PORT`` (``tls``); each port is a ``listener.Listener``, which
guards its connections against peers that stall or send what is not DICOM. It has its
own AE title and accepts Verification (C-ECHO), every storage SOP class (C-STORE, ``c_store``)
in every transfer syntax pynetdicom knows, and Study Root Query/Retrieve - FIND (C-FIND,
``c_find``). pynetdicom runs its handlers in a thread per association; they reach Redis only
through ``Bridge.call``, which runs a coroutine on the service's event loop
(``asyncio.run_coroutine_threadsafe``), never the loop's objects directly. Associations are
logged with the calling AE title, the peer's address and the outcome, never with patient
data; a thread of pynetdicom's that dies of an exception is logged as ``service.crashed``
(the service goes on, that association ends).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from redis.asyncio import Redis

from dimse_service import c_find, c_store, incoming
from dimse_service.listener import MESSAGE_SLACK, Listener
from dimse_service.settings import DimseSettings
from dimse_service.tls import TlsUnusable, server_context
from shared.errors import frames, safe_error
from shared.jobs import JobStore
from shared.logging import configure_logging
from shared.service import connect, ensure_folders, run, run_forever, standard_checks, worker_app

log = structlog.get_logger()
T = TypeVar("T")
SERVICE = "dimse-service"


@dataclass
class Bridge:
    """What the handlers need, and the one way they reach the event loop from their thread."""

    loop: asyncio.AbstractEventLoop
    redis: Redis
    uploads: Path
    timeout: float

    @property
    def store(self) -> JobStore:
        return JobStore(self.redis)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it, at most ``timeout`` seconds (by default
        the bridge's); then it is cancelled and ``TimeoutError`` raised."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            future.cancel()
            raise


def handle_echo(event: Event) -> int:
    """C-ECHO (PS3.4 Annex A, Verification): success."""
    return 0x0000


def _peer(event: Event) -> dict[str, str]:
    requestor = event.assoc.requestor
    return {
        "calling_ae": str(requestor.ae_title).strip(),
        "peer": f"{requestor.address}:{requestor.port}",
    }


def _outcome(outcome: str) -> Any:
    def handler(event: Event) -> None:
        log.info("dimse.association", outcome=outcome, **_peer(event))

    return handler


def make_ae(settings: DimseSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.require_calling_aet = sorted(settings.allowed_callers)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


def start(
    settings: DimseSettings, bridge: Bridge, tls: ssl.SSLContext | None = None
) -> list[Listener]:
    """Listen on the plain port (unless ``DIMSE_PORT`` is 0) and, with ``tls``, on the TLS
    port, each in pynetdicom's own threads; returns the listeners to stop."""
    incoming.receive_into(bridge.uploads)
    ae = make_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, c_store.handle_store, [bridge]),
        (evt.EVT_C_FIND, c_find.handle_find, [bridge]),
        (evt.EVT_ACCEPTED, _outcome("accepted")),
        (evt.EVT_REJECTED, _outcome("rejected")),
        (evt.EVT_RELEASED, _outcome("released")),
        (evt.EVT_ABORTED, _outcome("aborted")),
    ]
    ports: list[tuple[int, ssl.SSLContext | None]] = (
        [(settings.port, None)] if settings.port else []
    )
    if tls is not None:
        ports.append((settings.tls_port, tls))
    listeners = []
    for port, context in ports:
        listener = ae.make_server(
            (settings.bind, port),
            ssl_context=context,
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=Listener,
            io_timeout=settings.io_timeout,
            max_pdu=settings.max_pdu,
            max_message=settings.max_file_size + MESSAGE_SLACK,
        )
        assert isinstance(listener, Listener)
        threading.Thread(
            target=listener.serve_forever, name=f"dimse-listener-{port}", daemon=True
        ).start()
        listeners.append(listener)
        log.info(
            "dimse.listening",
            ae_title=settings.ae_title,
            bind=settings.bind,
            port=port,
            tls=context is not None,
            client_certificates="required" if context and settings.tls_ca_file else None,
            allowed_callers=sorted(settings.allowed_callers) or "any",
        )
    return listeners


async def main(settings: DimseSettings, tls: ssl.SSLContext | None = None) -> None:
    ensure_folders(settings.uploads_path)
    redis = connect(settings)
    bridge = Bridge(
        asyncio.get_running_loop(), redis, settings.uploads_path, settings.redis_timeout
    )
    listeners = start(settings, bridge, tls)

    async def listening() -> None:
        for listener in listeners:
            if not listener.socket or listener.socket.fileno() < 0:
                raise RuntimeError("a DIMSE listener is closed")

    checks = standard_checks(redis, settings, None, settings.uploads_path)
    checks["dimse"] = listening
    app = worker_app(SERVICE, checks)
    try:
        await run(app, settings, settings.http_port)
    finally:
        await asyncio.gather(*(asyncio.to_thread(listener.stop) for listener in listeners))
        await redis.aclose()


def serve(settings: DimseSettings) -> None:
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    threading.excepthook = _thread_died
    try:
        tls = server_context(settings) if settings.tls else None
    except TlsUnusable as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run_forever(main(settings, tls))


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread (pynetdicom's: an association's, its DUL's) ended with an exception: said as
    a crash, safely (no message, no local value), where the crash checks look for it."""
    if args.exc_type is SystemExit:
        return
    exc = args.exc_value
    thread = args.thread.name if args.thread else "?"
    if exc is None:
        log.error("service.crashed", thread=thread, error=args.exc_type.__name__)
        return
    log.error("service.crashed", thread=thread, error=safe_error(exc), frames=frames(exc))


__all__ = ["Bridge", "make_ae", "serve", "start"]
