"""The gateway over HTTP: requests, problem answers as errors, and server-sent events."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from dicomflow_cli import __version__

DEFAULT_URL = "http://localhost:8000"
FINAL = frozenset({"archived", "rejected", "failed"})


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2)."""


class GatewayUnreachable(Exception):
    """Nothing answers at the gateway's address (exit code 2)."""


class Problem(Exception):
    """The gateway answered with an error; its message is one line."""

    def __init__(self, status: int, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.body = status, detail, body or {}


def problem_of(response: httpx.Response) -> Problem:
    """The error an answer of status 400 or more stands for (problem+json or not)."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    detail = body.get("detail") or body.get("title") or body.get("error")
    if not detail:
        text = " ".join(response.text.split())[:200]
        detail = text or response.reason_phrase or "error"
    return Problem(response.status_code, str(detail), body)


@dataclass
class ServerEvent:
    """One block of an event stream; ``event`` is "" for blocks that only set an id, a retry
    or carry a comment (a ping)."""

    event: str = ""
    id: str | None = None
    data: str = ""


def parse_events(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """The blocks of a ``text/event-stream``, as the HTML standard reads them."""
    block, seen = ServerEvent(), False
    for line in lines:
        if not line:
            if seen:
                if block.data and not block.event:
                    block.event = "message"
                yield block
            block, seen = ServerEvent(), False
            continue
        seen = True
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            block.data = f"{block.data}\n{value}" if block.data else value
        elif name == "event":
            block.event = value
        elif name == "id" and "\0" not in value:
            block.id = value


class Gateway:
    """One gateway, reached over a pooled HTTP client (safe to share between threads)."""

    def __init__(self, url: str, connections: int = 16, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"the gateway URL must start with http:// or https://: {url}")
        headers = {"User-Agent": f"dicomflow-cli/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=connections),
            headers=headers,
        )

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """An answer of any status; GatewayUnreachable when nothing answers."""
        return self._send(self.http.build_request(method, path, **kw))

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return self.http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self.unreachable(exc) from None

    def _open(self, request: httpx.Request) -> httpx.Response:
        """A streamed answer below 400 (close it when done), else the Problem it is."""
        response = self._send(request, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            raise problem_of(response)
        return response

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON of a successful answer, or the Problem it is."""
        response = self.request(method, path, **kw)
        if response.status_code >= 400:
            raise problem_of(response)
        return response.json()

    def unreachable(self, exc: Exception) -> GatewayUnreachable:
        why = str(exc) or type(exc).__name__
        return GatewayUnreachable(f"cannot reach the gateway at {self.url} ({why})")

    def status(self, upload_id: str, wait: str | None = None, timeout: float = 30) -> Any:
        """``GET /status/{id}``, long-polled with ``wait``."""
        if wait is None:
            return self.json("GET", f"/status/{upload_id}")
        return self.json(
            "GET",
            f"/status/{upload_id}",
            params={"wait": wait, "timeout": timeout},
            timeout=httpx.Timeout(timeout + 30, connect=5.0),
        )

    def events(self, params: dict[str, str], last_event_id: str | None = None) -> EventStream:
        """Open ``GET /events`` (close the answer when done)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        request = self.http.build_request(
            "GET",
            "/events",
            params=params,
            headers=headers,
            timeout=httpx.Timeout(5.0, read=45.0),  # a ping comes every 15 s
        )
        return EventStream(self._open(request))

    def download(self, path: str, dest: str) -> tuple[int, str]:
        """Stream an answer to ``dest`` ("-": standard output), written whole or not at all;
        its size and content type."""
        request = self.http.build_request("GET", path, timeout=httpx.Timeout(30.0, connect=5.0))
        with contextlib.closing(self._open(request)) as response:
            kind = response.headers.get("content-type", "")
            if dest == "-":
                return _copy(response, os.fdopen(os.dup(1), "wb")), kind
            target = Path(dest)
            fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                size = _copy(response, os.fdopen(fd, "wb"))
                os.chmod(temp, 0o666 & ~_umask())  # as a file the user creates, not mkstemp's 0600
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            return size, kind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy(response: httpx.Response, out: IO[bytes]) -> int:
    size = 0
    with out:
        for chunk in response.iter_bytes(1 << 20):
            out.write(chunk)
            size += len(chunk)
    return size


class EventStream:
    """An open event stream: its blocks, and closing it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __iter__(self) -> Iterator[ServerEvent]:
        return parse_events(self.response.iter_lines())

    def close(self) -> None:
        self.response.close()
