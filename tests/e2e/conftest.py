"""The e2e tests' pipeline: one per module, started as ``make run`` does (testbed.system)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.system import System, start_system, stop_system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"))
    yield running
    stop_system(running)
