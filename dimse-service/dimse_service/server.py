"""The DIMSE listener's life: a pynetdicom Application Entity beside the HTTP probes.

The AE (PS3.7, PS3.8) listens on ``DIMSE_BIND:DIMSE_PORT`` with its own AE title and accepts
Verification (C-ECHO), every storage SOP class (C-STORE, ``c_store``) in every transfer syntax
pynetdicom knows, and Study Root Query/Retrieve - FIND (C-FIND, ``c_find``). pynetdicom runs
its handlers in a thread per association; they reach Redis only through ``Bridge.call``, which
runs a coroutine on the service's event loop (``asyncio.run_coroutine_threadsafe``), never the
loop's objects directly. Associations are logged with the calling AE title, the peer's address
and the outcome, never with patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
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
from pynetdicom.transport import ThreadedAssociationServer
from redis.asyncio import Redis

from dimse_service import c_find, c_store
from dimse_service.settings import DimseSettings
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

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it, at most ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout)
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


def _on_open(event: Event) -> None:
    """TCP_NODELAY on each accepted connection: small PDUs (responses) go out at once."""
    with contextlib.suppress(Exception):
        sock = event.assoc.dul.socket.socket  # type: ignore[union-attr]
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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


def start(settings: DimseSettings, bridge: Bridge) -> ThreadedAssociationServer:
    """Start listening (in pynetdicom's own threads); returns the server to shut down."""
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, c_store.handle_store, [bridge]),
        (evt.EVT_C_FIND, c_find.handle_find, [bridge]),
        (evt.EVT_CONN_OPEN, _on_open),
        (evt.EVT_ACCEPTED, _outcome("accepted")),
        (evt.EVT_REJECTED, _outcome("rejected")),
        (evt.EVT_RELEASED, _outcome("released")),
        (evt.EVT_ABORTED, _outcome("aborted")),
    ]
    server = make_ae(settings).start_server(
        (settings.bind, settings.port),
        block=False,
        evt_handlers=handlers,  # type: ignore[arg-type]
    )
    assert server is not None
    log.info(
        "dimse.listening",
        ae_title=settings.ae_title,
        bind=settings.bind,
        port=settings.port,
        allowed_callers=sorted(settings.allowed_callers) or "any",
    )
    return server


async def main(settings: DimseSettings) -> None:
    ensure_folders(settings.uploads_path)
    redis = connect(settings)
    bridge = Bridge(
        asyncio.get_running_loop(), redis, settings.uploads_path, settings.redis_timeout
    )
    server = start(settings, bridge)

    async def listening() -> None:
        if not server.socket or server.socket.fileno() < 0:
            raise RuntimeError("the DIMSE listener is closed")

    checks = standard_checks(redis, settings, None, settings.uploads_path)
    checks["dimse"] = listening
    app = worker_app(SERVICE, checks)
    try:
        await run(app, settings, settings.http_port)
    finally:
        await asyncio.to_thread(server.shutdown)
        await redis.aclose()


def serve(settings: DimseSettings) -> None:
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run_forever(main(settings))


__all__ = ["Bridge", "make_ae", "serve", "start"]
