"""A request body must keep coming: one that stops, or trickles, is answered 408, and what its
request wrote is removed.

uvicorn hands a route the body as it arrives and waits for the next bytes as long as the client
likes (its header deadline, ``shared.http_limits``, ends with the headers). This ASGI middleware
times every route's reads of its body: each wait for the next bytes lasts at most
HTTP_BODY_READ_TIMEOUT_S, and all of a request's waiting at most that plus one second per
HTTP_BODY_MIN_RATE bytes received (Apache mod_reqtimeout's MinRate), so a byte a second ends
too, while a client on a slow but steady link (far above the rate) is never cut. The time the
route spends on what it read (writing, hashing) is not counted, nor the wait for anything after
the body (an answer's stream listening for the client going away).

On a timeout the route is told the client went away (``http.disconnect``), so it removes what
it wrote as it does for any client that leaves mid-upload; its answer to that is replaced by a
408 problem with Connection: close, sent once the route has cleaned up. One mechanism for every
route: STOW-RS's own stall timeout (a 400) was folded into it.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics, problems
from shared.errors import RequestTimeout, frames, safe_error

log = structlog.get_logger()

GONE: Message = {"type": "http.disconnect"}


class BodyDeadline:
    def __init__(self, app: ASGIApp, read_timeout_s: float, min_rate: int) -> None:
        self.app = app
        self.read_timeout_s = read_timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0  # bytes of body so far
        waited = 0.0  # seconds spent waiting for them
        body_done = timed_out = answering = False

        async def receiving() -> Message:
            nonlocal received, waited, body_done, timed_out
            if timed_out:
                return GONE
            if body_done:
                return await receive()
            allowed = self.read_timeout_s
            if self.min_rate:
                allowed = min(allowed, self.read_timeout_s + received / self.min_rate - waited)
            began = time.monotonic()
            try:
                async with asyncio.timeout(max(allowed, 0.0)):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                metrics.HTTP_CUT_SHORT.labels("body-timeout").inc()
                client = scope.get("client")
                log.info(
                    "http.refused",
                    status=408,
                    reason="body-timeout",
                    received=received,
                    client=client[0] if client else None,
                )
                return GONE
            finally:
                waited += time.monotonic() - began
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def sending(message: Message) -> None:
            nonlocal answering
            if timed_out and not answering:
                return  # the route's answer to a body that stopped coming: ours goes instead
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        except Exception as exc:
            if not timed_out or answering:
                raise
            if not isinstance(exc, ClientDisconnect):  # a route that does not catch it: expected
                # the route broke on the body it never got: the client is told why, the log where
                log.warning("http.body_timeout_failed", error=safe_error(exc), frames=frames(exc))
        if timed_out and not answering:
            await _answer(send, self._error(), scope.get("path"))

    def _error(self) -> RequestTimeout:
        rate = f", or came slower than {self.min_rate} bytes/s" if self.min_rate else ""
        return RequestTimeout(
            f"the request body stopped coming for {self.read_timeout_s:g} s{rate} "
            "(HTTP_BODY_READ_TIMEOUT_S, HTTP_BODY_MIN_RATE); nothing of it was kept"
        )


async def _answer(send: Send, error: RequestTimeout, path: str | None) -> None:
    body = problems.encoded(error, path)
    headers = [
        (b"content-type", problems.MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
