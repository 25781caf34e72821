"""The ``gcs`` target: copies an instance to Google Cloud Storage and checks the stored CRC32C.

Objects go to ``gs://GCS_BUCKET/`` at ``keys.object_keys(GCS_PREFIX, ids)``: the
original (``application/dicom``), metadata.json (``application/json``) and preview.png
(``image/png``, when there is one). Uploading is idempotent without ``if_generation_match``:
the same instance always lands at the same keys with the same bytes, so a retried or
repeated upload only overwrites an object with itself. That is why every call gets the
unconditional ``DEFAULT_RETRY`` (its deadline is ``GCS_RETRY_DEADLINE``).

Uploads: google-cloud-storage itself sends a file in one multipart request up to its fixed
8 MiB limit and as a resumable upload above it; ``GCS_CHUNK_SIZE`` is the size of the chunks
of a resumable upload. ``checksum="crc32c"`` makes the library check every upload (the
server checks a multipart one; the library checks a resumable one at the end).

Verification: after each upload ``blob.reload()`` reads the object's metadata back and its
``crc32c`` (base64 of the big-endian CRC32C) and size are compared with the local file's.
GCS reports a CRC32C for every object (MD5 is missing for composite objects), and the
emulator used in the tests (gcp-storage-emulator 2026.7) computes both from the bytes it
stored, so CRC32C is the one checksum: no MD5 or read-back fallback is needed, and an
object reported without a CRC32C counts as a mismatch.

Deleting removes the three objects one by one, with the same retry. A 404 on an object may
mean the object is gone (fine: deleting is idempotent, and a retried delete whose first try
went through gets one) or that the bucket is: the bucket is then listed once (empty prefix
match or 404), and a missing bucket is a ``PermanentError``. Listing needs only
storage.objects.list, which the object roles that grant storage.objects.delete include; a
bucket lookup would need storage.buckets.get, which they do not. With versioning or soft
delete on, GCS keeps the removed objects as noncurrent or soft-deleted ones for a while.

Errors: a missing bucket, refused credentials or any other 4xx → ``PermanentError``;
429, 408, 5xx, connection errors and timeouts → ``RetryableError``. Messages name the
bucket or object (UIDs only), never file contents or a library's message.
``STORAGE_EMULATOR_HOST`` and ``GOOGLE_APPLICATION_CREDENTIALS`` stay the library's own
variables; with the emulator set, the client uses anonymous credentials.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import requests
from google.api_core import exceptions as api
from google.auth import exceptions as auth
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds, TargetResult
from shared.settings import load
from uploader_service.targets import Item
from uploader_service.targets.keys import object_keys

CHUNK_QUANTUM = 256 * 1024  # GCS wants resumable chunks in whole multiples of this
_RETRYABLE_HTTP = (api.TooManyRequests, api.ServerError)  # and 408, which has no class
_UNREACHABLE = (
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    auth.TransportError,
    auth.TimeoutError,
)


class GcsSettings(BaseSettings):
    """Where and how the ``gcs`` target uploads; the library reads its own variables itself."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    bucket: str = Field(alias="GCS_BUCKET", min_length=1)
    prefix: str = Field("dicom", alias="GCS_PREFIX")
    chunk_size: int = Field(8 * 1024 * 1024, alias="GCS_CHUNK_SIZE")
    retry_deadline: float = Field(60.0, gt=0, alias="GCS_RETRY_DEADLINE")
    project: str | None = Field(None, alias="GOOGLE_CLOUD_PROJECT")

    @field_validator("chunk_size")
    @classmethod
    def _whole_quanta(cls, value: int) -> int:
        if value <= 0 or value % CHUNK_QUANTUM:
            raise ValueError(f"must be a positive multiple of {CHUNK_QUANTUM} (256 KiB)")
        return value


@dataclass(frozen=True)
class Stored:
    """One object as the bucket reports it after the upload."""

    key: str
    size: int
    crc32c: str


def crc32c_of(path: Path) -> str:
    """The file's CRC32C as GCS reports it: base64 of the four big-endian bytes."""
    checksum = google_crc32c.Checksum()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


