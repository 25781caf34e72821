"""WADO-RS answers read as they arrive: multipart/related parts as start, data and end events."""

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
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise PermanentError(_MALFORMED) from exc
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        if not self._ended:
            raise RetryableError("dicomweb: the response ended before its closing boundary")

    def _end(self) -> None:
        self._ended = True
