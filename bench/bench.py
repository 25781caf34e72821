"""``make bench``: end-to-end throughput, latency and gateway memory, printed as a table.

Starts the whole pipeline as processes (as ``make run`` does) on a Redis of its own, uploads
200 generated CT slices (512x512, 16-bit) in a closed loop: N clients (N = 1, then 8), each
uploading a file and waiting until it is ``archived`` before sending the next. Each upload is
timed from the start of its POST until the status service announces it ``archived`` (read
from the change channel, so measuring adds no polling load). CPU time per upload is read for
every process, which says where the time goes. Then it streams a 1 GB upload and samples the
gateway's resident memory while it does, and runs the load at concurrency 8 again on a system
with one, then two descriptor replicas (``DESCRIPTOR_REPLICAS``).

Last, dicomflow beside Orthanc on the same files (``bench/beside_orthanc.py``): STOW-RS,
C-STORE, QIDO-RS over 10,000 instances (``BENCH_QIDO_INSTANCES``) and WADO-RS.

It fails (exit 1, after the tables) when a service exited, was restarted or logged
``service.crashed`` during any run: a figure measured across a crash is not a figure; and
when a target of the rows beside Orthanc is missed (issue 11's: STOW-RS and C-STORE at least
half of Orthanc's rate, QIDO-RS p50 under 20 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import hiredis
import httpx
import psutil
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import beside_orthanc  # noqa: E402  (bench/, beside this script)

from shared import redis_names as names  # noqa: E402
from shared.jobs import FINAL  # noqa: E402
from testbed import servers  # noqa: E402
from testbed.series import write_ct_series  # noqa: E402
from testbed.system import System, start_system, stop_system  # noqa: E402

SLICES = int(os.environ.get("BENCH_SLICES", "200"))
BIG = 1024**3
FINAL_WORDS = tuple(state.encode() for state in FINAL)
SERVICES = ("gateway", "validator", "descriptor", "uploader", "status")
TARGETS = [t for t in os.environ.get("BENCH_TARGETS", "s3,azure,gcs,dicomweb").split(",") if t]


class Watcher:
    """Follows the status channel and wakes whoever waits for an upload to become final.

    It reads the channel on a socket of its own through hiredis's reply parser (a C reader,
    not a client): it gets every change of every upload, seven each, and shares the cores
    with what it measures, so it does as little per message as it can.
    """

    def __init__(self, redis_url: str) -> None:
        self.address = urlsplit(redis_url)
        self.final: dict[str, tuple[str, float]] = {}
        self.waiting: dict[str, asyncio.Future[None]] = {}

    async def run(self, subscribed: asyncio.Event) -> None:
        host, port = self.address.hostname or "127.0.0.1", self.address.port or 6379
        reader, writer = await asyncio.open_connection(host, port)
        channel = names.STATUS_CHANNEL.encode()
        writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        replies = hiredis.Reader()
        try:
            while data := await reader.read(1 << 16):
                replies.feed(data)
                while (reply := replies.gets()) is not False:
                    kind, _, body = reply
                    if kind == b"subscribe":
                        subscribed.set()
                    elif kind == b"message" and any(s in body for s in FINAL_WORDS):
                        self._changed(json.loads(body))  # most changes are not final
        finally:
            writer.close()

    def _changed(self, change: dict[str, str]) -> None:
        if change["status"] in FINAL:
            upload_id = change["upload_id"]
            self.final.setdefault(upload_id, (change["status"], time.perf_counter()))
            if (future := self.waiting.pop(upload_id, None)) and not future.done():
                future.set_result(None)

    async def until_final(self, upload_id: str) -> None:
        if upload_id in self.final:
            return
        future = self.waiting.setdefault(upload_id, asyncio.get_running_loop().create_future())
        await asyncio.wait_for(future, 600)


async def closed_loop(system: System, requests: list[bytes], concurrency: int) -> dict[str, float]:
    """``concurrency`` clients, each sending an upload request and waiting until its file is
    archived."""
    watcher = Watcher(system.redis.url)
    subscribed = asyncio.Event()
    listening = asyncio.create_task(watcher.run(subscribed))
    await subscribed.wait()
    queue = requests[::-1]
    started: dict[str, float] = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", system.ports["gateway"])
        while queue:
            request = queue.pop()
            t0 = time.perf_counter()
            writer.write(request)
            status, body = await read_response(reader)
            if status != 202:
                raise SystemExit(f"upload refused: {status} {body[:200]!r}")
            upload_id = json.loads(body)["study_id"]
            started[upload_id] = t0
            await watcher.until_final(upload_id)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    listening.cancel()
    bad = [i for i in started if watcher.final[i][0] != "archived"]
    if bad:
        raise SystemExit(f"{len(bad)} uploads did not archive: {bad[:3]}")
    latencies = sorted((watcher.final[i][1] - started[i]) * 1000 for i in started)
    return {
        "uploads/s": len(started) / elapsed,
        "p50 ms": statistics.median(latencies),
        "p95 ms": latencies[max(0, int(len(latencies) * 0.95) - 1)],
    }


BOUNDARY = "dicomflow-bench-boundary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def upload_request(path: Path, port: int) -> bytes:
    """A whole HTTP/1.1 POST /upload with the file as multipart field ``file``."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: application/dicom\r\n\r\n"
    )
    body = head.encode() + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
    start = (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {FORM}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return start.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (what uvicorn sends).

    The load generator is this small on purpose: it shares the 2 cores with what it measures.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"
    )
    return status, await reader.readexactly(length)