def classify(exc: BaseException, bucket: str) -> RetryableError | PermanentError | None:
    """Our error for a library error, or None for one we cannot explain (it propagates)."""
    if isinstance(exc, api.RetryError):  # the retry deadline passed: judge the last attempt
        if exc.cause is None:
            return RetryableError("gcs: retry deadline exceeded")
        exc = exc.cause
    if isinstance(exc, api.NotFound):
        return PermanentError(f"gcs: bucket '{bucket}' does not exist")
    if isinstance(exc, api.Unauthorized | api.Forbidden):
        return PermanentError("gcs: credentials refused")
    if isinstance(exc, _RETRYABLE_HTTP) or (
        isinstance(exc, api.GoogleAPICallError) and exc.code == 408
    ):
        return RetryableError(f"gcs: service unavailable (HTTP {exc.code})")
    if isinstance(exc, api.ClientError):
        return PermanentError(f"gcs: request refused (HTTP {exc.code})")
    if isinstance(exc, _UNREACHABLE):
        return RetryableError("gcs: cannot reach the service")
    if isinstance(exc, auth.DefaultCredentialsError):
        return PermanentError("gcs: no credentials found (GOOGLE_APPLICATION_CREDENTIALS)")
    if isinstance(exc, auth.RefreshError):
        if exc.retryable:
            return RetryableError("gcs: could not refresh credentials")
        return PermanentError("gcs: credentials refused")
    return None


class GcsTarget:
    """Copies each instance to a GCS bucket; one client per worker thread."""

    name = "gcs"

    def __init__(self, settings: GcsSettings) -> None:
        self.settings = settings
        self._retry = DEFAULT_RETRY.with_timeout(settings.retry_deadline)
        self._local = threading.local()  # a client is not shared between threads

    @classmethod
    def from_env(cls) -> GcsTarget:
        return cls(load(GcsSettings))

    async def put(self, item: Item) -> TargetResult:
        started = time.perf_counter()
        keys = object_keys(self.settings.prefix, item.ids)
        files = [
            (item.original, keys.dicom, "application/dicom"),
            (item.metadata, keys.metadata, "application/json"),
        ]
        if item.preview is not None:
            files.append((item.preview, keys.preview, "image/png"))
        if not all(path.is_file() for path, _, _ in files):
            raise RetryableError("gcs: the archived files are not on disk: is ARCHIVE_PATH shared?")
        stored = [await asyncio.to_thread(self._store, *file) for file in files]
        original = stored[0]
        return TargetResult(
            target=self.name,
            ok=True,
            location=f"gs://{self.settings.bucket}/{original.key}",
            bytes=original.size,
            checksum=f"crc32c:{original.crc32c}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Remove the original, metadata and preview; objects already gone count as removed."""
        started = time.perf_counter()
        keys = object_keys(self.settings.prefix, ids)
        await asyncio.to_thread(self._delete_all, [keys.dicom, keys.metadata, keys.preview])
        return TargetResult(
            target=self.name,
            ok=True,
            location=f"gs://{self.settings.bucket}/{keys.dicom}",
            seconds=round(time.perf_counter() - started, 4),
        )

    def _delete_all(self, keys: list[str]) -> None:
        """Delete each object (blocking); a 404 is fine once the bucket is known to be there."""
        try:
            bucket = self._bucket()
            missing = False
            for key in keys:
                try:
                    bucket.blob(key).delete(retry=self._retry)
                except api.NotFound:
                    missing = True
            if missing:  # the objects, or the bucket itself? Its 404 goes to classify
                listing = bucket.list_blobs(prefix=keys[0], max_results=1, retry=self._retry)
                list(listing)  # the request is sent when the listing is read
        except Exception as exc:
            ours = classify(exc, self.settings.bucket)
            if ours is None:
                raise
            raise ours from exc

    def _store(self, path: Path, key: str, content_type: str) -> Stored:
        """Upload one file (blocking), then check what the bucket holds against it."""
        expected = crc32c_of(path)
        size = path.stat().st_size
        try:
            blob = self._bucket().blob(key, chunk_size=self.settings.chunk_size)
            blob.upload_from_filename(
                str(path), content_type=content_type, checksum="crc32c", retry=self._retry
            )
            blob.reload(retry=self._retry)
        except DataCorruption as exc:
            raise PermanentError(f"gcs: object '{key}' does not match the local file") from exc
        except Exception as exc:
            ours = classify(exc, self.settings.bucket)
            if ours is None:
                raise
            raise ours from exc
        if blob.crc32c != expected or blob.size != size:
            raise PermanentError(
                f"gcs: object '{key}' does not match the local file (CRC32C or size)"
            )
        return Stored(key=key, size=size, crc32c=expected)

    def _bucket(self) -> storage.Bucket:
        client: storage.Client | None = getattr(self._local, "client", None)
        if client is None:
            if os.environ.get("STORAGE_EMULATOR_HOST"):  # the emulator takes no credentials
                client = storage.Client(
                    project=self.settings.project or "emulator",
                    credentials=AnonymousCredentials(),
                )
            else:
                client = storage.Client(project=self.settings.project)
            self._local.client = client
        return client.bucket(self.settings.bucket)
