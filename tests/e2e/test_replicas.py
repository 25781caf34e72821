"""Two replicas of every worker stage under load, one of each SIGKILLed mid-load.

The design's "Scale beyond one machine", proved: every upload still ends ``archived``
exactly once, no stream entry is ever handled by two processes at the same time, and what
each dead replica held is taken over by a live one. The evidence is read from outside the
services: the events on the streams (tailed with XREAD while the load runs, before any trim),
the job records, the archive, Redis's pending lists, and the bus's debug lines
``delivery.started`` / ``delivery.done`` (stream, group, entry id, consumer; no patient data)
and ``delivery.reclaimed``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import redis_names as names
from testbed.series import write_ct_series
from testbed.system import WORKERS, System, log_records, start_system, stop_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(170)]

UPLOADS = 300
CONCURRENCY = 8
KILL_AFTER = 60  # uploads accepted before the replicas are killed
REPEATABLE = {"stage.started", "upload.attempted"}  # told again by each delivery


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(
        tmp_path_factory.mktemp("replicas"),
        replicas=dict.fromkeys(WORKERS, 2),
        LOG_LEVEL="DEBUG",  # the bus's delivery.started / delivery.done lines
        # No entry in two hands at once holds while a live consumer's heartbeat (every third of
        # the lease) comes in time. The workers run niced under this load, which keeps both
        # cores busy at normal priority: a lease of 1.5 s (the testbed's) is too short to say
        # so on a loaded machine; 4 s is still well below the default 15 s.
        CLAIM_IDLE_MS="4000",
    )
    yield running
    stop_system(running)


class StreamTap:
    """Every entry added to the pipeline's streams, read with XREAD as it comes (a trim can
    drop entries every group has acked; this has them first)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.last = dict.fromkeys(names.TOPOLOGY, "0-0")
        self.events: list[dict[str, Any]] = []
        self.entries: dict[str, list[str]] = defaultdict(list)  # entry ids, by stream
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._read(block=200)
            except redis.ConnectionError:
                return  # the test failed and its Redis is stopping

    def _read(self, block: int | None) -> int:
        reply = self.client.xread(self.last, count=1000, block=block)  # type: ignore[arg-type]
        read = 0
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last[stream] = entry_id
                self.entries[stream].append(entry_id)
                self.events.append(json.loads(fields["data"]))
                read += 1
        return read

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)
        while self._read(block=None):
            pass
        self.client.close()


def consumer_of(client: redis.Redis, group: str, replica: int, seconds: float = 30) -> str:
    """The consumer name run.py gave a replica of a stage (``...-<stage>-<i>``), once it has
    read from its stream: a stage at nice 19 may take a while to get there while the load the
    test runs takes the cores."""
    stream = next(s for s, groups in names.TOPOLOGY.items() if group in groups)
    deadline = time.monotonic() + seconds
    while True:
        for consumer in client.xinfo_consumers(stream, group):
            name = consumer["name"]
            if name.endswith(f"-{group}-{replica}"):
                return name
        if time.monotonic() > deadline:
            raise AssertionError(f"no consumer of replica {replica} in group {group} in {seconds}s")
        time.sleep(0.05)


def pending_of(client: redis.Redis, group: str, consumer: str) -> set[tuple[str, str]]:
    """(stream, entry id) of every entry pending for one consumer of a group."""
    held = set()
    for stream, groups in names.TOPOLOGY.items():
        if group in groups:
            for entry in client.xpending_range(stream, group, "-", "+", 10_000, consumer):
                held.add((stream, entry["message_id"]))
    return held


def kill_holding(system: System, stage: str) -> tuple[str, set[tuple[str, str]], float]:
    """SIGKILL replica 1 of a stage at a moment it holds entries; what it held, and when.

    Small files go through in milliseconds: a look at the pending list and a kill after it
    would race with the replica's ack. So the replica is frozen (SIGSTOP) for each look and
    let go (SIGCONT) when it holds nothing, until it does; then it is killed frozen."""
    client = redis.Redis.from_url(system.redis.url, decode_responses=True)  # one per thread
    consumer = consumer_of(client, stage, 1)
    pid = system.pid(stage, replica=1)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.time()
            try:
                holds = bool(pending_of(client, stage, consumer))
            except BaseException:
                os.kill(pid, signal.SIGCONT)  # never leave a frozen process behind
                raise
            if holds:
                system.kill(stage, replica=1, pid=pid)
                return consumer, pending_of(client, stage, consumer), stopped_at
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.002)
    finally:
        client.close()
    raise AssertionError(f"replica 1 of {stage} held nothing for 30s of load")


def handling_intervals(
    records: list[dict[str, Any]], killed_at: dict[str, float]
) -> tuple[dict[tuple[str, str, str], list[tuple[float, float, str]]], list[str]]:
    """From the bus's delivery.started / delivery.done lines: for each (stream, group, entry)
    the (start, end, consumer) of each handling. A handling cut by a SIGKILL ends when its
    consumer was killed; one that never ends otherwise is a problem."""
    lines: dict[tuple[str, str, str, str], list[tuple[float, str]]] = defaultdict(list)
    for record in records:
        if record.get("event") in ("delivery.started", "delivery.done"):
            key = (record["consumer"], record["stream"], record["group"], record["entry_id"])
            at = datetime.fromisoformat(record["timestamp"]).timestamp()
            lines[key].append((at, record["event"]))
    intervals: dict[tuple[str, str, str], list[tuple[float, float, str]]] = defaultdict(list)
    problems = []
    for (consumer, stream, group, entry_id), seen in lines.items():
        seen.sort()
        open_at: float | None = None
        for at, event in seen:
            if event == "delivery.started":
                if open_at is not None:  # started again before it ended: cut by the kill?
                    cut = killed_at.get(consumer)
                    if cut is None or not open_at <= cut <= at:
                        problems.append(f"{consumer} started {entry_id} twice at once")
                        cut = at
                    intervals[stream, group, entry_id].append((open_at, cut, consumer))
                open_at = at
            elif open_at is not None:
                intervals[stream, group, entry_id].append((open_at, at, consumer))
                open_at = None
        if open_at is not None:
            cut = killed_at.get(consumer)
            if cut is None or cut < open_at:
                problems.append(f"{consumer} never finished {entry_id} of {group}")
                cut = float("inf")
            intervals[stream, group, entry_id].append((open_at, cut, consumer))
    return intervals, problems


