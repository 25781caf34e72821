"""Sustained load, long enough for the bus's housekeeping to run under it.

Short bursts of load never met what crashed the workers in issue 10: each consumer trims its
streams 30 s after it starts and every 30 s after, and the race in ``Bus.trim`` needs entries
acked while a trim runs. This keeps 8 clients uploading for 45 s, through the first trim of
every consumer, and fails if any service exited or logged ``service.crashed`` meanwhile
(testbed.system's crash check; run.py restarts a crashed service, so the uploads alone would
all still end archived).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from shared import redis_names as names
from testbed.series import ct_slice
from testbed.system import System, start_system, stop_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECONDS = 45  # past the first trim (30 s after each consumer starts)
CONCURRENCY = 8


@pytest.fixture
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("soak"), redis_fsync="everysec")
    yield running
    stop_system(running)


def drained(client: redis.Redis) -> bool:
    """True when every group has read and acked every entry of its streams."""
    for stream, groups in names.TOPOLOGY.items():
        for info in client.xinfo_groups(stream) if client.exists(stream) else []:
            if info["name"] in groups and (info["pending"] or info.get("lag")):
                return False
    return True


def test_sustained_load_through_the_housekeeping_crashes_no_service(soaked: System) -> None:
    system = soaked
    ids: list[str] = []
    until = time.monotonic() + SECONDS

    def client(n: int) -> None:
        with httpx.Client(base_url=system.url(), timeout=30) as c:
            i = 0
            while time.monotonic() < until:
                data = ct_slice(i, rows=64, columns=64, seed=n)  # new UIDs each time
                answer = c.post("/upload", files={"file": (f"{n}-{i}.dcm", data)})
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["study_id"])
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    store = redis.Redis.from_url(system.redis.url, decode_responses=True)
    # the ways in take the load first and the stages behind them work it off after (README
    # "How it keeps every upload"): on a busy machine the backlog takes a while to drain
    deadline = time.monotonic() + 180
    while not drained(store):
        assert time.monotonic() < deadline, "the pipeline did not drain within 180s"
        time.sleep(0.2)
    store.close()
    finals = system.wait_final(random.Random(7).sample(ids, min(100, len(ids))), seconds=30)
    assert {f["status"] for f in finals.values()} <= {"archived"}
    system.assert_no_crash()
