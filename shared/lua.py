"""Lua scripts, sent by their text (EVAL) alone or in a pipeline, in one round trip.

redis-py's ``Script`` sends EVALSHA, and in a pipeline it first asks ``SCRIPT EXISTS`` in a
round trip of its own, every time the pipeline runs: on the hot path of every upload that was
a third more round trips for the gateway and the status service. EVAL carries the text
instead (a few KB over loopback); Redis compiles a script once and keeps it by its SHA1, so
later calls cost a hash of the text. It is also right inside MULTI/EXEC after Redis restarted
and forgot its scripts, where an EVALSHA would fail on its own and let the rest of the
transaction run.

Scripts live in ``.lua`` files beside the module that runs them (package data), each with its
KEYS and ARGV at its top; ``Lua.of`` reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline


class Lua:
    """One script; call it like redis-py's ``Script``: ``await script(keys=, args=, client=)``."""

    def __init__(self, source: str) -> None:
        self.source = source

    @classmethod
    def of(cls, package: str, *paths: str) -> Lua:
        """The script made of these files of a package, in order (e.g. helpers, then the
        script that uses them)."""
        root = files(package)
        return cls("\n".join(root.joinpath(p).read_text(encoding="utf-8") for p in paths))

    async def __call__(
        self,
        *,
        keys: Sequence[str],
        args: Sequence[str | int | float],
        client: Redis | Pipeline,
    ) -> Any:
        """Run the script, or with a pipeline queue it (the pipeline gives its reply)."""
        return await client.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]
