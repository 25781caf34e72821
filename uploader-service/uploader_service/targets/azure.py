"""The ``azure`` target: Azure Blob Storage (or Azurite); every blob is checked once written.

Checksum. The service computes a Content-MD5 for a single ``Put Blob`` but none for a block
upload (``Put Block`` + ``Put Block List``), so this target does not rely on it: it computes
the file's MD5 first and sends it as the blob's Content-MD5 (``content_settings.content_md5``),
stored the same way for both kinds of upload. ``validate_content`` adds each request's own
MD5, which the service checks against the bytes it received, so a block cannot be corrupted
on the way. The bytes handed to the SDK are hashed again as it reads them, and a put counts
only when ``get_blob_properties()`` reports that MD5 and that size: a file that changed after
it was hashed, or a blob replaced meanwhile, is a ``PermanentError`` naming the blob. (Azurite
refuses a single put whose Content-MD5 does not match its body outright: 400, also permanent.)
The result's checksum is ``md5:<base64>``, the form Azure shows as the blob's Content-MD5.

Faults. The SDK retries what may pass (``ExponentialRetry`` with jitter, a few attempts, then
the bus retries the job); what is left is mapped once by ``_classify``: a missing container,
refused credentials and other 4xx are permanent; 408, 429, 5xx and no answer are retryable.

Deleting removes the three blobs (with any snapshots of them) one by one; a blob already gone
(404 ``BlobNotFound``) counts as removed, while a missing container (404 ``ContainerNotFound``)
goes to ``_classify`` like any other fault. With soft delete on, the account keeps the blobs
for its retention period.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContentSettings, ExponentialRetry
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds, TargetResult
from shared.files import CHUNK
from shared.settings import load
from uploader_service.targets import Item
from uploader_service.targets.keys import object_keys

MiB = 1024 * 1024
ENDPOINT_VARIABLES = "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL"
CREDENTIAL_VARIABLES = "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN"


class AzureSettings(BaseSettings):
    """The account, its credential and the container the azure target writes to."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True, populate_by_name=True
    )

    connection_string: SecretStr | None = Field(None, alias="AZURE_STORAGE_CONNECTION_STRING")
    account_url: str | None = Field(None, pattern=r"^https?://", alias="AZURE_STORAGE_ACCOUNT_URL")
    account_key: SecretStr | None = Field(None, alias="AZURE_STORAGE_KEY")
    sas_token: SecretStr | None = Field(None, alias="AZURE_STORAGE_SAS_TOKEN")
    container: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", alias="AZURE_CONTAINER")
    prefix: str = Field("dicom", alias="AZURE_PREFIX")
    block_size: int = Field(4 * MiB, ge=64 * 1024, le=4000 * MiB, alias="AZURE_BLOCK_SIZE")
    single_put_size: int = Field(8 * MiB, ge=0, le=5000 * MiB, alias="AZURE_SINGLE_PUT_SIZE")
    retry_total: int = Field(3, ge=0, le=10, alias="AZURE_RETRY_TOTAL")
    retry_backoff: int = Field(1, ge=0, le=60, alias="AZURE_RETRY_BACKOFF")
    connect_timeout: float = Field(10, gt=0, alias="AZURE_CONNECT_TIMEOUT")
    read_timeout: float = Field(60, gt=0, alias="AZURE_READ_TIMEOUT")

    @model_validator(mode="after")
    def _one_way_in(self) -> AzureSettings:
        credential = self.account_key or self.sas_token
        if not self.connection_string and not self.account_url:
            raise ValueError(f"set {ENDPOINT_VARIABLES} to reach the storage account")
        if self.connection_string and self.account_url:
            raise ValueError(f"set {ENDPOINT_VARIABLES}, not both")
        if self.connection_string and credential:
            raise ValueError(
                f"AZURE_STORAGE_CONNECTION_STRING has a credential: unset {CREDENTIAL_VARIABLES}"
            )
        if self.account_url and not credential:
            raise ValueError(f"AZURE_STORAGE_ACCOUNT_URL needs {CREDENTIAL_VARIABLES}")
        if self.account_key and self.sas_token:
            raise ValueError(f"set {CREDENTIAL_VARIABLES}, not both")
        return self


