"""The multipart parsers on generated, mutated and random bodies, split into random chunks.

- ``POST /upload``'s multipart/form-data receiver (``api_gateway.receive``) and STOW-RS's
  multipart/related one (``api_gateway.dicomweb.stow``): a well-formed body gives exactly the
  files that were sent, byte for byte, whatever the chunks; any body gives files or the
  project's 4xx errors (``BadRequest``, ``UnsupportedMediaType`` for the Content-Type), never
  another exception; and after a failure the route's clean-up (``abort``) leaves nothing in
  the uploads folder, nor a success any ``.part`` file.
- WADO-RS answers read by ``shared.multipart_related.PartReader``: the parts' bytes as sent,
  or its ``PermanentError`` (malformed) or ``RetryableError`` (cut off).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_gateway.dicomweb import stow
from api_gateway.receive import MultipartReceiver, ReceivedFile, boundary_of
from hypothesis import given, note
from hypothesis import strategies as st

from shared.errors import AppError, PermanentError, RetryableError
from shared.multipart_related import Mark, PartReader
from tests.fuzz.bounds import bounded
from tests.fuzz.conftest import cases

# RFC 2046 5.1.1: a boundary is 1 to 70 of these, not ending in a space
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
TOKEN = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'+_-.")
LATIN_1 = st.characters(max_codepoint=255)  # a header as Starlette decodes it
NAMES = "abcdefghijklmnopqrstuvwxyz0123456789_-. "


@dataclass(frozen=True)
class Part:
    name: str  # the form field (form-data) or "" (related)
    content: bytes
    filename: str | None = None
    content_type: str | None = None


boundaries = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))


def contents(boundary: str) -> st.SearchStrategy[bytes]:
    """Bytes that often look like a delimiter, but never contain this one."""
    near = st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"\r", b"\n"]).map(
        lambda head: head + boundary.encode()[: max(len(boundary) - 1, 0)]
    )
    pieces = st.lists(st.binary(max_size=64) | near, max_size=6).map(b"".join)
    return pieces.filter(lambda c: b"\r\n--" + boundary.encode() not in c)


def form_body(boundary: str, parts: list[Part], preamble: bytes = b"") -> bytes:
    out = [preamble]
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        headers = f"Content-Disposition: {disposition}\r\n"
        if part.content_type:
            headers += f"Content-Type: {part.content_type}\r\n"
        out.append(f"--{boundary}\r\n{headers}\r\n".encode() + part.content + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def related_body(boundary: str, parts: list[Part], preamble: bytes = b"") -> bytes:
    out = [preamble]
    for part in parts:
        headers = f"Content-Type: {part.content_type}\r\n" if part.content_type else ""
        out.append(f"--{boundary}\r\n{headers}\r\n".encode() + part.content + b"\r\n")
    out.append(f"--{boundary}--".encode())
    return b"".join(out)


def header_value(boundary: str) -> str:
    return boundary if set(boundary) <= TOKEN else f'"{boundary}"'


@st.composite
def form_requests(draw: st.DrawFn) -> tuple[str, list[Part], bytes]:
    """A well-formed multipart/form-data request: Content-Type, its parts, its body."""
    boundary = draw(boundaries)
    fields = st.sampled_from(["file", "files", "label", "study", "other"])
    names = st.none() | st.text(NAMES, min_size=1, max_size=20)
    kinds = st.sampled_from([None, "application/dicom", "application/octet-stream"])
    parts = draw(
        st.lists(st.builds(Part, fields, contents(boundary), names, kinds), min_size=1, max_size=5)
    )
    preamble = draw(st.sampled_from([b"", b"preamble\r\n"]))
    content_type = f"multipart/form-data; boundary={header_value(boundary)}"
    return content_type, parts, form_body(boundary, parts, preamble)


@st.composite
def related_requests(draw: st.DrawFn) -> tuple[str, list[Part], bytes]:
    boundary = draw(boundaries)
    kinds = st.sampled_from([None, "application/dicom", "text/plain"])
    parts = draw(
        st.lists(st.builds(Part, st.just(""), contents(boundary), st.none(), kinds), max_size=4)
    )
    preamble = draw(st.sampled_from([b"", b"\r\n", b"preamble\r\n"]))
    content_type = f'multipart/related; type="application/dicom"; boundary={header_value(boundary)}'
    return content_type, parts, related_body(boundary, parts, preamble)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """The body cut where the network might cut it, empty chunks included."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@st.composite
