"""The whole pipeline as OS processes, started by scripts/run.py exactly as ``make run`` does.

A ``System`` also answers whether any service died while it ran: run.py writes a line for
every exit and restart of a service (``[run] service.exited name=... pid=... returncode=...``)
and a service whose work fails logs ``service.crashed``. ``unexpected_exits`` lists those the
test did not cause itself: processes it SIGKILLed with ``kill`` and exits it announced with
``expect_crash`` are its own. The e2e fixtures and ``make bench`` fail on any other.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.jobs import FINAL
from testbed.processes import REPLICA_PORT_STEP, RedisServer, free_port, port_free

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("gateway", "validator", "descriptor", "status", "uploader", "dimse")
WORKERS = ("validator", "descriptor", "status", "uploader")  # the stages that scale out
PORT_VARS = {
    "gateway": "GATEWAY_PORT",
    "validator": "VALIDATOR_PORT",
    "descriptor": "DESCRIPTOR_PORT",
    "status": "STATUS_PORT",
    "uploader": "UPLOADER_PORT",
    "dimse": "DIMSE_HTTP_PORT",  # its HTTP probes; DICOM on System.dimse_port
}
RUN_LINE = re.compile(r"^\[run\] (service\.\w+)((?: \w+=\S*)*)\s*$")


def run_events(log: str) -> list[dict[str, str]]:
    """run.py's lines about services (``[run] service.exited name=... pid=...``), parsed."""
    events = []
    for line in log.splitlines():
        if match := RUN_LINE.match(line):
            fields = dict(pair.split("=", 1) for pair in match.group(2).split())
            events.append({"event": match.group(1), **fields})
    return events


def log_records(log: str) -> list[dict[str, Any]]:
    """The services' JSON log lines, parsed (run.py's own lines and anything else skipped)."""
    records = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a SIGKILL
    return records


def stage_of(service: str) -> str:
    """``descriptor-service`` or ``api-gateway`` (a log's service) as run.py names it."""
    return "gateway" if service == "api-gateway" else service.removesuffix("-service")


@dataclass
class System:
    """A running pipeline and the ways a test talks to it."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]  # replica 0's; replica i listens on + REPLICA_PORT_STEP * i
    uploads: Path
    archive: Path
    redis: RedisServer
    log: Path
    replicas: dict[str, int] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)  # pids this test SIGKILLed itself
    expected: Counter[str] = field(default_factory=Counter)  # other exits it announced
    reported: set[str] = field(default_factory=set)  # deaths a check has already failed on
    dimse_port: int = 0  # the DIMSE listener's DICOM port (DIMSE_PORT)
    api_key: str | None = None  # sent to the gateway by client() when access control is on

    def url(self, service: str = "gateway", replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.port(service, replica)}"

    def port(self, service: str, replica: int = 0) -> int:
        return self.ports[service] + REPLICA_PORT_STEP * replica

    def client(
        self, service: str = "gateway", timeout: float = 30, replica: int = 0
    ) -> httpx.Client:
        wanted = self.api_key and service == "gateway"
        headers = {"Authorization": f"Bearer {self.api_key}"} if wanted else {}
        return httpx.Client(base_url=self.url(service, replica), timeout=timeout, headers=headers)

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

    def pid(self, service: str, replica: int = 0) -> int:
        with self.client(service, timeout=5, replica=replica) as c:
            return int(c.get("/health").json()["pid"])

    def kill(self, service: str, replica: int = 0, pid: int | None = None) -> int:
        """SIGKILL one service process (``pid``, if the caller looked it up already); run.py
        restarts it. Returns the killed pid, which the crash check then counts as this
        test's own doing."""
        pid = pid or self.pid(service, replica)
        self.killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def expect_crash(self, service: str, times: int = 1) -> None:
        """Announce that the test makes ``service`` exit (or log ``service.crashed``) ``times``
        times by other means than ``kill``, so the crash check does not count them."""
        self.expected[service] += times

    def wait_healthy(
        self, service: str, other_than: int | None = None, seconds: float = 30, replica: int = 0
    ) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if other_than is None or self.pid(service, replica) != other_than:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{service} did not come back within {seconds}s")

    def unexpected_exits(self) -> list[str]:
        """Every exit, restart or ``service.crashed`` of a service the test did not cause.

        An exit counts when run.py saw the process end while running (``service.exited``) or
        end with an error when it stopped it (``service.stopped``, returncode not 0); a
        ``service.crashed`` line counts on its own, since a crash may also be logged by a
        process that then exits cleanly. A pid the test killed is its own; each
        ``expect_crash`` forgives one exit and one crash line of that service.
        """
        text = self.log.read_text(errors="replace")
        exits: dict[str, list[str]] = {}
        for event in run_events(text):
            if event["event"] not in ("service.exited", "service.stopped"):
                continue
            if event["event"] == "service.stopped" and event.get("returncode") == "0":
                continue
            if int(event.get("pid", -1)) in self.killed:
                continue
            exits.setdefault(event["name"], []).append(
                f"{event['name']} {event['event']} pid={event.get('pid')} "
                f"returncode={event.get('returncode')}"
            )
        crashes: dict[str, list[str]] = {}
        for record in log_records(text):
            if record.get("event") == "service.crashed":
                name = stage_of(str(record.get("service", "?")))
                error, at = record.get("error"), record.get("timestamp")
                crashes.setdefault(name, []).append(f"{name} service.crashed error={error} at {at}")
        problems = []
        for found in (exits, crashes):
            for name, lines in sorted(found.items()):
                problems += lines[self.expected[name] :]
        return problems

    def assert_no_crash(self) -> None:
        """Fail when a service exited, was restarted or crashed without the test causing it
        (each such death is reported once, by the first check that sees it)."""
        problems = [p for p in self.unexpected_exits() if p not in self.reported]
        self.reported.update(problems)
        if problems:
            raise AssertionError(
                f"a service died that the test did not kill (see {self.log}; a test that "
                "causes it on purpose says so with System.expect_crash): " + " | ".join(problems)
            )