class AzureTarget:
    name = "azure"

    def __init__(self, settings: AzureSettings) -> None:
        self.settings = settings
        self._service = _client(settings)

    @classmethod
    def from_env(cls) -> AzureTarget:
        settings = load(AzureSettings)
        try:
            return cls(settings)
        except ValueError:  # the SDK cannot read the endpoint or the key it was given
            variable = "AZURE_STORAGE_CONNECTION_STRING"
            if settings.connection_string is None:
                variable = "AZURE_STORAGE_ACCOUNT_URL"
            print(f"configuration error: {variable}: not a usable endpoint", file=sys.stderr)
            raise SystemExit(2) from None

    def close(self) -> None:
        self._service.close()

    async def put(self, item: Item) -> TargetResult:
        started = time.perf_counter()
        keys = object_keys(self.settings.prefix, item.ids)
        files = [(item.original, keys.dicom, "application/dicom")]
        files.append((item.metadata, keys.metadata, "application/json"))
        if item.preview is not None:
            files.append((item.preview, keys.preview, "image/png"))
        sent = await asyncio.to_thread(lambda: [self._upload(*file) for file in files])
        original = sent[0]
        return TargetResult(
            target=self.name,
            ok=True,
            location=original.url,
            bytes=original.size,
            checksum=f"md5:{base64.b64encode(original.md5).decode()}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Remove the original, metadata and preview blobs; blobs already gone count as removed."""
        started = time.perf_counter()
        keys = object_keys(self.settings.prefix, ids)
        names = [keys.dicom, keys.metadata, keys.preview]
        urls = await asyncio.to_thread(lambda: [self._delete(name) for name in names])
        return TargetResult(
            target=self.name,
            ok=True,
            location=urls[0],
            seconds=round(time.perf_counter() - started, 4),
        )

    def _delete(self, key: str) -> str:
        """Delete one blob and its snapshots (blocking); its URL, without any SAS token."""
        blob = self._service.get_blob_client(self.settings.container, key)
        try:
            blob.delete_blob(delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if _code_of(exc) != "BlobNotFound":  # ContainerNotFound is no "already gone"
                raise _classify(exc, self.settings.container, key) from exc
        except AzureError as exc:
            raise _classify(exc, self.settings.container, key) from exc
        return urlunsplit(urlsplit(blob.url)._replace(query=""))

    def _upload(self, path: Path, key: str, content_type: str) -> _Sent:
        """Write one file to its blob (blocking), then check the blob holds what was sent."""
        blob = self._service.get_blob_client(self.settings.container, key)
        try:
            expected = _md5_of(path)
            with path.open("rb") as f:
                reader = _Hashing(f)
                blob.upload_blob(
                    reader,
                    length=reader.length,
                    overwrite=True,  # the same instance always lands on the same key
                    validate_content=True,
                    content_settings=ContentSettings(
                        content_type=content_type, content_md5=bytearray(expected)
                    ),
                )
            stored = blob.get_blob_properties()
        except FileNotFoundError:
            raise RetryableError(f"azure: {path.name} is not on disk") from None
        except AzureError as exc:
            raise _classify(exc, self.settings.container, key) from exc
        md5 = reader.digest()
        held = bytes(stored.content_settings.content_md5 or b"")
        if stored.size != reader.read_bytes or held != md5:
            raise PermanentError(f"azure: blob '{key}' does not hold the bytes sent (MD5 or size)")
        url = urlunsplit(urlsplit(blob.url)._replace(query=""))  # never a SAS token
        return _Sent(url=url, size=reader.read_bytes, md5=md5)


@dataclass(frozen=True)
class _Sent:
    url: str
    size: int
    md5: bytes


class _Hashing(io.RawIOBase):
    """A file the SDK reads once, front to back: hashes and counts what it hands over."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.length = os.fstat(f.fileno()).st_size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._f.read(size)
        self._md5.update(data)
        self.read_bytes += len(data)
        return data

    def digest(self) -> bytes:
        return self._md5.digest()


def _md5_of(path: Path) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
    return md5.digest()


def _client(settings: AzureSettings) -> BlobServiceClient:
    retry = ExponentialRetry(
        initial_backoff=settings.retry_backoff,  # then + 2**n seconds, give or take 1
        increment_base=2,
        retry_total=settings.retry_total,
        random_jitter_range=1,
    )
    options: dict[str, Any] = {
        "retry_policy": retry,
        "connection_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "max_single_put_size": settings.single_put_size,  # above it, blocks of max_block_size
        "max_block_size": settings.block_size,
    }
    if settings.connection_string is not None:
        secret = settings.connection_string.get_secret_value()
        return BlobServiceClient.from_connection_string(secret, **options)
    assert settings.account_url is not None
    credential: str | AzureSasCredential
    if settings.account_key is not None:
        credential = settings.account_key.get_secret_value()
    else:
        assert settings.sas_token is not None
        credential = AzureSasCredential(settings.sas_token.get_secret_value().lstrip("?"))
    return BlobServiceClient(settings.account_url, credential=credential, **options)


def _classify(exc: AzureError, container: str, key: str) -> Exception:
    """Our error for one of the SDK's, once its own retries are spent; never its message."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return RetryableError("azure: the storage account did not answer")
    if not isinstance(exc, HttpResponseError):
        return RetryableError(f"azure: {type(exc).__name__} on blob '{key}'")
    status = exc.status_code or 0
    code = _code_of(exc)
    if code == "ContainerNotFound":
        return PermanentError(f"azure: container '{container}' does not exist")
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return PermanentError(f"azure: credentials refused ({code or status})")
    if code == "Md5Mismatch":
        return PermanentError(f"azure: blob '{key}' does not hold the bytes sent (MD5)")
    if status in (0, 408, 429) or status >= 500:
        return RetryableError(f"azure: blob '{key}' failed with HTTP {status} {code}".rstrip())
    return PermanentError(f"azure: blob '{key}' refused with HTTP {status} {code}".rstrip())


def _code_of(exc: HttpResponseError) -> str:
    """The service's error code, e.g. "BlobNotFound"; "" when it gave none."""
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))  # a StorageErrorCode or a plain string
