"""The ``s3`` target: AWS S3 or any S3 API (MinIO, Ceph), every object checked by SHA-256.

Layout: the original, metadata.json and preview.png go to ``keys.object_keys``
under ``S3_PREFIX``, uploaded with boto3's managed transfer, so files from
``S3_MULTIPART_THRESHOLD`` up go multipart in ``S3_MULTIPART_CHUNKSIZE`` parts.

Verification uses S3's additional checksums. Each object is uploaded with
``ChecksumAlgorithm="SHA256"``: S3 checks the bytes it receives against it (``BadDigest``
otherwise) and stores it, and ``head_object(ChecksumMode="ENABLED")`` reports it back. For a
single-part object that is the file's SHA-256; for a multipart one it is the SHA-256 of the
parts' SHA-256s, "<base64>-N", which is computed here in the same pass over the file, from
the part size boto3 uses. Where the store reports no checksum (an S3 API without additional
checksums) or a multipart checksum does not match the predicted parts (other part sizes),
the object is read back and hashed instead. Only a real difference raises ``PermanentError``.
moto implements all of this (its HEAD leaves out the "-N", which the comparison tolerates),
so the ETag/MD5 path is not needed: ETags are not MD5s under SSE-KMS or for multipart anyway.

Idempotency: the same instance always gets the same keys. Before uploading, the target asks
whether the key already holds these bytes (same checksum, content type and encryption) and
skips the upload if so, which makes a redelivered job cheap. The caller needs s3:PutObject
and s3:GetObject on the prefix (plus kms:GenerateDataKey and kms:Decrypt under aws:kms), and
s3:DeleteObject for ``delete``.

Deleting removes the three keys in one ``DeleteObjects`` request. S3 answers it with 200 and
lists the keys it could not delete, each with an error code, which is judged like an upload's;
a key that is not there counts as deleted. On a versioned bucket S3 only adds delete markers:
earlier versions stay until a lifecycle rule expires them.

Errors are classified by botocore error code: a missing bucket and refused credentials are
permanent; throttling, 5xx, timeouts and connection failures are retryable. Messages carry
codes, the bucket and keys (UIDs), never a library's message or file contents.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.utils import ChunksizeAdjuster

from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds, TargetResult
from shared.s3 import DICOM_CONTENT_TYPE, S3Settings, s3_client
from shared.settings import load
from uploader_service.targets import Item
from uploader_service.targets.keys import ObjectKeys, object_keys

P = ParamSpec("P")
T = TypeVar("T")

CHUNK = 1024 * 1024
# connection refused or reset, connect and read timeouts, TLS and proxy failures
_UNREACHABLE = (BotoConnectionError, HTTPClientError)
_MISSING_BUCKET = {"NoSuchBucket"}
_REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "BadDigest",  # the bytes were damaged on the way: sending them again may work
    "XAmzContentSHA256Mismatch",
}


@dataclass(frozen=True)
class Sums:
    """A file's size and SHA-256, and the checksums S3 reports for it (base64)."""

    size: int
    sha256: str  # hex, as in events
    whole: str  # what S3 reports for a single-part object
    composite: str  # what S3 reports for a multipart one: SHA-256 of the parts' SHA-256s
    parts: int


def sums_of(path: Path, part_size: int) -> Sums:
    """Hash path once, as a whole and in parts of part_size bytes."""
    whole, of_parts = hashlib.sha256(), hashlib.sha256()
    size = parts = 0
    with open(path, "rb") as f:
        while True:
            part, filled = hashlib.sha256(), 0
            while filled < part_size and (chunk := f.read(min(CHUNK, part_size - filled))):
                part.update(chunk)
                whole.update(chunk)
                filled += len(chunk)
            if not filled:
                break
            of_parts.update(part.digest())
            size, parts = size + filled, parts + 1
    return Sums(
        size=size,
        sha256=whole.hexdigest(),
        whole=base64.b64encode(whole.digest()).decode(),
        composite=base64.b64encode(of_parts.digest()).decode(),
        parts=parts,
    )


def stored_matches(head: dict[str, Any], sums: Sums) -> bool | None:
    """Whether the checksum in a HEAD response is that of sums; None when it cannot tell."""
    stored = head.get("ChecksumSHA256")
    if not stored:
        return None
    value, _, count = str(stored).partition("-")
    if value == sums.whole:
        return True
    if value == sums.composite and count in ("", str(sums.parts)):
        return True
    multipart = bool(count) or head.get("ChecksumType") == "COMPOSITE"
    multipart = multipart or "-" in str(head.get("ETag", ""))
    return None if multipart else False  # parts of another size: read it back


