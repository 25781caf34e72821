"""Helpers for tests: pydicom's test files, Docker's presence, test DicomIds, and what
testbed shares with bench and scripts (free ports, a redis-server, synthetic series)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from testbed.processes import RedisServer, free_port, wait_for_port
from testbed.series import ct_slice, write_ct_series

__all__ = [
    "RedisServer",
    "ct_slice",
    "docker_answers",
    "free_port",
    "pydicom_file",
    "wait_for_port",
    "write_ct_series",
]


def docker_answers() -> bool:
    """True when a Docker engine answers a ping (then testcontainers could be used)."""
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))
