"""A DICOMweb client: STOW-RS to store one file, WADO-RS to stream instances back, DELETE one.

The uploader stores with it and the gateway retrieves with it. Bodies are streamed both ways,
so neither a large instance nor a whole study is ever held in memory. Failures are reported as
``RetryableError`` (timeouts, 5xx, 429, connection refused) or ``PermanentError`` (credentials
refused, wrong URL, instance refused) whose messages hold status codes and UIDs, never the data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit
from uuid import uuid4

import anyio
import httpx
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import PermanentError, RetryableError
from shared.multipart_related import Event, Mark, parts

log = structlog.get_logger()

CHUNK = 256 * 1024
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# FailureReason (0008,1197) values that mean "the server already holds this instance":
# 0x0111 Duplicate SOP Instance (PS3.7 C.4.2), 45070 Azure DICOM service "already stored".
DUPLICATE_REASONS = frozenset({0x0111, 45070})
# Worth another try: processing failure, resource limitation, 0xA7xx out of resources.
PASSING_REASONS = frozenset({0x0110, 0x0213})
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

T = TypeVar("T")


class DicomwebSettings(BaseSettings):
    """Where the DICOMweb service is, how to sign in, and how to check what it stored."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    url: str = Field(alias="DICOMWEB_URL")
    token: SecretStr | None = Field(None, alias="DICOMWEB_TOKEN")
    username: str | None = Field(None, alias="DICOMWEB_USERNAME")
    password: SecretStr | None = Field(None, alias="DICOMWEB_PASSWORD")
    timeout_s: float = Field(30, gt=0, alias="DICOMWEB_TIMEOUT_S")
    verify: Literal["readback", "response"] = Field("readback", alias="DICOMWEB_VERIFY")
    retries: int = Field(3, ge=0, le=20, alias="DICOMWEB_RETRIES")
    backoff_s: float = Field(0.5, ge=0, alias="DICOMWEB_BACKOFF_S")

    @field_validator("url")
    @classmethod
    def _service_root(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. http://orthanc:8042/dicom-web")
        if parts.username or parts.password:
            raise ValueError("put credentials in DICOMWEB_USERNAME/DICOMWEB_PASSWORD, not the URL")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _one_way_to_sign_in(self) -> DicomwebSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("DICOMWEB_USERNAME and DICOMWEB_PASSWORD go together: set both")
        if self.token is not None and self.username is not None:
            raise ValueError("set DICOMWEB_TOKEN or DICOMWEB_USERNAME/DICOMWEB_PASSWORD, not both")
        return self


@dataclass(frozen=True)
class StoreOutcome:
    """What the server answered to one STOW-RS request, reduced to status codes and UIDs."""

    status: int  # HTTP status of the answer
    referenced: tuple[str, ...] = ()  # SOP Instance UIDs in ReferencedSOPSequence
    failed: tuple[tuple[str, int], ...] = ()  # (SOP Instance UID, FailureReason)
    duplicate: bool = False  # 409, or a FailureReason meaning "already stored"
    sent_sha256: str = ""  # SHA-256 of the file as it was sent


class DicomwebNotFound(PermanentError):
    """WADO-RS answered 404 (or 204): the server holds no such study, series or instance."""


class _Busy(RetryableError):
    """A 429/503-like answer, maybe with how long to wait (Retry-After)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DicomwebClient:
    """STOW-RS and WADO-RS against one DICOMweb service root, on one ``httpx.AsyncClient``."""

    def __init__(
        self, settings: DicomwebSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.url = settings.url
        auth: httpx.Auth | None = None
        headers: dict[str, str] = {}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        elif settings.username is not None and settings.password is not None:
            auth = httpx.BasicAuth(settings.username, settings.password.get_secret_value())
        self._http = httpx.AsyncClient(
            auth=auth, headers=headers, timeout=settings.timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> DicomwebClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.url}/studies/{study}/series/{series}/instances/{sop}"

    # STOW-RS

    async def store(self, path: Path) -> StoreOutcome:
        """Store one Part 10 file; an instance the server already holds counts as stored."""
        size = path.stat().st_size
        return await self._retrying(lambda: self._store_once(path, size))

    async def _store_once(self, path: Path, size: int) -> StoreOutcome:
        boundary = uuid4().hex
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        digest = hashlib.sha256()
        endpoint = f"{self.url}/studies"
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(len(head) + size + len(tail)),  # servers need not take chunks
            "Accept": "application/dicom+json",
        }
        try:
            response = await self._http.post(
                endpoint, content=_file_body(path, head, tail, digest.update), headers=headers
            )
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        status = response.status_code
        outcome = _parse_stow(response, digest.hexdigest())
        if status in (401, 403):
            raise PermanentError(f"dicomweb: credentials refused ({status})")
        if status in (408, 429) or status >= 500:
            raise _busy(response, "STOW-RS")
        if status in (404, 405):
            raise PermanentError(
                f"dicomweb: {endpoint} answered {status}: "
                "is DICOMWEB_URL the DICOMweb service root?"
            )
        for sop, reason in outcome.failed:
            if reason not in DUPLICATE_REASONS:
                raise _refused(sop, reason)
        if status == 409:
            return replace(outcome, duplicate=True)
        if status in (200, 202):
            return outcome
        if status == 400:
            raise PermanentError(
                f"dicomweb: {endpoint} answered 400 Bad Request: the file is not an instance "
                "the server accepts, or DICOMWEB_URL is not a STOW-RS service root"
            )
        raise PermanentError(f"dicomweb: {endpoint} answered {status} to STOW-RS")

    # DELETE (Google Cloud Healthcare, Azure DICOM service, dcm4chee; not Orthanc's plugin)

    async def delete_instance(self, study: str, series: str, sop: str) -> None:
        """Remove one instance; one the server does not hold (404) counts as removed."""
        url = self.instance_url(study, series, sop)
        await self._retrying(lambda: self._delete_once(url))

    async def _delete_once(self, url: str) -> None:
        try:
            response = await self._http.delete(url)
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        status = response.status_code
        if status in (200, 202, 204, 404):
            return
        if status in (405, 501):  # Orthanc's DICOMweb plugin: 405, Allow: GET
            raise PermanentError(
                "dicomweb: this server does not support DELETE; remove the instance there"
            )
        if status in (401, 403):
            raise PermanentError(f"dicomweb: credentials refused ({status})")
        if status in (408, 429) or status >= 500:
            raise _busy(response, "DELETE")
        raise PermanentError(f"dicomweb: {url} answered {status} to DELETE")

    # WADO-RS

    async def retrieve_instance(
        self, study: str, series: str, sop: str
    ) -> AsyncGenerator[bytes, None]:
        """The instance's Part 10 bytes as stored (any transfer syntax), chunk by chunk.

        Opening is retried; a response cut off midway raises ``RetryableError``. Close the
        iterator (``contextlib.aclosing``) if you stop before the end.
        """
        count = 0
        async with self._multipart(self.instance_url(study, series, sop)) as events:
            async for event in events:
                if event is Mark.PART_START:
                    count += 1
                    if count > 1:
                        raise PermanentError("dicomweb: one instance asked, several returned")
                elif isinstance(event, bytes):
                    yield event
        if count == 0:
            raise PermanentError("dicomweb: the response held no instance")

    async def retrieve(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        dest_folder: Path,
    ) -> list[Path]:
        """Write every instance of a study (or series, or one instance) to dest_folder.

        Files are named ``{SOP Instance UID}.dcm``. A failed attempt removes what it wrote and
        is retried as a whole.
        """
        if sop is not None and series is None:
            raise ValueError("an instance is retrieved by study, series and SOP Instance UID")
        url = f"{self.url}/studies/{study}"
        if series is not None:
            url += f"/series/{series}"
        if sop is not None:
            url += f"/instances/{sop}"
        dest_folder.mkdir(parents=True, exist_ok=True)
        return await self._retrying(lambda: self._retrieve_once(url, dest_folder))

    async def _retrieve_once(self, url: str, folder: Path) -> list[Path]:
        written: list[Path] = []
        tmp: Path | None = None
        out: Any = None  # an anyio AsyncFile while a part is open
        try:
            async with self._multipart(url, retry=False) as events:
                async for event in events:
                    if event is Mark.PART_START:
                        tmp = folder / f".part-{uuid4().hex}.tmp"
                        out = await anyio.open_file(tmp, "wb")
                    elif isinstance(event, bytes):
                        await out.write(event)
                    else:
                        await out.aclose()
                        out = None
                        assert tmp is not None
                        name = await asyncio.to_thread(_sop_uid_of, tmp)
                        final = folder / f"{name or f'instance-{len(written) + 1:05d}'}.dcm"
                        os.replace(tmp, final)
                        tmp = None
                        written.append(final)
        except BaseException:
            if out is not None:
                await out.aclose()
            for leftover in [*written, tmp]:
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            raise
        if not written:
            raise DicomwebNotFound(f"dicomweb: no instance under {url}")
        return written

    @asynccontextmanager
    async def _multipart(
        self, url: str, *, retry: bool = True
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Open a WADO-RS response and give its parts as a stream of events."""

        async def open_once() -> httpx.Response:
            request = self._http.build_request("GET", url, headers={"Accept": WADO_ACCEPT})
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _unreachable(exc) from exc
            if response.status_code != 200:
                await response.aclose()
                raise _wado_error(response, url)
            return response

        response = await (self._retrying(open_once) if retry else open_once())
        try:
            async with aclosing(parts(response)) as events:
                yield events
        finally:
            await response.aclose()

    # retries

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run attempt, again after exponential backoff with jitter while it is retryable."""
        tries = self.settings.retries + 1
        for n in range(1, tries + 1):
            try:
                return await attempt()
            except RetryableError as exc:
                if n == tries:
                    raise
                delay = self.settings.backoff_s * 2 ** (n - 1) * random.uniform(0.5, 1.5)
                if isinstance(exc, _Busy) and exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 60.0))
                log.warning("dicomweb.retried", attempt=n, delay_s=round(delay, 3), reason=str(exc))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


async def _file_body(
    path: Path, head: bytes, tail: bytes, seen: Callable[[bytes], object]
) -> AsyncIterator[bytes]:
    """One multipart part around the file, read by chunks and hashed as it goes out."""
    yield head
    async with await anyio.open_file(path, "rb") as f:
        while chunk := await f.read(CHUNK):
            seen(chunk)
            yield chunk
    yield tail


def _parse_stow(response: httpx.Response, sent_sha256: str) -> StoreOutcome:
    """Read ReferencedSOPSequence and FailedSOPSequence from a DICOM JSON STOW-RS answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return StoreOutcome(response.status_code, sent_sha256=sent_sha256)
    referenced = tuple(_first(item, "00081155") or "" for item in _items(body, "00081199"))
    failed = tuple(
        (_first(item, "00081155") or "", _code(_first(item, "00081197")))
        for item in _items(body, "00081198")
    )
    return StoreOutcome(
        status=response.status_code,
        referenced=tuple(uid for uid in referenced if uid),
        failed=failed,
        duplicate=any(reason in DUPLICATE_REASONS for _, reason in failed),
        sent_sha256=sent_sha256,
    )


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _first(dataset: dict[str, Any], tag: str) -> Any:
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _code(value: Any) -> int:
    """A FailureReason as a number (DICOM JSON gives US values as numbers; some give text)."""
    try:
        return int(value, 0) if isinstance(value, str) else int(value or 0)
    except (TypeError, ValueError):
        return 0


def _refused(sop: str, reason: int) -> Exception:
    what = f"dicomweb: the server refused instance {sop or '?'} (FailureReason 0x{reason:04X})"
    if reason in PASSING_REASONS or reason & 0xFF00 == 0xA700:
        return RetryableError(what)
    return PermanentError(what)


def _unreachable(exc: httpx.TransportError) -> RetryableError:
    return RetryableError(f"dicomweb: cannot reach the server ({type(exc).__name__})")


def _busy(response: httpx.Response, what: str) -> _Busy:
    retry_after = response.headers.get("retry-after", "")
    seconds = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
    return _Busy(f"dicomweb: {what} answered {response.status_code}", seconds)


def _wado_error(response: httpx.Response, url: str) -> Exception:
    status = response.status_code
    if status in (401, 403):
        return PermanentError(f"dicomweb: credentials refused ({status})")
    if status in (408, 429) or status >= 500:
        return _busy(response, "WADO-RS")
    if status in (204, 404):
        return DicomwebNotFound(f"dicomweb: {url} not found ({status})")
    if status == 406:
        return PermanentError("dicomweb: the server cannot return instances as stored (406)")
    return PermanentError(f"dicomweb: {url} answered {status} to WADO-RS")


def _sop_uid_of(path: Path) -> str | None:
    """The SOP Instance UID in a Part 10 file's meta header, if it is a safe file name."""
    from pydicom.filereader import read_file_meta_info

    try:
        uid = str(read_file_meta_info(path).get("MediaStorageSOPInstanceUID", ""))
    except Exception:  # not Part 10: the caller names the file by its position instead
        return None
    return uid if len(uid) <= 64 and _UID.fullmatch(uid) else None
