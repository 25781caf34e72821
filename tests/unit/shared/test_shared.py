"""The shared package's pure parts: logging, settings errors, error texts, job records."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from shared import redis_names as names
from shared.errors import PermanentError, safe_error
from shared.events import (
    EVENT_TYPES,
    STAGES,
    STREAM_OF_TYPE,
    FileRef,
    FileRejected,
    Reason,
    StageStarted,
    parse_event,
    type_of,
)
from shared.files import SMALL_FILE, is_small, run_blocking
from shared.jobs import RANK, JobStatus
from shared.logging import configure_logging


def test_log_lines_are_json_with_the_service_and_no_exception_text(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test-service", "INFO", "json")
    try:
        raise ValueError("Doe^Jane")  # a library error quoting a patient name
    except ValueError:
        structlog.get_logger().exception("thing.failed")
        logging.getLogger("uvicorn.error").exception("server.failed")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["thing.failed", "server.failed"]
    for line in lines:
        assert line["service"] == "test-service"
        assert line["error"] == "ValueError"
        assert "Doe" not in json.dumps(line)


def test_safe_error_keeps_our_words_and_drops_a_librarys() -> None:
    assert safe_error(PermanentError("the bucket does not exist")) == "the bucket does not exist"
    assert safe_error(ValueError("Invalid value 'Doe^Jane'")) == "ValueError"
    assert safe_error(OSError(28, "No space left on device")) == "OSError: ENOSPC"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAX_FILE_SIZE": "-1"}, "configuration error: MAX_FILE_SIZE:"),
        ({"REDIS_URL": "not a url"}, "configuration error: REDIS_URL:"),
        ({"GATEWAY_PORT": "99999"}, "configuration error: GATEWAY_PORT:"),
    ],
)
def test_a_bad_setting_stops_the_service_with_one_line_naming_it(
    env: dict[str, str], expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api_gateway"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(expected)


def test_events_round_trip_through_their_json() -> None:
    event = FileRejected(
        upload_id=uuid.uuid4(),
        file=FileRef(path="/u/x.dcm", sha256="0" * 64, size=3),
        reasons=[Reason(code="not-dicom", message="no DICM prefix")],
    )
    assert parse_event(event.model_dump_json()) == event


def test_every_state_ranks_forward_and_final_states_rank_last() -> None:
    order = ["accepted", "validating", "validated", "describing", "described", "uploading"]
    assert [RANK[s] for s in order] == sorted(RANK[s] for s in order)
    assert RANK["archived"] == RANK["rejected"] == RANK["failed"] > RANK["uploading"]


def test_status_timings_come_from_state_times_and_a_rejection_ends_validation() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    at = {"accepted": 0, "validating": 5, "rejected": 12}
    h = {f"at:{s}": (t0 + timedelta(milliseconds=ms)).isoformat() for s, ms in at.items()}
    h |= {"state": "rejected", "created_at": h["at:accepted"], "updated_at": h["at:rejected"]}
    h["reasons"] = json.dumps([{"code": "not-dicom", "message": "m"}])
    status = JobStatus.from_hash(uuid.uuid4(), h)
    assert status.status == "rejected"
    assert status.details["timings_ms"] == {
        "queued_validating": 5.0,
        "validating": 7.0,
        "total": 12.0,
    }
    assert status.details["reasons"] == [{"code": "not-dicom", "message": "m"}]


@pytest.mark.parametrize(
    ("targets", "env", "expected"),
    [
        ("local,s3", {}, "configuration error: S3_BUCKET:"),
        ("local,gcs", {}, "configuration error: GCS_BUCKET:"),
        ("dicomweb", {}, "configuration error: DICOMWEB_URL:"),
        ("azure", {"AZURE_CONTAINER": "c"}, "configuration error: "),
        ("local,ftp", {}, "configuration error: UPLOAD_TARGETS:"),
    ],
)
def test_an_incomplete_target_stops_the_uploader_at_start_naming_the_variable(
    targets: str, env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "uploader_service"],
        env={"PATH": "/usr/bin:/bin", "UPLOAD_TARGETS": targets, **env},
        cwd=tmp_path,  # no .env
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(expected)


@pytest.mark.parametrize(
    ("size", "inline"), [(1024, True), (SMALL_FILE, True), (SMALL_FILE + 1, False)]
)
async def test_blocking_work_on_a_small_file_runs_inline_and_on_a_large_one_in_a_thread(
    size: int, inline: bool
) -> None:
    loop_thread = threading.get_ident()
    ran_in = await run_blocking(threading.get_ident, inline=is_small(size))
    assert (ran_in == loop_thread) is inline


def test_each_event_names_its_stream_and_state_once_and_the_tables_follow() -> None:
    for cls in EVENT_TYPES:
        assert cls.published_on in names.TOPOLOGY, cls.__name__
        assert STREAM_OF_TYPE[type_of(cls)] == cls.published_on
        assert cls.leads_to is None or cls.leads_to in RANK, cls.__name__
    assert len(STREAM_OF_TYPE) == len(EVENT_TYPES)  # one type per class, none left out
    assert set(names.TOPOLOGY) == {cls.published_on for cls in EVENT_TYPES}


def test_a_stage_is_named_as_its_consumer_group_everywhere() -> None:
    assert set(STAGES) == {names.GROUP_VALIDATOR, names.GROUP_DESCRIPTOR, names.GROUP_UPLOADER}
    upload_id = uuid.uuid4()
    started = StageStarted(upload_id=upload_id, stage="descriptor")
    assert started.resulting_state() == "describing"
    # an entry written when a stage start named its working state reads as the stage
    old = started.model_dump_json().replace('"descriptor"', '"describing"')
    assert parse_event(old) == started


YIELDING = """
import json, os, threading
from shared.service import yield_cpu
from shared.settings import ServiceSettings

class Stage(ServiceSettings):
    worker_nice: int = {nice}
    worker_sched: str = "{sched}"

early = threading.Event()
threading.Thread(target=early.wait, daemon=True).start()  # as a library's pool, at import
yield_cpu(Stage())
late = threading.Event()
threading.Thread(target=late.wait, daemon=True).start()
threads = [int(t) for t in os.listdir("/proc/self/task")]
print(json.dumps([(os.getpriority(os.PRIO_PROCESS, t), os.sched_getscheduler(t)) for t in threads]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's per-thread priorities")
@pytest.mark.parametrize(
    ("nice", "sched", "policy"), [(19, "idle", "SCHED_IDLE"), (7, "normal", "SCHED_OTHER")]
)
def test_a_worker_lowers_every_thread_it_has_and_the_ones_it_starts_after(
    nice: int, sched: str, policy: str
) -> None:
    """Linux keeps niceness and policy per thread: a thread started before ``yield_cpu``
    (numpy's OpenBLAS pool, at import) is lowered too; one started after inherits it."""
    done = subprocess.run(
        [sys.executable, "-c", YIELDING.format(nice=nice, sched=sched)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    threads = json.loads(done.stdout)
    start = os.getpriority(os.PRIO_PROCESS, 0)  # the child started at this test's niceness
    assert len(threads) == 3
    assert threads == [[min(start + nice, 19), getattr(os, policy)]] * 3