def processes(system: System) -> dict[str, psutil.Process]:
    """Each service process (its pid asked over HTTP), Redis and this client."""
    procs = {name: psutil.Process(system.pid(name)) for name in SERVICES}
    procs["redis"] = psutil.Process(system.redis.proc.pid)  # type: ignore[union-attr]
    procs["client"] = psutil.Process()
    return procs


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time used so far by each process."""
    return {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}


def run_load(system: System, paths: list[Path], concurrency: int) -> dict[str, float]:
    # Pids looked up and requests built before the first reading of CPU times: the load, not
    # the measuring or the encoding, is what the CPU columns show.
    procs = processes(system)
    requests = [upload_request(path, system.ports["gateway"]) for path in paths]
    before = cpu_seconds(procs)
    result = uvloop.run(closed_loop(system, requests, concurrency))  # a lighter client
    after = cpu_seconds(procs)
    for name in after:
        result[f"{name} cpu ms"] = (after[name] - before[name]) * 1000 / len(paths)
    return result


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


@contextlib.contextmanager
def target_env(name: str, folder: Path) -> Iterator[dict[str, str]]:
    """A running emulator for one target, an empty bucket in it, and the settings to use it."""
    bucket = "bench"
    if name == "s3":
        with servers.moto_s3(folder) as s3:
            import boto3

            boto3.client(
                "s3",
                endpoint_url=s3.url,
                aws_access_key_id="x",
                aws_secret_access_key="x",
                region_name="us-east-1",
            ).create_bucket(Bucket=bucket)
            yield {**s3.env(bucket), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    elif name == "azure":
        with servers.azurite(folder) as azure:
            from azure.storage.blob import BlobServiceClient

            BlobServiceClient.from_connection_string(azure.connection_string()).create_container(
                bucket
            )
            yield azure.env(bucket)
    elif name == "gcs":
        with servers.gcs_emulator(folder) as gcs:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
            storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
            del os.environ["STORAGE_EMULATOR_HOST"]
            yield gcs.env(bucket)
    else:
        with servers.orthanc(folder) as orthanc:
            yield orthanc.env()


DEATHS: list[str] = []  # services that exited or crashed during a run: the bench fails
MISSED: list[str] = []  # targets of the rows beside Orthanc that were missed: it fails too


def stop(system: System) -> None:
    """Stop a system, keeping what died while it ran (the tables are printed, then it fails)."""
    stop_system(system, check=False)
    DEATHS.extend(system.unexpected_exits())


def replica_rows(folder: Path, paths: list[Path]) -> list[tuple[int, dict[str, float]]]:
    """Uploads/s at concurrency 8 with one, then two descriptor replicas (a fresh system each,
    as ``DESCRIPTOR_REPLICAS=2 make run`` starts it)."""
    rows = []
    for count in (1, 2):
        print(f"uploading with {count} descriptor replica(s) ...", file=sys.stderr)
        system = start_system(
            folder / f"descriptors-{count}",
            redis_fsync="everysec",
            replicas={"descriptor": count},
            FSYNC_UPLOADS="true",
            CLAIM_IDLE_MS="15000",
            MAX_DELIVERIES="5",
        )
        try:
            rows.append((count, run_load(system, paths, 8)))
        finally:
            stop(system)
    return rows


def target_rows(folder: Path, paths: list[Path]) -> list[tuple[str, dict[str, float]]]:
    """Uploads/s at concurrency 8 with each emulator target beside the local one."""
    rows = []
    for name in TARGETS:
        print(f"uploading to {name} ...", file=sys.stderr)
        try:
            with target_env(name, folder / f"{name}-server") as env:
                system = start_system(
                    folder / f"{name}-system",
                    redis_fsync="everysec",
                    UPLOAD_TARGETS=f"local,{name}",
                    CLAIM_IDLE_MS="15000",
                    **env,
                )
                try:
                    rows.append((name, run_load(system, paths, 8)))
                finally:
                    stop(system)
        except servers.Unavailable as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomflow-bench-") as tmp:
        folder = Path(tmp)
        print(f"generating {SLICES} CT slices (512x512, 16-bit) ...", file=sys.stderr)
        series = [write_ct_series(folder / f"series{c}", SLICES, seed=c) for c in (1, 8)]
        # the defaults a user gets (Redis as make run starts it), but for the size limit the
        # 1 GB upload needs
        system = start_system(
            folder / "system",
            redis_fsync="everysec",
            MAX_FILE_SIZE=str(BIG + 2**20),
            FSYNC_UPLOADS="true",
            CLAIM_IDLE_MS="15000",
            MAX_DELIVERIES="5",
        )
        try:
            rows = []
            for concurrency, paths in zip((1, 8), series, strict=True):
                print(f"uploading at concurrency {concurrency} ...", file=sys.stderr)
                rows.append((concurrency, run_load(system, paths, concurrency)))
            print("streaming a 1 GB upload ...", file=sys.stderr)
            memory = gateway_memory_for_big_upload(system, folder)
        finally:
            stop(system)
        replicas = replica_rows(folder, series[1])
        targets = target_rows(folder, series[0]) if TARGETS else []
        print("beside Orthanc ...", file=sys.stderr)
        orthanc = beside_orthanc.compare(folder / "beside-orthanc", SLICES, DEATHS)

    print()
    print(
        f"End to end, {SLICES} CT slices 512x512 16-bit, closed loop "
        "(upload -> archived), local target"
    )
    print(f"| {'concurrency':>11} | {'uploads/s':>9} | {'p50 ms':>8} | {'p95 ms':>8} |")
    print(f"|{'-' * 13}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for concurrency, r in rows:
        cells = [f"{concurrency:>11}", f"{r['uploads/s']:>9.1f}", f"{r['p50 ms']:>8.1f}"]
        print("| " + " | ".join([*cells, f"{r['p95 ms']:>8.1f}"]) + " |")
    print()
    print("CPU time per upload, by process (where the time goes)")
    names_ = [*SERVICES, "redis", "client"]
    print("| concurrency | " + " | ".join(f"{n:>10}" for n in names_) + " |")
    print("|-------------|" + "|".join("-" * 12 for _ in names_) + "|")
    for concurrency, r in rows:
        cells = " | ".join(f"{r[f'{n} cpu ms']:>7.2f} ms" for n in names_)
        print(f"| {concurrency:>11} | {cells} |")
    print()
    print(f"End to end with one and two descriptor replicas, {SLICES} CT slices, concurrency 8")
    print("| descriptor replicas | uploads/s |   p50 ms |   p95 ms |")
    print("|---------------------|-----------|----------|----------|")
    for count, r in replicas:
        print(
            f"| {count:>19} | {r['uploads/s']:>9.1f} | {r['p50 ms']:>8.1f} | {r['p95 ms']:>8.1f} |"
        )
    if targets:
        print()
        print(f"To each emulator target beside local, {SLICES} CT slices, concurrency 8")
        print("| target   | uploads/s |   p50 ms |   p95 ms |")
        print("|----------|-----------|----------|----------|")
        for name, r in targets:
            print(
                f"| {name:<8} | {r['uploads/s']:>9.1f} | {r['p50 ms']:>8.1f} "
                f"| {r['p95 ms']:>8.1f} |"
            )
    print()
    print("Gateway memory while streaming a 1 GB upload")
    print("| rss before MB | rss peak MB | growth MB | MB/s |")
    print("|---------------|-------------|-----------|------|")
    print(
        f"| {memory['rss before MB']:>13.1f} | {memory['rss peak MB']:>11.1f} "
        f"| {memory['growth MB']:>9.1f} | {memory['MB/s']:>4.0f} |"
    )
    if orthanc:
        print()
        orthanc.print()
        MISSED.extend(orthanc.missed())


if __name__ == "__main__":
    main()
    if DEATHS:
        print(f"\nFAILED: services died during the runs: {' | '.join(DEATHS)}", file=sys.stderr)
    if MISSED:
        print(f"\nFAILED: targets missed: {' | '.join(MISSED)}", file=sys.stderr)
    if DEATHS or MISSED:
        sys.exit(1)
