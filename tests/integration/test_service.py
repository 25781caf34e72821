"""The service frame: a worker that crashes says where, in the log, and never what it read."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.service import run
from shared.settings import ServiceSettings
from tests.support import free_port

pytestmark = pytest.mark.timeout(30)

PATIENT = "Doe^Jane"


def check_name(name: str) -> None:
    raise ValueError(f"Invalid value for Patient's Name: {name!r}")  # a library's own words


async def work_that_crashes() -> None:
    check_name(PATIENT)


async def test_a_crash_logs_the_frames_it_came_through_and_never_the_message(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test-service", "INFO", "json")  # to the stderr captured now
    with pytest.raises(SystemExit):
        await run(FastAPI(), ServiceSettings(), free_port(), work_that_crashes())

    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in err.splitlines()]
    [crash] = [line for line in lines if line["event"] == "service.crashed"]
    assert crash["error"] == "ValueError"
    *_, caller, raiser = crash["frames"]
    assert raiser == {
        "file": "test_service.py",
        "line": check_name.__code__.co_firstlineno + 1,
        "function": "check_name",
    }
    assert caller["function"] == "work_that_crashes"
    assert "Doe" not in out + err
    assert "Patient's Name" not in out + err
