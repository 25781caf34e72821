"""The harness's crash check, read from a made-up run.py log: what counts as a death."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.system import System, run_events

STARTED = "[run] service.started name=descriptor replica=0 pid=100 port=8002 starts=1"


def system_with_log(tmp_path: Path, *lines: str) -> System:
    log = tmp_path / "system.log"
    log.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["true"])
    proc.wait()
    return System(proc, {}, tmp_path, tmp_path, None, log)  # type: ignore[arg-type]


def crashed(service: str) -> str:
    record = {"event": "service.crashed", "service": service, "error": "AttributeError"}
    return json.dumps(record | {"level": "error", "timestamp": "2026-01-01T00:00:00Z"})


def test_run_lines_are_parsed_and_other_lines_skipped() -> None:
    log = f"{STARTED}\n[run] ready: gateway http://127.0.0.1:8000\n{crashed('x')}\n"
    assert run_events(log) == [
        {
            "event": "service.started",
            "name": "descriptor",
            "replica": "0",
            "pid": "100",
            "port": "8002",
            "starts": "1",
        }
    ]


def test_a_quiet_run_and_clean_stops_are_no_deaths(tmp_path: Path) -> None:
    system = system_with_log(
        tmp_path,
        STARTED,
        "[run] service.stopped name=descriptor replica=0 pid=100 returncode=0",
    )
    assert system.unexpected_exits() == []
    system.assert_no_crash()


def test_an_exit_the_test_did_not_cause_is_a_death_restarted_or_not(tmp_path: Path) -> None:
    system = system_with_log(
        tmp_path,
        STARTED,
        crashed("descriptor-service"),
        "[run] service.exited name=descriptor replica=0 pid=100 returncode=1 restart_in_s=0.5",
        "[run] service.started name=descriptor replica=0 pid=101 port=8002 starts=2",
        "[run] service.stopped name=uploader replica=1 pid=200 returncode=-9",
    )
    assert system.unexpected_exits() == [
        "descriptor service.exited pid=100 returncode=1",
        "uploader service.stopped pid=200 returncode=-9",
        "descriptor service.crashed error=AttributeError at 2026-01-01T00:00:00Z",
    ]
    with pytest.raises(AssertionError, match=r"descriptor service\.exited pid=100"):
        system.assert_no_crash()
    system.assert_no_crash()  # each death fails one check, not every one after it


def test_the_tests_own_kills_and_announced_crashes_are_not_deaths(tmp_path: Path) -> None:
    system = system_with_log(
        tmp_path,
        "[run] service.exited name=validator replica=1 pid=300 returncode=-9 restart_in_s=0.5",
        crashed("api-gateway"),
        "[run] service.exited name=gateway replica=0 pid=400 returncode=1 restart_in_s=0.5",
        crashed("api-gateway"),
    )
    system.killed.add(300)
    system.expect_crash("gateway")
    assert system.unexpected_exits() == [
        "gateway service.crashed error=AttributeError at 2026-01-01T00:00:00Z"
    ]  # the second crash was not announced
