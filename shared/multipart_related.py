"""WADO-RS answers read as they arrive: multipart/related parts as start, data and end events;
and the preamble any multipart body may start with, skipped for python-multipart."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from email.message import Message
from enum import Enum
from typing import TypeAlias

import httpx
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from shared.errors import PermanentError, RetryableError


class Mark(Enum):
    """Where a part starts (its headers read) and where it ends, around its data chunks."""

    PART_START = "part-start"
    PART_END = "part-end"


Event: TypeAlias = Mark | bytes
_MALFORMED = "dicomweb: malformed multipart response"
MAX_PREAMBLE = 64 * 1024  # bytes before the first boundary a reader is willing to skip


class Preamble:
    """What comes before a multipart body's first boundary, skipped as the chunks arrive.

    RFC 2046 5.1.1 lets a body start with a preamble, to be ignored; python-multipart's parser
    refuses one. ``skip`` gives each chunk from the first boundary on (the CRLF before it
    included, which the parser takes), and b"" while it is not in sight yet; only the last
    bytes, which may begin it, are kept between chunks. Past ``MAX_PREAMBLE`` bytes without it,
    ``too_long`` is set and the caller refuses the body.
    """

    def __init__(self, boundary: bytes | str) -> None:
        self.delimiter = b"--" + (
            boundary.encode("latin-1") if isinstance(boundary, str) else boundary
        )
        self.done = False
        self.too_long = False
        self._tail = b""
        self.skipped = 0  # bytes of preamble seen

    def skip(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        head = self._tail + chunk
        if head.startswith(self.delimiter):
            at = 0
        elif self.delimiter.startswith(head):  # may be the boundary itself, cut by the chunks
            self._tail = head
            return b""
        else:
            at = head.find(b"\r\n" + self.delimiter)
        if at < 0:
            self.skipped += len(chunk)
            self.too_long = self.skipped > MAX_PREAMBLE
            self._tail = head[-(len(self.delimiter) + 1) :]
            return b""
        self.done, self._tail = True, b""
        return head[at:]


def parts(response: httpx.Response) -> AsyncGenerator[Event, None]:
    """The parts of a streamed multipart/related response, as events while its body arrives.

    Part data is given as soon as it cannot be the start of a boundary, so memory stays at
    about one chunk whatever the size of the parts. A body cut off raises ``RetryableError``.
    """
    return _events(response, _boundary_of(response.headers.get("content-type", "")))


def _boundary_of(content_type: str) -> str:
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if (
        message.get_content_type() != "multipart/related"
        or not isinstance(boundary, str)
        or not boundary
    ):
        raise PermanentError("dicomweb: WADO-RS answered something other than multipart/related")
    return boundary


async def _events(response: httpx.Response, boundary: str) -> AsyncGenerator[Event, None]:
    reader = PartReader(boundary)
    try:
        async for chunk in response.aiter_bytes():
            for event in reader.feed(chunk):
                yield event
    except httpx.HTTPError as exc:
        raise RetryableError(f"dicomweb: the response was cut off ({type(exc).__name__})") from exc
    reader.close()


class PartReader:
    """python-multipart's streaming parser, fed chunk by chunk: each feed gives its events."""

    def __init__(self, boundary: str) -> None:
        self._events: list[Event] = []
        self._ended = False
        self._preamble = Preamble(boundary)
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_headers_finished": lambda: self._events.append(Mark.PART_START),
                    "on_part_data": lambda data, start, end: self._events.append(data[start:end]),
                    "on_part_end": lambda: self._events.append(Mark.PART_END),
                    "on_end": self._end,
                },
                max_header_count=64,  # part headers are skipped, never held, so these
                max_header_size=16 * 1024,  # limits only refuse nonsense
            )
        except FormParserError as exc:  # a boundary longer than the parser takes
            raise PermanentError(_MALFORMED) from exc

    def feed(self, chunk: bytes) -> list[Event]:
        chunk = self._preamble.skip(chunk)
        if self._preamble.too_long:
            raise PermanentError(_MALFORMED)
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise PermanentError(_MALFORMED) from exc
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        if self._preamble.skipped and not self._preamble.done:  # bytes, and no boundary at all
            raise PermanentError(_MALFORMED)
        if not self._ended:
            raise RetryableError("dicomweb: the response ended before its closing boundary")

    def _end(self) -> None:
        self._ended = True