def overlaps(intervals: dict[tuple[str, str, str], list[tuple[float, float, str]]]) -> list[str]:
    """Entries whose handlings overlap in time, in whichever processes."""
    found = []
    for (stream, group, entry_id), spans in intervals.items():
        spans.sort()
        latest_end, by = spans[0][1], spans[0][2]
        for start, end, consumer in spans[1:]:
            if start < latest_end:
                found.append(f"{group} {stream} {entry_id}: {by} and {consumer}")
            if end > latest_end:
                latest_end, by = end, consumer
    return found


def test_two_replicas_of_each_stage_one_killed_mid_load_archive_every_upload_once(
    replicated: System, tmp_path: Path
) -> None:
    system = replicated
    paths = write_ct_series(tmp_path / "load", UPLOADS, seed=55, rows=64, columns=64)
    client = redis.Redis.from_url(system.redis.url, decode_responses=True)
    tap = StreamTap(system.redis.url)
    tap.thread.start()
    accepted: list[str] = []
    lock = threading.Lock()

    def send(path: Path) -> None:
        [upload_id] = system.upload(path)
        with lock:
            accepted.append(upload_id)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        sent = [pool.submit(send, path) for path in paths]
        deadline = time.monotonic() + 60
        while len(accepted) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        with ThreadPoolExecutor(len(WORKERS)) as killers:  # all at once, while the load runs
            kills = {stage: killers.submit(kill_holding, system, stage) for stage in WORKERS}
        killed = {stage: kill.result() for stage, kill in kills.items()}
        for future in sent:
            future.result()
    finals = system.wait_final(accepted, seconds=90)

    # the pending lists drain once the status service acks what it applied
    for group in WORKERS:
        deadline = time.monotonic() + 30
        while any(pending_of(client, group, c) for c in all_consumers(client, group)):
            assert time.monotonic() < deadline, f"{group} still holds entries"
            time.sleep(0.1)
    tap.finish()
    finals = {upload_id: system.status(upload_id) for upload_id in accepted}  # as they end

    # no entry in two hands at once, in any stage
    records = log_records(system.log.read_text())
    intervals, problems = handling_intervals(
        records, {consumer: at for consumer, _, at in killed.values()}
    )
    assert problems == []
    for group in ("validator", "descriptor", "uploader"):  # the status service reads batches
        handled = {(s, e) for s, g, e in intervals if g == group}
        offered = {
            (s, e) for s, ids in tap.entries.items() for e in ids if group in names.TOPOLOGY[s]
        }
        unseen = sorted(offered - handled)
        said = [
            line
            for line in system.log.read_text().splitlines()
            if any(e in line for _, e in unseen)
        ]
        assert not unseen, (group, unseen, said[:20])
    assert overlaps(intervals) == []

    # every outcome published once per upload: a stage that handled an entry twice to the
    # end would have told its outcome twice
    told = Counter((e["type"], e["upload_id"]) for e in tap.events if e["type"] not in REPEATABLE)
    twice = {key: n for key, n in told.items() if n != 1}
    assert twice == {}, f"outcomes told more than once: {list(twice.items())[:5]}"
    types = {kind for kind, _ in told}
    for upload_id in accepted:
        assert all((kind, upload_id) in told for kind in types), upload_id

    # every upload archived, once: one archived in its history, one local copy, one folder
    assert {f["status"] for f in finals.values()} == {"archived"}
    for upload_id, final in finals.items():
        history = [h["state"] for h in final["details"]["history"]]
        assert history.count("archived") == 1, (upload_id, history)
        local = [t for t in final["details"]["targets"] if t["target"] == "local"]
        assert len(local) == 1, (upload_id, final["details"]["targets"])
    assert {p.name for p in system.archive.iterdir()} == set(accepted)
    assert all((system.archive / i / "original.dcm").is_file() for i in accepted)

    # what each dead replica held was taken over: reclaimed, then handled and acked
    takers: dict[str, Counter[str]] = defaultdict(Counter)
    reclaimed = {
        (r["stream"], r["entry_id"]) for r in records if r.get("event") == "delivery.reclaimed"
    }
    for stage, (consumer, held, killed_at) in killed.items():
        assert held <= reclaimed, (stage, held - reclaimed)
        assert not pending_of(client, stage, consumer)
        if stage != "status":
            for stream, entry_id in held:
                after = [s for s in intervals[stream, stage, entry_id] if s[0] >= killed_at]
                assert after, f"{stage} {entry_id} was not handled again after the kill"
                takers[stage].update(consumer for _, _, consumer in after)
    print(  # shown when the test fails, and with -s
        {stage: len(held) for stage, (_, held, _) in killed.items()},
        "entries held by the killed replicas, handled again by",
        dict(takers),
    )
    client.close()


def all_consumers(client: redis.Redis, group: str) -> list[str]:
    stream = next(s for s, groups in names.TOPOLOGY.items() if group in groups)
    return [c["name"] for c in client.xinfo_consumers(stream, group)]
