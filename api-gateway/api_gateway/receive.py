"""Stream a multipart/form-data body to disk, one file per ``file`` part, hashing as it goes.

Bytes go straight from the socket to ``UPLOADS_PATH/{upload_id}.part`` in the chunks the
server hands over; the SHA-256 and size are computed on the way. A complete part is flushed,
fsynced and renamed to ``{upload_id}.dcm``. The client's filename is kept only to answer it:
it is never used as a path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from shared.errors import BadRequest, FileTooLarge, UnsupportedMediaType

FIELD = b"file"
MAX_OTHER_FIELDS = 1024 * 1024  # bytes of non-file form fields we are willing to skip


@dataclass
class ReceivedFile:
    upload_id: UUID
    path: Path
    sha256: str
    size: int
    filename: str | None


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a Content-Type header, or a precise 4xx error."""
    media, options = parse_options_header(content_type or "")
    if media != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the file as multipart/form-data with a 'file' field "
            f"(got Content-Type {media.decode(errors='replace') or 'none'})"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart/form-data Content-Type has no boundary")
    return boundary


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: bytes | None = None
    filename: str | None = None
    upload_id: UUID | None = None
    fd: int | None = None
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0


class MultipartReceiver:
    """Feed it the body chunk by chunk; ``finish`` gives the files, ``abort`` removes them."""

    def __init__(self, boundary: bytes, folder: Path, max_file_size: int, fsync: bool = True):
        self.folder = folder
        self.max_file_size = max_file_size
        self.fsync = fsync
        self.files: list[ReceivedFile] = []
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._other_bytes = 0
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=16,
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise BadRequest("the multipart body is malformed") from None

    def finish(self) -> list[ReceivedFile]:
        if not self._ended:
            raise BadRequest("the multipart body ended before its closing boundary")
        return self.files

    def abort(self) -> None:
        """Remove everything this request wrote: partial and completed files alike."""
        part = self._part
        if part.fd is not None:
            os.close(part.fd)
            part.fd = None
            self._part_path(part.upload_id).unlink(missing_ok=True)  # type: ignore[arg-type]
        for received in self.files:
            received.path.unlink(missing_ok=True)
        self.files.clear()

    # -- parser callbacks ----------------------------------------------------------------------

    def _begin(self) -> None:
        self._part = _Part()

    def _header_end(self) -> None:
        self._part.headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        part = self._part
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name")
        if part.name != FIELD:
            return
        raw_name = options.get(b"filename")
        part.filename = raw_name.decode("utf-8", "replace") if raw_name else None
        part.upload_id = uuid4()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        part.fd = os.open(self._part_path(part.upload_id), flags, 0o640)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.fd is None:
            self._other_bytes += end - start
            if self._other_bytes > MAX_OTHER_FIELDS:
                raise BadRequest("form fields other than 'file' exceed 1 MiB")
            return
        part.size += end - start
        if part.size > self.max_file_size:
            raise FileTooLarge(
                f"the file exceeds MAX_FILE_SIZE ({self.max_file_size} bytes); nothing was kept"
            )
        view = memoryview(data)[start:end]
        part.digest.update(view)
        while view:
            written = os.write(part.fd, view)
            view = view[written:]

    def _part_end(self) -> None:
        part = self._part
        if part.fd is None or part.upload_id is None:
            return
        try:
            if self.fsync:
                os.fsync(part.fd)
        finally:
            os.close(part.fd)
            part.fd = None
        final = self.folder / f"{part.upload_id}.dcm"
        os.replace(self._part_path(part.upload_id), final)
        self.files.append(
            ReceivedFile(part.upload_id, final, part.digest.hexdigest(), part.size, part.filename)
        )

    def _end(self) -> None:
        self._ended = True

    def _part_path(self, upload_id: UUID) -> Path:
        return self.folder / f"{upload_id}.part"
