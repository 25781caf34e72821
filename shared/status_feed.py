"""The status feed reader: one ``XREAD BLOCK`` loop per process over ``dcm:feeds:status``.

Every status change is appended to the capped stream ``dcm:feeds:status`` by the script that
makes it (``shared.jobs``). A process reads that stream with **one** loop, ``StatusFeed``,
however many clients wait: the long-polls of ``GET /status/{id}?wait=`` and the gateway's
``GET /events``. So a process holds one blocking Redis connection for all its watchers, and
Redis sends each change once. Waiters keep a cursor (a stream entry id) and ask for the
entries after it: the recent ones come from memory, older ones (a reconnecting client's
catch-up, a slow waiter) from Redis with ``XRANGE``, so there is one ordered log and no gap
between catch-up and live. The reader starts with the first waiter and stops when none has
been left for a while.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import redis_names as names
from shared.bus import stop_if_cancelled
from shared.errors import safe_error
from shared.jobs import JobStore

log = structlog.get_logger()

_ENTRY_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
Key = tuple[int, int]


def entry_key(entry_id: str) -> Key | None:
    """A stream entry id as a comparable pair (``123`` means ``123-0``); None if it is not one."""
    match = _ENTRY_ID.match(entry_id.strip())
    if not match:
        return None
    return int(match[1]), int(match[2] or 0)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the status feed: its id, and the change with ``id`` added."""

    id: str
    key: Key
    data: dict[str, Any]


class FeedUnavailable(Exception):
    """Redis does not answer, so the feed cannot be read."""


class FeedClosed(Exception):
    """The server is stopping: waiters answer now with what they have."""