def _ready(system_ports: dict[str, int], replicas: dict[str, int]) -> bool:
    for name in NAMES:
        for replica in range(replicas.get(name, 1)):
            port = system_ports[name] + REPLICA_PORT_STEP * replica
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
    return True


def replica_ports(replicas: int) -> int:
    """A free port whose replicas' ports (+ 10, + 20, ...) are free too."""
    while True:
        port = free_port()
        if all(port_free(port + REPLICA_PORT_STEP * i) for i in range(1, replicas)):
            return port


def start_system(
    folder: Path,
    redis_fsync: str = "always",
    replicas: dict[str, int] | None = None,
    **env_extra: str,
) -> System:
    """Redis and run.py in ``folder``, ready when every service (each replica) is ready.

    ``replicas``: how many processes of each worker stage (``{"descriptor": 2}``), given to
    run.py as ``DESCRIPTOR_REPLICAS``.
    """
    replicas = replicas or {}
    redis = RedisServer(folder / "redis-data", persistent=True, appendfsync=redis_fsync)
    redis.folder.mkdir(parents=True)
    redis.start()
    ports = {name: replica_ports(replicas.get(name, 1)) for name in NAMES}
    dimse_port = free_port()
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
        "DIMSE_PORT": str(dimse_port),
        **{f"{n.upper()}_REPLICAS": str(count) for n, count in replicas.items()},
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
    system = System(proc, ports, folder / "uploads", folder / "archive", redis, log, replicas)
    system.dimse_port = dimse_port
    deadline = time.monotonic() + 60
    while not _ready(ports, replicas):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_system(system, check=False)
            raise RuntimeError(f"the system did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return system


def stop_system(system: System, check: bool = True) -> None:
    """Stop run.py (it stops the services and says how each ended), then Redis; then, with
    ``check``, fail if a service died unasked while it ran (``System.assert_no_crash``)."""
    system.proc.send_signal(signal.SIGTERM)
    try:
        system.proc.wait(30)
    except subprocess.TimeoutExpired:
        system.proc.kill()
    system.redis.stop()
    if check:
        system.assert_no_crash()
