"""How exceptions are described in logs: what and where, never what they quoted."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import structlog
from fastapi import FastAPI

from shared.errors import RetryableError, described, frames
from shared.logging import configure_logging
from shared.problems import install


def parse(name: str) -> None:
    secret = name.upper()  # a local value that must not be logged either
    raise ValueError(f"cannot read {secret}")


def read(name: str) -> None:
    parse(name)


def raised() -> BaseException:
    try:
        read("Doe^Jane")
    except ValueError as exc:
        return exc
    raise AssertionError("read did not raise")


def test_frames_say_file_line_and_function_innermost_last() -> None:
    found = frames(raised())
    assert [f["function"] for f in found] == ["raised", "read", "parse"]
    assert found[-1] == {
        "file": "test_errors.py",
        "line": parse.__code__.co_firstlineno + 2,
        "function": "parse",
    }
    assert "DOE" not in json.dumps(found).upper()


def test_frames_keep_the_innermost_when_there_are_many() -> None:
    assert [f["function"] for f in frames(raised(), limit=2)] == ["read", "parse"]


def test_a_frame_in_a_package_is_named_from_the_package_down() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads("{Doe^Jane")
    assert frames(caught.value)[-1]["file"] == "json/decoder.py"


def test_our_errors_are_described_by_their_words_others_by_where_they_came_from() -> None:
    assert described(RetryableError("the archive is not mounted")) == {
        "error": "the archive is not mounted"
    }
    library = described(raised())
    assert library["error"] == "ValueError"
    assert library["frames"] == frames(raised())
    assert "Doe" not in json.dumps(library)


def test_a_logged_exception_keeps_its_frames_and_drops_its_message(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test-service", "INFO", "json")
    try:
        read("Doe^Jane")
    except ValueError:
        structlog.get_logger().exception("thing.failed")
        logging.getLogger("uvicorn.error").exception("server.failed")
    err = capfd.readouterr().err
    for line in map(json.loads, err.splitlines()):
        assert line["error"] == "ValueError"
        assert [f["function"] for f in line["frames"]][-2:] == ["read", "parse"]
    assert "Doe" not in err
    assert "DOE" not in err


async def test_a_request_that_crashes_logs_where_and_answers_a_bare_500(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test-service", "INFO", "json")
    app = FastAPI()
    install(app)

    @app.get("/study")
    async def study() -> None:
        read("Doe^Jane")

    # Starlette raises the error again once the 500 is sent, for the server to see
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/study")

    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json() == {
        "type": "/problems/internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "an unexpected error; it has been logged",
        "instance": "/study",
    }
    err = capfd.readouterr().err
    [crash] = [
        line for line in map(json.loads, err.splitlines()) if line["event"] == "request.crashed"
    ]
    assert crash["error"] == "ValueError"
    *_, caller, raiser = crash["frames"]
    assert raiser == {
        "file": "test_errors.py",
        "line": parse.__code__.co_firstlineno + 2,
        "function": "parse",
    }
    assert (caller["function"], crash["frames"][-3]["function"]) == ("read", "study")
    assert "DOE" not in err.upper()