class S3Target:
    """Copies an instance to an S3 bucket and checks the copy by checksum."""

    name = "s3"

    def __init__(self, settings: S3Settings, client: BaseClient) -> None:
        self.settings = settings
        self.client = client
        self.transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
        )

    @classmethod
    def from_env(cls) -> S3Target:
        settings = load(S3Settings)
        return cls(settings, s3_client(settings))

    async def put(self, item: Item) -> TargetResult:
        started = time.perf_counter()
        if not item.original.is_file():
            raise RetryableError("the archived original is not on disk: is ARCHIVE_PATH shared?")
        key, sums = await self._call(self._put_all, item)
        return TargetResult(
            target=self.name,
            ok=True,
            location=f"s3://{self.settings.bucket}/{key}",
            bytes=sums.size,
            checksum=f"sha256:{sums.sha256}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Remove the original, metadata and preview; keys already gone count as removed."""
        started = time.perf_counter()
        keys = object_keys(self.settings.prefix, ids)
        await self._call(self._delete_all, keys)
        return TargetResult(
            target=self.name,
            ok=True,
            location=f"s3://{self.settings.bucket}/{keys.dicom}",
            seconds=round(time.perf_counter() - started, 4),
        )

    async def _call(self, blocking: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call in a thread, with botocore's errors turned into ours."""
        try:
            return await asyncio.to_thread(blocking, *args, **kwargs)
        except (ClientError, S3UploadFailedError, *_UNREACHABLE) as exc:
            raise self._classify(exc) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise PermanentError(
                "s3: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "a profile or a role"
            ) from exc

    def _delete_all(self, keys: ObjectKeys) -> None:
        """Delete the three keys in one request (blocking); raise for any key S3 did not delete."""
        answer = self.client.delete_objects(
            Bucket=self.settings.bucket,
            Delete={
                "Objects": [{"Key": k} for k in (keys.dicom, keys.metadata, keys.preview)],
                "Quiet": True,  # list only the keys that failed
            },
        )
        verdicts: list[RetryableError | PermanentError] = []
        for error in answer.get("Errors", []):  # S3 answered 200 but kept these keys
            refused = {
                "Error": {"Code": error.get("Code", "")},
                "ResponseMetadata": answer.get("ResponseMetadata", {}),
            }
            verdicts.append(self._classify(ClientError(refused, "DeleteObjects")))
        if verdicts:  # a permanent reason wins: retrying would not get past it
            raise next((v for v in verdicts if isinstance(v, PermanentError)), verdicts[0])

    def _put_all(self, item: Item) -> tuple[str, Sums]:
        """Store the original, then its metadata and preview; blocking, run in a thread."""
        keys = object_keys(self.settings.prefix, item.ids)
        sums = self._store(item.original, keys.dicom, DICOM_CONTENT_TYPE, expect=item.sha256)
        self._store(item.metadata, keys.metadata, "application/json")
        if item.preview is not None:
            self._store(item.preview, keys.preview, "image/png")
        return keys.dicom, sums

    def _store(self, path: Path, key: str, content_type: str, expect: str = "") -> Sums:
        chunksize = self.settings.multipart_chunksize
        sums = sums_of(path, ChunksizeAdjuster().adjust_chunksize(chunksize, path.stat().st_size))
        if expect and sums.sha256 != expect:
            raise PermanentError("the archived original does not match the upload's SHA-256")
        if not self._holds(key, sums, content_type):
            self._upload(path, key, content_type)
            self._verify(key, sums)
        return sums

    def _upload(self, path: Path, key: str, content_type: str) -> None:
        extra = {"ContentType": content_type, "ChecksumAlgorithm": "SHA256"}
        extra |= self.settings.sse_args()
        self.client.upload_file(
            str(path), self.settings.bucket, key, ExtraArgs=extra, Config=self.transfer
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.settings.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return head

    def _holds(self, key: str, sums: Sums, content_type: str) -> bool:
        """True if key already holds these bytes, typed and encrypted as configured."""
        try:
            head = self._head(key)
        except ClientError as exc:  # e.g. 403: let the upload say precisely what is wrong
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                return False
            raise
        if head is None or head.get("ContentLength") != sums.size:
            return False
        if head.get("ContentType") != content_type:
            return False
        if self.settings.sse and head.get("ServerSideEncryption") != self.settings.sse:
            return False
        return bool(stored_matches(head, sums))

    def _verify(self, key: str, sums: Sums) -> None:
        """Return only if the stored object has the file's bytes, by checksum."""
        where = f"s3://{self.settings.bucket}/{key}"
        head = self._head(key)
        if head is None:
            raise RetryableError(f"s3: {where} is missing right after its upload")
        if head.get("ContentLength") != sums.size:
            raise PermanentError(f"s3: size mismatch for {where} after upload")
        verdict = stored_matches(head, sums)
        if verdict is None:
            verdict = self._read_back_sha256(key) == sums.sha256
        if not verdict:
            raise PermanentError(f"s3: checksum mismatch for {where} after upload")

    def _read_back_sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
        finally:
            body.close()
        return digest.hexdigest()

    def _classify(self, exc: Exception) -> RetryableError | PermanentError:
        """Our error for a botocore one: by error code, never by its message."""
        if isinstance(exc, S3UploadFailedError):  # boto3 wraps the ClientError of an upload
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, Exception) and not isinstance(cause, S3UploadFailedError):
                return self._classify(cause)
            return PermanentError("s3: upload failed (S3UploadFailedError)")
        if isinstance(exc, _UNREACHABLE):
            endpoint = self.client.meta.endpoint_url
            return RetryableError(
                f"s3: cannot reach the endpoint {endpoint} ({type(exc).__name__})"
            )
        if not isinstance(exc, ClientError):
            return PermanentError(f"s3: {type(exc).__name__}")
        code = str(exc.response.get("Error", {}).get("Code", "")) or "unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_BUCKET:
            return PermanentError(f"s3: bucket '{self.settings.bucket}' does not exist")
        if code in _REFUSED or status == 403:
            return PermanentError(f"s3: credentials refused ({code})")
        if code in _TRANSIENT or status == 429 or status >= 500:
            return RetryableError(f"s3: the endpoint is busy or failing ({code}, HTTP {status})")
        return PermanentError(f"s3: request refused ({code}, HTTP {status})")
