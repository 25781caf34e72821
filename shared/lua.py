"""Lua scripts, sent by their text (EVAL) alone or in a pipeline, in one round trip.

redis-py's ``Script`` sends EVALSHA, and in a pipeline it first asks ``SCRIPT EXISTS`` in a
round trip of its own, every time the pipeline runs: on the hot path of every upload that was
a third more round trips for the gateway and the status service. EVAL carries the text
instead (a few KB over loopback); Redis compiles a script once and keeps it by its SHA1, so
later calls cost a hash of the text. It is also right inside MULTI/EXEC after Redis restarted
and forgot its scripts, where an EVALSHA would fail on its own and let the rest of the
transaction run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline


class Lua:
    """One script; call it like redis-py's ``Script``: ``await script(keys=, args=, client=)``."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def __call__(
        self,
        *,
        keys: Sequence[str],
        args: Sequence[str | int | float],
        client: Redis | Pipeline,
    ) -> Any:
        """Run the script, or with a pipeline queue it (the pipeline gives its reply)."""
        return await client.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]