class StatusFeed:
    """One reader of ``dcm:feeds:status`` per process, shared by every waiter in it."""

    def __init__(
        self,
        redis: Redis,
        stopping: asyncio.Event | None = None,
        *,
        block_ms: int = 5_000,  # below the client's socket timeout (10 s)
        keep: int = 4_096,
        linger_s: float = 30.0,
        page: int = 500,
    ) -> None:
        self.redis = redis
        self.block_ms, self.linger_s, self.page = block_ms, linger_s, page
        self._stopping = stopping
        self._recent: deque[Change] = deque(maxlen=keep)
        self._floor: Key = (0, 0)  # memory holds every entry after this, up to _last
        self._last = "0-0"
        self._changed = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._users = 0
        self._closed = False

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[str]:
        """Keep the reader running while inside; gives the feed's position at entry: every
        change after it will be seen by ``after``."""
        self._users += 1
        try:
            await self._ensure_running()
            yield self._last
        finally:
            self._users -= 1

    async def position(self) -> str:
        """The feed's position now (the reader started if need be): a cursor from which every
        later change will be seen, whenever ``after`` is called with it."""
        await self._ensure_running()
        return self._last

    async def after(self, cursor: str, seconds: float) -> list[Change]:
        """The changes after ``cursor`` (oldest first, a page at most), waiting up to
        ``seconds`` for one; [] when none came."""
        key = entry_key(cursor) or (0, 0)
        deadline = time.monotonic() + seconds
        while True:
            stop_if_cancelled()
            if self._closed:
                raise FeedClosed
            if self._task is None or self._task.done():
                if self._error is not None:
                    raise FeedUnavailable(safe_error(self._error))
                await self._ensure_running()
            changed = self._changed
            found = await self._since(key)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):  # unlike wait_for on 3.11: keeps a cancel
                    await changed.wait()
            except TimeoutError:
                return []

    async def missed(self, cursor: str) -> bool:
        """True when changes after ``cursor`` may be gone from the stream (it is older than the
        first entry kept, an entry after it was deleted, or the stream was reset since), so a
        client resuming from it must read the statuses again."""
        key = entry_key(cursor) or (0, 0)
        try:
            info: Any = await self.redis.xinfo_stream(names.STATUS_FEED)
        except ResponseError:  # no such key: nothing was ever kept, or it was all lost
            return key > (0, 0)
        last = entry_key(info["last-generated-id"]) or (0, 0)
        if key > last:  # an id this stream never gave: it was reset since
            return True
        deleted = entry_key(info.get("max-deleted-entry-id") or "0-0") or (0, 0)
        first = info.get("first-entry")
        if not first:  # empty: everything it ever held is gone
            return key < last or key < deleted
        return key < deleted or key < (entry_key(first[0]) or (0, 0))

    async def close(self) -> None:
        """Stop the reader and answer every waiter (``FeedClosed``)."""
        self._closed = True
        self._notify()
        tasks = [t for t in (self._task, self._watch) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _ensure_running(self) -> None:
        if self._closed:
            raise FeedClosed
        if self._stopping is not None and self._watch is None:
            self._watch = asyncio.create_task(self._close_on_stop(self._stopping))
        async with self._start_lock:
            if self._task is not None and not self._task.done():
                return
            try:
                start = await self._position()
            except (RedisError, OSError) as exc:
                raise FeedUnavailable(safe_error(exc)) from exc
            self._recent.clear()  # what came while no reader ran is read from Redis
            self._last, self._floor, self._error = start, entry_key(start) or (0, 0), None
            self._task = asyncio.create_task(self._read(), name="status-feed")

    async def _position(self) -> str:
        try:
            info: Any = await self.redis.xinfo_stream(names.STATUS_FEED)
        except ResponseError:  # the stream does not exist yet
            return "0-0"
        return info["last-generated-id"]

    async def _read(self) -> None:
        idle_since: float | None = None
        try:
            while not self._closed:
                stop_if_cancelled()
                reply: Any = await self.redis.xread(
                    {names.STATUS_FEED: self._last}, count=self.page, block=self.block_ms
                )
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        self._keep(entry_id, fields)
                if reply:
                    self._notify()
                if self._users:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.linger_s:
                    return  # no await between this check and the task's end
        except Exception as exc:  # Redis down, mostly; waiters are told, the next one restarts
            self._error = exc
            log.warning("status_feed.unavailable", error=safe_error(exc))
        finally:
            self._notify()

    def _keep(self, entry_id: str, fields: dict[str, str]) -> None:
        change = _change(entry_id, fields)
        if change is not None:
            if len(self._recent) == self._recent.maxlen:
                self._floor = self._recent[0].key
            self._recent.append(change)
        self._last = entry_id  # an unreadable entry is skipped here as by XRANGE

    async def _since(self, key: Key) -> list[Change]:
        if key >= self._floor:  # memory has all of it
            found: list[Change] = []
            for change in reversed(self._recent):
                if change.key <= key:
                    break
                found.append(change)
            return found[::-1][: self.page]
        try:
            entries: Any = await self.redis.xrange(
                names.STATUS_FEED, min=f"({key[0]}-{key[1]}", max="+", count=self.page
            )
        except (RedisError, OSError) as exc:
            raise FeedUnavailable(safe_error(exc)) from exc
        return [c for i, f in entries if (c := _change(i, f)) is not None]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _close_on_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._closed = True
        self._notify()
        if self._task is not None:
            self._task.cancel()


def _change(entry_id: str, fields: dict[str, str]) -> Change | None:
    raw = fields.get("data")
    key = entry_key(entry_id)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or key is None:
        log.warning("status_feed.unreadable_entry", entry_id=entry_id)
        return None
    return Change(entry_id, key, {"id": entry_id, **data})


def feed_of(app: FastAPI) -> StatusFeed:
    """The app's status feed reader, made on first use with the app's Redis client."""
    feed: StatusFeed | None = getattr(app.state, "status_feed", None)
    if feed is None:
        store: JobStore = app.state.store
        feed = app.state.status_feed = StatusFeed(store.redis, stopping_event(app))
    return feed


def stopping_event(app: FastAPI) -> asyncio.Event:
    """Set when the server begins to stop (``shared.service.run``): long waits end then."""
    event: asyncio.Event | None = getattr(app.state, "stopping", None)
    if event is None:
        event = app.state.stopping = asyncio.Event()
    return event
