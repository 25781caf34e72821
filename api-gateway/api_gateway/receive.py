"""Stream an upload body to disk, one file per ``file`` part (or the raw body), hashing as it goes.

Bytes go straight from the socket to ``UPLOADS_PATH/{upload_id}.part`` in the chunks the
server hands over; the SHA-256 and size are computed on the way. Once the request's files are
all complete, each is fsynced and renamed to ``{upload_id}.dcm`` (``kept``: in threads, so the
event loop goes on serving other requests while the disk flushes). The client's filename is
kept only to answer it: it is never used as a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from uuid import UUID, uuid4

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from shared.errors import BadRequest, FileTooLarge, UnsupportedMediaType
from shared.multipart_related import Preamble

FILE_FIELDS = frozenset({b"file", b"files"})  # seed 001 and 004 spellings
TEXT_FIELDS = frozenset({b"label", b"study"})  # kept; other fields are skipped
MAX_OTHER_FIELDS = 1024 * 1024  # bytes of non-file form fields we are willing to read
HEAD = 132  # the preamble and "DICM": enough to tell DICOM, JPEG and PNG apart


@dataclass
class ReceivedFile:
    upload_id: UUID
    path: Path
    sha256: str
    size: int
    filename: str | None
    head: bytes = b""
    converted_from: Literal["jpeg", "png"] | None = None
    source_sha256: str | None = None  # of the image a converted file was made from


@dataclass
class RefusedFile:
    """A file of a request that was not taken, with seed 004's reason code and our words."""

    name: str | None
    reason: str  # too_large, invalid_type, invalid_image, duplicate, invalid_base64
    message: str


class Sink:
    """One file on its way to ``{upload_id}.part``: written, hashed and measured as it comes."""

    def __init__(self, folder: Path, max_size: int, filename: str | None = None):
        self.folder, self.max_size, self.filename = folder, max_size, filename
        self.upload_id = uuid4()
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.too_large = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd: int | None = os.open(self.part, flags, 0o640)

    @property
    def part(self) -> Path:
        return self.folder / f"{self.upload_id}.part"

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; past ``max_size`` the file is dropped and the rest ignored."""
        self.size += len(data)
        if self.too_large or self.size > self.max_size:
            if not self.too_large:
                self.too_large = True
                self.abort()
            return
        view = memoryview(data)
        if len(self.head) < HEAD:
            self.head.extend(view[: HEAD - len(self.head)])
        self.digest.update(view)
        while view:
            written = os.write(self.fd, view)  # type: ignore[arg-type]
            view = view[written:]

    def close(self) -> ReceivedFile:
        """The whole file is written: closed, still ``.part`` until ``keep``."""
        assert self.fd is not None
        os.close(self.fd)
        self.fd = None
        return ReceivedFile(
            self.upload_id,
            self.part,
            self.digest.hexdigest(),
            self.size,
            self.filename,
            bytes(self.head),
        )

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.part.unlink(missing_ok=True)

    def refusal(self) -> RefusedFile:
        return RefusedFile(
            self.filename,
            "too_large",
            f"the file exceeds MAX_FILE_SIZE ({self.max_size} bytes); nothing of it was kept",
        )


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


class MultipartReceiver:
    """Feed it the body chunk by chunk; ``finish`` gives the files, ``abort`` removes them.

    A file over ``max_file_size`` is dropped as its bytes pass and reported in ``refused``;
    the other files of the request are kept.
    """

    def __init__(self, boundary: bytes, folder: Path, max_file_size: int, fsync: bool = True):
        self.folder = folder
        self.max_file_size = max_file_size
        self.fsync = fsync
        self.files: list[ReceivedFile] = []
        self.refused: list[RefusedFile] = []
        self.fields: dict[str, str] = {}
        self._headers: dict[bytes, bytes] = {}
        self._sink: Sink | None = None
        self._field: bytes | None = None
        self._text = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._other_bytes = 0
        self._ended = False
        self._preamble = Preamble(boundary)
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
        if not self._preamble.done:
            chunk = self._preamble.skip(chunk)
            if self._preamble.too_long:
                raise BadRequest("the multipart body has no boundary in its first 64 KiB")
            if not chunk:
                return
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise BadRequest("the multipart body is malformed") from None

    async def finish(self) -> list[ReceivedFile]:
        """The request's files, durable and final (``kept``), once the body has ended."""
        if not self._ended:
            raise BadRequest("the multipart body ended before its closing boundary")
        await kept(self.files, self.fsync)
        return self.files

    def abort(self) -> None:
        """Remove everything this request wrote: partial and completed files alike."""
        if self._sink is not None:
            self._sink.abort()
        for received in self.files:
            received.path.unlink(missing_ok=True)
        self.files.clear()

    # -- parser callbacks ----------------------------------------------------------------------

    def _begin(self) -> None:
        self._headers, self._sink, self._field = {}, None, None
        self._text.clear()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._field = options.get(b"name")
        if self._field not in FILE_FIELDS:
            return
        raw_name = options.get(b"filename")
        filename = raw_name.decode("utf-8", "replace") if raw_name else None
        self._sink = Sink(self.folder, self.max_file_size, filename)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(memoryview(data)[start:end])
            return
        self._other_bytes += end - start
        if self._other_bytes > MAX_OTHER_FIELDS:
            raise BadRequest("form fields other than 'file' exceed 1 MiB")
        if self._field in TEXT_FIELDS:
            self._text.extend(data[start:end])

    def _part_end(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            if self._field in TEXT_FIELDS:
                self.fields[self._field.decode()] = self._text.decode("utf-8", "replace")
            return
        if sink.too_large:
            self.refused.append(sink.refusal())
            return
        self.files.append(sink.close())

    def _end(self) -> None:
        self._ended = True


async def receive_raw(
    chunks: AsyncIterator[bytes], folder: Path, max_file_size: int, fsync: bool, filename: str
) -> ReceivedFile:
    """Stream a raw request body (seed 002's upload) to disk as one file."""
    sink = Sink(folder, max_file_size, filename)
    try:
        async for chunk in chunks:
            sink.write(chunk)
            if sink.too_large:
                raise FileTooLarge(sink.refusal().message)
        received = sink.close()
    except BaseException:
        sink.abort()
        raise
    try:
        await kept([received], fsync)
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    return received


def keep(received: ReceivedFile, fsync: bool) -> None:
    """Make a complete file durable (fsync, when ``fsync``) and final: ``{upload_id}.dcm``,
    which ``received.path`` then names; blocking."""
    if fsync:
        fd = os.open(received.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    final = received.path.with_name(f"{received.upload_id}.dcm")
    os.replace(received.path, final)
    received.path = final


async def kept(files: list[ReceivedFile], fsync: bool) -> None:
    """``keep`` each file: when they are fsynced, each in a thread of its own, all at once (the
    file system then writes them in one journal commit or a few, not one each); else on the
    loop (a rename). Every one is done or has failed before this returns or raises."""
    if not fsync:
        for received in files:
            keep(received, fsync)
        return
    work = asyncio.gather(
        *(asyncio.to_thread(keep, received, fsync) for received in files), return_exceptions=True
    )
    try:
        outcomes = await asyncio.shield(work)
    except asyncio.CancelledError:  # the client went away: the threads still run, and must be
        await work  # done before the caller removes the files (a rename after would leave one)
        raise
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
