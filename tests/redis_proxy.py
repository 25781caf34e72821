"""A TCP proxy in front of a real Redis that holds back what a test says, to make a reply late.

``HoldingProxy.hold(b"EXEC", "replies")``: the next connection that sends EXEC has it reach
Redis at once (the transaction runs) but gets nothing back until ``release()``: a reply later
than any timeout. ``hold(b"EXEC", "request")``: that EXEC (and what follows it) reaches Redis
only at ``release()``, as a packet stuck on the way would, even if the client has given up and
closed the connection meanwhile; ``late_reply`` is then what Redis answered it.
``every_connection=True`` with "replies": once EXEC went by, no connection gets a reply until
``release()`` (Redis cannot be asked anything).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Hold = Literal["request", "replies"]


class HoldingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.released = asyncio.Event()
        self.late_reply = b""
        self._late_reply_done = asyncio.Event()
        self._marker: bytes | None = None
        self._hold: Hold = "replies"
        self._every = False
        self._all_replies_held = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hold(self, command: bytes, what: Hold, every_connection: bool = False) -> None:
        """Arm: the next connection that sends ``command`` is held back as ``what`` says."""
        self._marker = b"$%d\r\n%s\r\n" % (len(command), command)
        self._hold, self._every = what, every_connection
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def late(self, seconds: float = 10) -> bytes:
        """Release, then what Redis answered the held request."""
        self.release()
        await asyncio.wait_for(self._late_reply_done.wait(), seconds)
        return self.late_reply

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        state = {"replies_held": False, "request_held": False}
        requests = asyncio.create_task(self._requests(reader, up_writer, state))
        replies = asyncio.create_task(self._replies(up_reader, writer, state))
        self._tasks.update((requests, replies))
        await asyncio.gather(requests, replies, return_exceptions=True)
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _requests(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, state: dict[str, bool]
    ) -> None:
        """Client to Redis; a held request waits for the release, even if the client left."""
        held = b""
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                chunk = b""
            if self._marker and self._marker in chunk:
                self._marker = None  # one connection, the first to send it
                if self._hold == "replies":
                    state["replies_held"] = True
                    self._all_replies_held = self._every
                else:
                    state["request_held"] = True
            if state["request_held"] and not self.released.is_set():
                held += chunk
                if chunk:
                    continue
                await self.released.wait()  # the client left: deliver it late all the same
            if held:
                up.write(held)
                held = b""
            if not chunk:
                if not state["request_held"]:
                    up.close()
                return
            up.write(chunk)
            await up.drain()

    async def _replies(
        self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool]
    ) -> None:
        """Redis to client; held replies wait for the release. The answer to a request that
        was held is kept in ``late_reply`` (its client may be gone)."""
        while chunk := await up.read(65536):
            if state["request_held"] and self.released.is_set():
                self.late_reply += chunk
                self._late_reply_done.set()
                return
            if state["replies_held"] or self._all_replies_held:
                await self.released.wait()
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(chunk)
                await writer.drain()
