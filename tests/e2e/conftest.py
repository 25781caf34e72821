"""The e2e tests' pipeline: one per module, started as ``make run`` does (testbed.system).

Every System a test uses is checked after it: a service that exited, was restarted or logged
``service.crashed`` without the test killing it (``System.kill``) or announcing it
(``System.expect_crash``) fails the test, restarted or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.system import System, start_system, stop_system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"))
    yield running
    stop_system(running)


@pytest.fixture
def own_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A pipeline for one test alone: for a test that harms it (kills Redis, say), so the
    tests after it do not run on what it left."""
    running = start_system(tmp_path_factory.mktemp("own-system"))
    yield running
    stop_system(running)


@pytest.fixture(autouse=True)
def _no_service_died(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, fail it if a service of a System it used died unasked."""
    yield
    for value in request.node.funcargs.values():
        for candidate in value if isinstance(value, tuple) else (value,):
            if isinstance(candidate, System):
                candidate.assert_no_crash()
