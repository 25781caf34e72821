"""What one HTTP client may take from a service's port: uvicorn configured for every service
(``server_config``), the limits uvicorn lacks (``GuardedHttpTools``), and enough file descriptors.

uvicorn sheds load past ``limit_concurrency`` (a 503) and times the wait between two requests
on a kept-alive connection (``timeout_keep_alive``), but with httptools it bounds neither the
time a client takes to send a request's line and headers (its keep-alive timer stops at the
first byte, and a new connection has none: one that sends nothing, or a header byte now and
then, a slowloris, is held for ever; uvicorn PR #1192 was never merged) nor their size
(httptools gathers a header of any length in memory; ``h11_max_incomplete_event_size`` is h11's
alone). ``GuardedHttpTools`` adds both, and one more bound: a request whose answer went before
its body ended (a 401, a 413) may send the rest for a while, not for ever.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared import metrics, problems
from shared.errors import AppError, HeaderFieldsTooLarge, RequestTimeout
from shared.settings import ServiceSettings

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope

log = structlog.get_logger()

FD_MARGIN = 128  # descriptors beyond one per connection: Redis, files being written, logs


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request's head.

    The deadline runs from the connection's opening, or from the first byte of a later request
    on it (the wait before that byte is uvicorn's keep-alive), to the end of the head. When it
    passes, a connection that sent nothing is closed; one part-way through a head is answered
    408. A head that grows past ``max_header_bytes`` or ``max_headers`` is answered 431 as soon
    as it does, so a service never holds more than that, and one read, of any head. Either
    answer is a problem document, sent with Connection: close; what the client still sends is
    read and dropped, for at most ``header_timeout_s``, so that it reads the answer rather than
    a reset. The limits are class attributes, set per service by ``protocol_for``.
    """

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    max_headers: ClassVar[int] = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = None  # of the head being received; None: none is
        self._refused = False  # answered and closing: what comes is dropped

    # -- the deadline --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_bytes = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size <= self.max_header_bytes and len(self.headers) <= self.max_headers:
            super().on_headers_complete()
            return
        # a head over the limit that came whole in one read: uvicorn picks each request's app
        # here (its own 503 past limit_concurrency); this request's answers 431
        app, self.app = self.app, self._header_fields_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the answered request's, unless a pipelined one came after it
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # answered before its body ended (a 401, a 413): the rest may come for a while
            self._disarm()
            self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._refused:  # answered: the client had its time to read it and close
            self.transport.close()
        elif self._head_bytes is not None:  # part-way through a request's head
            self._refuse(
                RequestTimeout(
                    f"the request's headers did not all come within {self.header_timeout_s:g} s "
                    "(HTTP_HEADER_TIMEOUT_S)"
                )
            )
        else:  # nothing asked yet, or an answered request's body that keeps coming
            unread = self.cycle is not None and self.cycle.more_body
            metrics.HTTP_CUT_SHORT.labels("unread-body" if unread else "idle").inc()
            self.transport.close()

    # -- the size ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered: read and dropped until the client or the deadline closes
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        # counted after the parser took them: a read that ended an earlier (pipelined) request
        # and began this head counts whole, at most one read more than the head itself
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes or len(self.headers) > self.max_headers:
            self._refuse(self._too_large())

    def _too_large(self) -> HeaderFieldsTooLarge:
        return HeaderFieldsTooLarge(
            f"a request's line and headers may hold {self.max_header_bytes} bytes "
            f"(HTTP_MAX_HEADER_BYTES) in {self.max_headers} fields (HTTP_MAX_HEADERS)"
        )

    async def _header_fields_too_large(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The app of a request whose head came whole and too large: a 431, and close."""
        error = self._too_large()
        metrics.HTTP_CUT_SHORT.labels(error.code).inc()
        log.info("http.refused", status=error.status, reason=error.code, client=self._address())
        body = problems.encoded(error, str(scope.get("path", "")) or None)
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", problems.MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _address(self) -> str | None:
        """The client's address, for the log (an address, as the audit trail keeps, no data)."""
        return self.client[0] if self.client else None

    def _refuse(self, error: AppError) -> None:
        """Answer ``error`` and end the connection; with the answer to an earlier request under
        way (pipelining), end the connection after that answer instead."""
        metrics.HTTP_CUT_SHORT.labels(error.code).inc()
        log.info("http.refused", status=error.status, reason=error.code, client=self._address())
        self._disarm()
        self._head_bytes = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(_raw_answer(error, self.server_state.default_headers))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then our end closed; the client's closes next
        self._refused = True
        self._arm()


def _raw_answer(error: AppError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = problems.encoded(error)
    head = [STATUS_LINE[error.status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: " + problems.MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def protocol_for(settings: ServiceSettings) -> type[GuardedHttpTools]:
    """``GuardedHttpTools`` with a service's limits."""

    class Protocol(GuardedHttpTools):
        header_timeout_s = settings.http_header_timeout_s
        max_header_bytes = settings.http_max_header_bytes
        max_headers = settings.http_max_headers

    return Protocol


def server_config(app: Any, settings: ServiceSettings, port: int, **options: Any) -> uvicorn.Config:
    """How every service's HTTP port is served: the guarded protocol, and uvicorn's own limits
    set from HTTP_MAX_CONNECTIONS (503 past it), HTTP_BACKLOG and HTTP_KEEP_ALIVE_S; ``options``
    (uvicorn's) win over all of these."""
    defaults: dict[str, Any] = {
        "host": settings.host,
        "http": protocol_for(settings),
        "limit_concurrency": settings.http_max_connections,
        "backlog": settings.http_backlog,
        "timeout_keep_alive": settings.http_keep_alive_s,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
    }
    return uvicorn.Config(app, port=port, **(defaults | options))


def raise_open_file_limit(connections: int) -> int:
    """Lift the soft open-file limit to the hard one (a low soft limit, 1024 on many systems, is
    a default, not a decision), and warn when it cannot hold ``connections`` and the rest.
    The soft limit in force after, or 0 where there is none to read (Windows)."""
    if sys.platform == "win32":
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # a hard limit the kernel does not allow (macOS: OPEN_MAX)
            pass
    if soft != resource.RLIM_INFINITY and soft < connections + FD_MARGIN:
        log.warning(
            "service.open_files_low",
            limit=soft,
            max_connections=connections,
            detail="raise the hard open-file limit (ulimit -Hn, LimitNOFILE=, compose ulimits) "
            "or lower HTTP_MAX_CONNECTIONS",
        )
    return soft