def damaged(draw: st.DrawFn, body: bytes) -> bytes:
    """The body with a few bytes flipped, cut, removed, repeated or added."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "remove", "repeat", "add"]))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "remove":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16) | st.just(b"\r\n--"))
    return bytes(data)


@pytest.fixture(scope="module")
def uploads(workdir: Path) -> Iterator[Path]:
    folder = workdir / "multipart"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def receive(
    receiver_of: type[MultipartReceiver],
    content_type: str,
    chunks: list[bytes],
    folder: Path,
    max_size: int,
) -> tuple[MultipartReceiver, list[ReceivedFile]] | AppError:
    """What the routes do: parse the Content-Type, feed every chunk, finish; on an error,
    remove what was written (their ``undone_on_failure``) and give the error."""
    receiver: MultipartReceiver | None = None
    try:
        if receiver_of is stow.StowReceiver:
            boundary = stow.boundary_of(content_type)
        else:
            boundary = boundary_of(content_type)
        receiver = receiver_of(boundary, folder, max_size, False)
        for chunk in chunks:
            receiver.feed(chunk)
        return receiver, asyncio.run(receiver.finish())
    except AppError as exc:
        if receiver is not None:
            receiver.abort()
        return exc


def files_on_disk(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def check_consistent(outcome: object, folder: Path) -> list[bytes]:
    """Whatever the body: either nothing is left (an error), or exactly the files received,
    each its own size and digest, and no part file."""
    if isinstance(outcome, AppError):
        assert outcome.status in (400, 413, 415), outcome
        assert files_on_disk(folder) == [], "a failed request left files behind"
        return []
    assert isinstance(outcome, tuple)
    _, files = outcome
    assert files_on_disk(folder) == sorted(f.path for f in files)
    data = []
    for received in files:
        content = received.path.read_bytes()
        assert len(content) == received.size
        assert hashlib.sha256(content).hexdigest() == received.sha256
        assert received.head == content[:132]
        data.append(content)
    for path in files_on_disk(folder):
        path.unlink()
    return data


# --- multipart/form-data (POST /upload) ------------------------------------------------------


@given(form_requests(), st.data())
@cases("multipart form-data")
def test_form_data_gives_back_every_file_as_sent(
    uploads: Path, request_: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    content_type, parts, body = request_
    chunks = data.draw(chunked(body))
    max_size = data.draw(st.sampled_from([1 << 20, 64]))
    with bounded("multipart form-data", seconds=5, memory_mb=64, case=(content_type, chunks)):
        outcome = receive(MultipartReceiver, content_type, chunks, uploads, max_size)
    note(repr(outcome))
    assert not isinstance(outcome, AppError), outcome
    receiver, files = outcome
    sent = [p for p in parts if p.name in ("file", "files")]
    kept = [p for p in sent if len(p.content) <= max_size]
    assert check_consistent(outcome, uploads) == [p.content for p in kept]
    assert [f.filename for f in files] == [p.filename for p in kept]
    assert [r.name for r in receiver.refused] == [p.filename for p in sent if p not in kept]
    for field in ("label", "study"):
        values = [p.content for p in parts if p.name == field]
        if values:
            assert receiver.fields[field] == values[-1].decode("utf-8", "replace")


def receive_damaged(
    target: str,
    receiver: type[MultipartReceiver],
    uploads: Path,
    request_: tuple[str, list[Part], bytes],
    data: st.DataObject,
) -> None:
    """A request damaged (or replaced by random bytes, its Content-Type too), in random
    chunks: files as sent, or a bad request, and nothing left behind either way."""
    content_type, _, body = request_
    body = data.draw(damaged(body) | st.binary(max_size=512))
    content_type = data.draw(st.just(content_type) | st.text(LATIN_1, max_size=80))
    chunks = data.draw(chunked(body))
    with bounded(target, seconds=5, memory_mb=64, case=(content_type, chunks)):
        outcome = receive(receiver, content_type, chunks, uploads, 1 << 20)
    check_consistent(outcome, uploads)


@given(form_requests(), st.data())
@cases("multipart form-data")
def test_form_data_damaged_or_random_is_files_or_a_bad_request(
    uploads: Path, request_: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    receive_damaged("multipart form-data", MultipartReceiver, uploads, request_, data)


# --- multipart/related (STOW-RS) ----------------------------------------------------------------


@given(related_requests(), st.data())
@cases("STOW multipart/related")
def test_stow_gives_back_every_part_as_sent(
    uploads: Path, request_: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    content_type, parts, body = request_
    chunks = data.draw(chunked(body))
    with bounded("STOW multipart/related", seconds=5, memory_mb=64, case=(content_type, chunks)):
        outcome = receive(stow.StowReceiver, content_type, chunks, uploads, 1 << 20)
    note(repr(outcome))
    if not parts:  # "--b--" alone: a body with no part, which the route answers 400
        assert isinstance(outcome, AppError) or outcome[1] == []
        check_consistent(outcome, uploads)
        return
    assert not isinstance(outcome, AppError), outcome
    receiver, files = outcome
    assert check_consistent(outcome, uploads) == [p.content for p in parts]
    assert isinstance(receiver, stow.StowReceiver)
    wrong = {
        f.upload_id for f, p in zip(files, parts, strict=True) if p.content_type == "text/plain"
    }
    assert receiver.wrong_type == wrong


@given(related_requests(), st.data())
@cases("STOW multipart/related")
def test_stow_damaged_or_random_is_parts_or_a_bad_request(
    uploads: Path, request_: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    receive_damaged("STOW multipart/related", stow.StowReceiver, uploads, request_, data)


# --- multipart/related answers (WADO-RS, read by the uploader and the retrieval) ----------------


def read_parts(boundary: str, chunks: list[bytes]) -> list[bytes]:
    reader = PartReader(boundary)
    parts: list[bytes] = []
    current: list[bytes] | None = None
    for chunk in chunks:
        for event in reader.feed(chunk):
            if event is Mark.PART_START:
                current = []
            elif event is Mark.PART_END:
                assert current is not None
                parts.append(b"".join(current))
                current = None
            else:
                assert current is not None, "data outside a part"
                current.append(event)
    reader.close()
    return parts


@given(related_requests(), st.data())
@cases("multipart/related reader")
def test_part_reader_gives_back_the_parts_or_its_errors(
    request_: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    content_type, parts, body = request_
    boundary = content_type.split("boundary=", 1)[1].strip('"')
    intact = data.draw(st.booleans())
    if not intact:
        body = data.draw(damaged(body) | st.binary(max_size=512))
    chunks = data.draw(chunked(body))
    with bounded("multipart/related reader", seconds=5, memory_mb=64, case=(boundary, chunks)):
        try:
            got = read_parts(boundary, chunks)
        except (PermanentError, RetryableError):
            assert not intact, "a well-formed answer was refused"
            return
    if intact:
        assert got == [p.content for p in parts]


@given(st.text(st.characters(max_codepoint=255), max_size=120))  # as HTTP decodes it
@cases("multipart form-data")
def test_any_content_type_is_a_boundary_or_a_4xx(content_type: str) -> None:
    for parse in (boundary_of, stow.boundary_of):
        with bounded("multipart form-data", seconds=2, memory_mb=16):
            try:
                boundary: bytes | AppError = parse(content_type)
            except AppError as exc:
                boundary = exc
        if isinstance(boundary, AppError):
            assert boundary.status in (400, 415)
        else:
            assert boundary
