"""How every service's HTTP port is configured, and the open-file limit it starts with."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from shared.http_limits import GuardedHttpTools, server_config
from shared.settings import ServiceSettings


def test_the_port_is_served_with_the_limits_the_settings_say() -> None:
    settings = ServiceSettings(
        HTTP_HEADER_TIMEOUT_S=3,
        HTTP_MAX_HEADER_BYTES=8192,
        HTTP_MAX_HEADERS=50,
        HTTP_MAX_CONNECTIONS=200,
        HTTP_BACKLOG=128,
        HTTP_KEEP_ALIVE_S=7,
    )
    config = server_config(object(), settings, 8000)
    assert (config.limit_concurrency, config.backlog, config.timeout_keep_alive) == (200, 128, 7)
    protocol = config.http
    assert isinstance(protocol, type)
    assert issubclass(protocol, GuardedHttpTools)
    assert (protocol.header_timeout_s, protocol.max_header_bytes, protocol.max_headers) == (
        3,
        8192,
        50,
    )
    assert GuardedHttpTools.header_timeout_s == 10  # the class itself keeps its defaults


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_a_low_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")

    def lowered() -> None:  # in the child, before it runs: as a service started with 256
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    script = (
        "import resource; from shared.http_limits import raise_open_file_limit; "
        "print(raise_open_file_limit(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lowered,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    said, now = map(int, done.stdout.split())
    assert said == now > 256
    assert now == hard or hard == resource.RLIM_INFINITY
