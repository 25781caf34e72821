"""The whole pipeline as OS processes, started by scripts/run.py exactly as ``make run`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.jobs import FINAL
from testbed.processes import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("gateway", "validator", "descriptor", "status", "uploader")
PORT_VARS = {
    "gateway": "GATEWAY_PORT",
    "validator": "VALIDATOR_PORT",
    "descriptor": "DESCRIPTOR_PORT",
    "status": "STATUS_PORT",
    "uploader": "UPLOADER_PORT",
}


@dataclass
class System:
    """A running pipeline and the ways a test talks to it."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    uploads: Path
    archive: Path
    redis: RedisServer
    log: Path

    def url(self, service: str = "gateway") -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def client(self, service: str = "gateway", timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url(service), timeout=timeout)

    def upload(self, *paths: Path) -> list[str]:
        files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
        with self.client() as c:
            answer = c.post("/upload", files=files)
        assert answer.status_code == 202, answer.text
        return [u["study_id"] for u in answer.json()["uploads"]]

    def status(self, upload_id: str) -> dict[str, Any]:
        with self.client() as c:
            answer = c.get(f"/status/{upload_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_final(self, ids: list[str], seconds: float = 60) -> dict[str, dict[str, Any]]:
        """Poll until every upload reaches a final state; fail naming those that did not."""
        deadline = time.monotonic() + seconds
        done: dict[str, dict[str, Any]] = {}
        with self.client() as c:
            while time.monotonic() < deadline:
                for upload_id in ids:
                    if upload_id not in done:
                        try:
                            answer = c.get(f"/status/{upload_id}").json()
                        except httpx.HTTPError:
                            continue  # the gateway is restarting
                        if answer.get("status") in FINAL:
                            done[upload_id] = answer
                if len(done) == len(ids):
                    return done
                time.sleep(0.1)
        stuck = {i: c.get(f"/status/{i}").json().get("status") for i in ids if i not in done}
        raise AssertionError(f"{len(stuck)} uploads not final after {seconds}s: {stuck}")

    def pid(self, service: str) -> int:
        with self.client(service, timeout=5) as c:
            return int(c.get("/health").json()["pid"])

    def kill(self, service: str) -> int:
        """SIGKILL one service process; run.py restarts it. Returns the killed pid."""
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_healthy(
        self, service: str, other_than: int | None = None, seconds: float = 30
    ) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if other_than is None or self.pid(service) != other_than:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{service} did not come back within {seconds}s")


def _ready(ports: dict[str, int]) -> bool:
    for name in NAMES:
        try:
            if httpx.get(f"http://127.0.0.1:{ports[name]}/ready", timeout=2).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True


def start_system(folder: Path, redis_fsync: str = "always", **env_extra: str) -> System:
    redis = RedisServer(folder / "redis-data", persistent=True, appendfsync=redis_fsync)
    redis.folder.mkdir(parents=True)
    redis.start()
    ports = {name: free_port() for name in NAMES}
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "UPLOADS_PATH": str(folder / "uploads"),
        "ARCHIVE_PATH": str(folder / "archive"),
        "LOG_FORMAT": "json",
        "CLAIM_IDLE_MS": "1500",
        "MAX_DELIVERIES": "4",
        "FSYNC_UPLOADS": "false",
        "RECOVERY_INTERVAL_S": "1",
        "RECOVERY_GRACE_S": "1",
        **{PORT_VARS[n]: str(p) for n, p in ports.items()},
        **env_extra,
    }
    log = folder / "system.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run.py")],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    system = System(proc, ports, folder / "uploads", folder / "archive", redis, log)
    deadline = time.monotonic() + 60
    while not _ready(ports):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_system(system)
            raise RuntimeError(f"the system did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return system


def stop_system(system: System) -> None:
    system.proc.send_signal(signal.SIGTERM)
    try:
        system.proc.wait(30)
    except subprocess.TimeoutExpired:
        system.proc.kill()
    system.redis.stop()
