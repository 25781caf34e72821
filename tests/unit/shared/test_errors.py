"""How exceptions are described in logs: what and where, never what they quoted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.errors import RetryableError, described, frames
from shared.logging import configure_logging


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


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level
    logging.getLogger("pydicom").disabled = False


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
