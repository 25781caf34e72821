"""Slow and greedy clients against the gateway served by uvicorn as in production
(``served_gateway``: ``shared.http_limits``, ``api_gateway.body_deadline``), over real sockets:
none of them starves a normal client, and the limits do not refuse a slow but honest one.

The timeouts are a second here (the defaults are 10 s and 30 s) to keep every test short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(30)

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MIN_RATE = 1000  # bytes/s


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {
        "HTTP_HEADER_TIMEOUT_S": HEADER_TIMEOUT_S,
        "HTTP_BODY_READ_TIMEOUT_S": BODY_TIMEOUT_S,
        "HTTP_BODY_MIN_RATE": MIN_RATE,
    }


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connection(base: str) -> AsyncIterator[Connection]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection, which must be ``within``."""
    data = b""
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` a byte at a time, one every ``every_s``, until done or cut off."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every_s)


async def answers_at_once(base: str, path: str = "/health", *held: asyncio.StreamReader) -> None:
    """A normal request is answered while the slow or greedy clients ``held`` are still being
    held: not after their deadlines let it through (a causal check, not a timed one)."""
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.get(path)
    assert answer.status_code == 200, answer.text
    assert not any(reader.at_eof() for reader in held), f"{path} waited for the slow ones"


def rss_bytes() -> int:
    """This process's resident memory now (the gateway under test runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def leftovers(uploads: Path) -> list[str]:
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


async def poll(check: Any, within: float) -> None:
    """Wait until ``check()`` is true, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


# -- the request's line and headers ------------------------------------------------------------


async def test_a_slowloris_is_answered_408_after_the_header_timeout_and_starves_no_one(
    served_gateway: str,
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 1000
    async with connection(served_gateway) as (reader, writer):
        began = time.monotonic()
        sending = asyncio.create_task(trickle(writer, head, 0.3))
        await answers_at_once(served_gateway, "/health", reader)
        answer = await until_closed(reader, HEADER_TIMEOUT_S + 2)
        took = time.monotonic() - began
        sending.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"connection: close" in answer
    assert b'"type":"/problems/request-timeout"' in answer
    assert HEADER_TIMEOUT_S - 0.1 < took < HEADER_TIMEOUT_S + 3  # its deadline, not later
    await answers_at_once(served_gateway, "/ready")


async def test_headers_sent_slowly_within_the_timeout_are_served(served_gateway: str) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    every = HEADER_TIMEOUT_S * 0.6 / len(head)  # the whole head in 0.6 of the timeout
    async with connection(served_gateway) as (reader, writer):
        await trickle(writer, head, every)
        answer = await until_closed(reader, 5)
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_hundreds_of_idle_or_half_sent_connections_do_not_stop_a_request(
    served_gateway: str,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(connection(served_gateway)) for _ in range(150)]
        half = [await stack.enter_async_context(connection(served_gateway)) for _ in range(150)]
        for _, writer in half:
            writer.write(b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Partial: ")
            await writer.drain()
        readers = [r for r, _ in idle + half]
        await answers_at_once(served_gateway, "/health", *readers)
        await answers_at_once(served_gateway, "/ready", *readers)
        within = HEADER_TIMEOUT_S + 3  # from now: every one closed by its own deadline
        quiet = await asyncio.gather(*(until_closed(r, within) for r, _ in idle))
        refused = await asyncio.gather(*(until_closed(r, within) for r, _ in half))
    assert set(quiet) == {b""}  # a connection that asked nothing is closed without a word
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in refused)
    await answers_at_once(served_gateway)


@pytest.mark.parametrize("gateway_env", [{"HTTP_MAX_CONNECTIONS": 50, "HTTP_HEADER_TIMEOUT_S": 1}])
async def test_past_max_connections_a_request_is_shed_with_503_not_kept_waiting(
    served_gateway: str,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connection(served_gateway)) for _ in range(60)]
        async with httpx.AsyncClient(base_url=served_gateway) as http:
            shed = await http.get("/health")
        assert shed.status_code == 503
        assert not any(r.at_eof() for r, _ in held)  # answered while they are all still held
        # the idle ones are closed by the header deadline: the gateway serves again
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 3
        while True:
            async with httpx.AsyncClient(base_url=served_gateway) as http:
                if (await http.get("/health")).status_code == 200:
                    break
            assert time.monotonic() < deadline, "still 503 after the idle connections' deadline"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"X-Big: " + b"a" * (1 << 20) + b"\r\n", id="one 1 MiB header"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), id="10000 headers"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(150)), id="150 headers"),
    ],
)
async def test_a_head_too_large_is_431(served_gateway: str, head: bytes) -> None:
    async with connection(served_gateway) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: gateway\r\n" + head + b"\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await until_closed(reader, 5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b'"type":"/problems/header-fields-too-large"' in answer
    await answers_at_once(served_gateway, "/ready")


async def test_an_endless_header_is_refused_without_the_process_growing(
    served_gateway: str,
) -> None:
    before = peak = rss_bytes()
    sent = 0
    mib = b"a" * (1 << 20)
    async with connection(served_gateway) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            while sent < 64 << 20:
                writer.write(mib)
                await writer.drain()
                sent += len(mib)
                peak = max(peak, rss_bytes())
        grown = peak - before
        assert grown < 16 << 20, f"grew {grown >> 20} MiB while {sent >> 20} MiB were sent"
        answer = await until_closed(reader, HEADER_TIMEOUT_S + 2)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    await answers_at_once(served_gateway, "/ready")


# -- the request's body ------------------------------------------------------------------------


def upload_head(kind: str, length: int) -> tuple[bytes, bytes]:
    """The head of an upload of ``length`` bytes, and what precedes the file's bytes in its body."""
    if kind == "raw":
        headers = b"Content-Type: application/dicom\r\nX-File-Name: slow.dcm\r\n"
        preamble = b""
    else:
        headers = b"Content-Type: multipart/form-data; boundary=slow\r\n"
        preamble = (
            b'--slow\r\nContent-Disposition: form-data; name="file"; filename="slow.dcm"\r\n'
            b"Content-Type: application/dicom\r\n\r\n"
        )
    head = b"POST /upload HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n" + headers
    return head + b"Content-Length: %d\r\n\r\n" % (len(preamble) + length), preamble


@pytest.mark.parametrize("kind", ["raw", "multipart"])
async def test_a_trickled_upload_is_408_and_leaves_no_file(
    served_gateway: str, uploads: Path, kind: str
) -> None:
    head, preamble = upload_head(kind, 1_000_000)
    async with connection(served_gateway) as (reader, writer):
        writer.write(head + preamble + b"\0" * 1000)  # then a byte every 0.2 s: 5 bytes/s
        await writer.drain()
        sending = asyncio.create_task(trickle(writer, b"\0" * 1000, 0.2))
        await poll(lambda: any(n.endswith(".part") for n in leftovers(uploads)), 5)
        await answers_at_once(served_gateway, "/health", reader)
        answer = await until_closed(reader, BODY_TIMEOUT_S + 1000 / MIN_RATE + 3)
        sending.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b'"type":"/problems/request-timeout"' in answer
    assert leftovers(uploads) == []  # the 408 comes after the route removed what it wrote
    await answers_at_once(served_gateway, "/ready")


async def test_a_body_that_stops_is_408_and_leaves_no_file(
    served_gateway: str, uploads: Path
) -> None:
    head, preamble = upload_head("raw", 1_000_000)
    async with connection(served_gateway) as (reader, writer):
        writer.write(head + preamble + b"\0" * 50_000)  # and nothing more, ever
        await writer.drain()
        began = time.monotonic()
        answer = await until_closed(reader, BODY_TIMEOUT_S + 50_000 / MIN_RATE + 3)
        took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert took < BODY_TIMEOUT_S + 3  # the per-read wait, however much came before
    assert leftovers(uploads) == []


async def test_a_slow_but_steady_upload_is_taken(served_gateway: str, uploads: Path) -> None:
    """100 KB/s, a tenth of a second between chunks: far above the minimum rate."""
    data = b"\0" * 200_000
    head, preamble = upload_head("raw", len(data))
    async with connection(served_gateway) as (reader, writer):
        writer.write(head + preamble)
        for start in range(0, len(data), 10_000):
            writer.write(data[start : start + 10_000])
            await writer.drain()
            await asyncio.sleep(0.1)
        answer = await until_closed(reader, 10)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
    assert [n for n in leftovers(uploads) if n.endswith(".dcm")] != []
    assert [n for n in leftovers(uploads) if n.endswith(".part")] == []


async def test_a_body_still_coming_after_its_answer_is_cut_after_the_header_timeout(
    served_gateway: str,
) -> None:
    """A route that answers before reading the body (here: no file name) does not keep the
    connection for as long as the client trickles the rest."""
    head = b"POST /upload HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/dicom\r\n"
    async with connection(served_gateway) as (reader, writer):
        writer.write(head + b"Content-Length: 1000000\r\n\r\n" + b"\0" * 100)
        await writer.drain()
        sending = asyncio.create_task(trickle(writer, b"\0" * 1000, 0.2))
        began = time.monotonic()
        answer = await until_closed(reader, HEADER_TIMEOUT_S + 3)
        took = time.monotonic() - began
        sending.cancel()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert took > HEADER_TIMEOUT_S - 0.1  # the answer first; the connection ends later
