"""The ``dicomweb`` target: STOW-RS the original to a DICOMweb service, then check what it holds.

Only the original goes there (no metadata or preview), so ``delete`` removes just the instance,
with a DICOMweb DELETE; a server without one (Orthanc's plugin answers 405) is a
``PermanentError`` asking for the instance to be removed there by hand.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import aclosing

from shared.dicomweb import DicomwebClient, DicomwebNotFound, DicomwebSettings
from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds, TargetResult
from shared.settings import load
from uploader_service.targets import Item


class DicomwebTarget:
    """Orthanc, dcm4chee, Google Cloud Healthcare, Azure DICOM service: any STOW-RS server.

    With ``DICOMWEB_VERIFY=readback`` the stored instance is fetched back by WADO-RS and its
    SHA-256 compared with the upload's; with ``response`` the STOW-RS answer must list it
    (for servers that transcode what they store).
    """

    name = "dicomweb"

    def __init__(self, settings: DicomwebSettings, client: DicomwebClient | None = None) -> None:
        self.settings = settings
        self.client = client or DicomwebClient(settings)

    @classmethod
    def from_env(cls) -> DicomwebTarget:
        return cls(load(DicomwebSettings))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def put(self, item: Item) -> TargetResult:
        started = time.perf_counter()
        if not item.original.is_file():
            raise RetryableError(
                "dicomweb: the archived original is not on disk: is ARCHIVE_PATH shared?"
            )
        outcome = await self.client.store(item.original)
        if outcome.sent_sha256 != item.sha256:
            raise PermanentError("dicomweb: the archived original does not match the upload")
        ids = item.ids
        if self.settings.verify == "readback":
            held = await self._readback(ids)
            if held != item.sha256:
                raise PermanentError(
                    "dicomweb: the stored instance differs from the upload's SHA-256 (the "
                    "server holds another instance with this SOP Instance UID, or transcoded "
                    "it: then use DICOMWEB_VERIFY=response)"
                )
        elif ids.sop_uid not in outcome.referenced and not outcome.duplicate:
            raise PermanentError("dicomweb: the STOW-RS answer does not list the instance")
        return TargetResult(
            target=self.name,
            ok=True,
            location=self.client.instance_url(ids.study_uid, ids.series_uid, ids.sop_uid),
            bytes=item.size,
            checksum=f"sha256:{item.sha256}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Remove the instance from the server; one it no longer holds counts as removed."""
        started = time.perf_counter()
        await self.client.delete_instance(ids.study_uid, ids.series_uid, ids.sop_uid)
        return TargetResult(
            target=self.name,
            ok=True,
            location=self.client.instance_url(ids.study_uid, ids.series_uid, ids.sop_uid),
            seconds=round(time.perf_counter() - started, 4),
        )

    async def _readback(self, ids: DicomIds) -> str:
        """SHA-256 of the instance as the server returns it (WADO-RS, transfer syntax as stored)."""
        digest = hashlib.sha256()
        chunks = self.client.retrieve_instance(ids.study_uid, ids.series_uid, ids.sop_uid)
        try:
            async with aclosing(chunks) as stream:
                async for chunk in stream:
                    digest.update(chunk)
        except DicomwebNotFound:
            raise RetryableError("dicomweb: the instance just stored is not found") from None
        return digest.hexdigest()
