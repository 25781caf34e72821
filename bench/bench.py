"""``make bench``: end-to-end throughput, latency and gateway memory, printed as a table.

Starts the whole pipeline as processes (as ``make run`` does) on a Redis of its own, uploads
200 generated CT slices (512x512, 16-bit) at concurrency 1 and 8, and times each from the
start of its POST until the status service announces it ``archived`` (read from the change
channel, so measuring adds no polling load). Then it streams a 1 GB upload and samples the
gateway's resident memory while it does.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared import redis_names as names  # noqa: E402
from tests.e2e.conftest import System, start_system, stop_system  # noqa: E402
from tests.support import write_ct_series  # noqa: E402

SLICES = 200
BIG = 1024**3


class ArchivedWatcher:
    """Follows the status channel and records when each upload became final."""

    def __init__(self, redis_url: str) -> None:
        self.final_at: dict[str, float] = {}
        self.states: dict[str, str] = {}
        self._pubsub = redis.Redis.from_url(redis_url).pubsub()
        self._pubsub.subscribe(names.STATUS_CHANNEL)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for message in self._pubsub.listen():
            if message["type"] != "message":
                continue
            change = json.loads(message["data"])
            if change["status"] in ("archived", "rejected", "failed"):
                self.final_at.setdefault(change["upload_id"], time.perf_counter())
                self.states[change["upload_id"]] = change["status"]

    def wait(self, ids: list[str], seconds: float = 600) -> None:
        deadline = time.monotonic() + seconds
        while any(i not in self.final_at for i in ids):
            if time.monotonic() > deadline:
                raise TimeoutError("uploads did not finish")
            time.sleep(0.01)


async def upload_all(system: System, paths: list[Path], concurrency: int) -> dict[str, float]:
    """POST every file, ``concurrency`` at a time; the start time of each upload by id."""
    started: dict[str, float] = {}
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            path = queue.get_nowait()
            data = path.read_bytes()
            t0 = time.perf_counter()
            answer = await client.post("/upload", files={"file": (path.name, data)})
            answer.raise_for_status()
            started[answer.json()["study_id"]] = t0

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=system.url(), timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return started


def run_load(system: System, paths: list[Path], concurrency: int) -> dict[str, float]:
    watcher = ArchivedWatcher(system.redis.url)
    t0 = time.perf_counter()
    started = asyncio.run(upload_all(system, paths, concurrency))
    ids = list(started)
    watcher.wait(ids)
    elapsed = max(watcher.final_at[i] for i in ids) - t0
    latencies = sorted((watcher.final_at[i] - started[i]) * 1000 for i in ids)
    bad = [i for i in ids if watcher.states[i] != "archived"]
    if bad:
        raise SystemExit(f"{len(bad)} uploads did not archive: {bad[:3]}")
    return {
        "uploads/s": len(ids) / elapsed,
        "p50 ms": statistics.median(latencies),
        "p95 ms": latencies[int(len(latencies) * 0.95) - 1],
    }


def gateway_memory_for_big_upload(system: System, folder: Path) -> dict[str, float]:
    """Stream a 1 GB file to the gateway and sample its RSS every 10 ms."""
    big = folder / "big.bin"
    with open(big, "wb") as f:
        f.truncate(BIG)  # sparse: reads back as zeros, costs no disk until uploaded
    gateway = psutil.Process(system.pid("gateway"))
    before = gateway.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with open(big, "rb") as f, httpx.Client(base_url=system.url(), timeout=600) as client:
        answer = client.post("/upload", files={"file": ("big.bin", f)})
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    big.unlink()
    if answer.status_code != 202:
        raise SystemExit(f"the 1 GB upload failed: {answer.status_code} {answer.text[:200]}")
    return {
        "rss before MB": before / 2**20,
        "rss peak MB": peak / 2**20,
        "growth MB": (peak - before) / 2**20,
        "MB/s": BIG / 2**20 / seconds,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomflow-bench-") as tmp:
        folder = Path(tmp)
        print(f"generating {SLICES} CT slices (512x512, 16-bit) ...", file=sys.stderr)
        series = [write_ct_series(folder / f"series{c}", SLICES, seed=c) for c in (1, 8)]
        system = start_system(folder / "system", MAX_FILE_SIZE=str(BIG + 2**20),
                              FSYNC_UPLOADS="true")  # fmt: skip
        try:
            rows = []
            for concurrency, paths in zip((1, 8), series, strict=True):
                print(f"uploading at concurrency {concurrency} ...", file=sys.stderr)
                rows.append((concurrency, run_load(system, paths, concurrency)))
            print("streaming a 1 GB upload ...", file=sys.stderr)
            memory = gateway_memory_for_big_upload(system, folder)
        finally:
            stop_system(system)

    print()
    print(f"End to end, {SLICES} CT slices 512x512 16-bit (upload -> archived), local target")
    print(f"| {'concurrency':>11} | {'uploads/s':>9} | {'p50 ms':>8} | {'p95 ms':>8} |")
    print(f"|{'-' * 13}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for concurrency, r in rows:
        cells = [f"{concurrency:>11}", f"{r['uploads/s']:>9.1f}", f"{r['p50 ms']:>8.1f}"]
        print("| " + " | ".join([*cells, f"{r['p95 ms']:>8.1f}"]) + " |")
    print()
    print("Gateway memory while streaming a 1 GB upload")
    print("| rss before MB | rss peak MB | growth MB | MB/s |")
    print("|---------------|-------------|-----------|------|")
    print(f"| {memory['rss before MB']:>13.1f} | {memory['rss peak MB']:>11.1f} "
          f"| {memory['growth MB']:>9.1f} | {memory['MB/s']:>4.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
