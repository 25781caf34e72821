"""The ``local`` target: the archive itself. It checks the archived original against the upload."""

from __future__ import annotations

import time
from functools import partial

from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds, TargetResult
from shared.files import is_small, run_blocking, sha256_of
from uploader_service.targets import Item


class LocalTarget:
    name = "local"

    @classmethod
    def from_env(cls) -> LocalTarget:
        return cls()  # the archive itself: ARCHIVE_PATH is the uploader's own setting

    async def put(self, item: Item) -> TargetResult:
        started = time.perf_counter()
        if not item.original.is_file():
            raise RetryableError(
                "local: the archived original is not on disk: is ARCHIVE_PATH shared?"
            )
        digest = await run_blocking(partial(sha256_of, item.original), inline=is_small(item.size))
        if digest != item.sha256:
            raise PermanentError("local: the archived original does not match the upload's SHA-256")
        return TargetResult(
            target=self.name,
            ok=True,
            location=str(item.original.resolve()),
            bytes=item.size,
            checksum=f"sha256:{digest}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Nothing to do: the gateway removes the archive itself, so this only reports success.

        No location, because this target removed nothing.
        """
        return TargetResult(target=self.name, ok=True, location=None)
