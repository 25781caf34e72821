"""What every target test module needs: the real servers of testbed/servers.py, or a skip."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from testbed import servers

S = TypeVar("S")


class StartServer(Protocol):
    def __call__(self, server: Callable[[Path], AbstractContextManager[S]]) -> S: ...


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Start a server of testbed/servers.py in a folder of its own until the module's tests are
    done, e.g. ``start_server(servers.azurite)``; one that is not installed skips them."""
    with contextlib.ExitStack() as running:

        def start(server: Callable[[Path], AbstractContextManager[S]]) -> S:
            folder = tmp_path_factory.mktemp(server.__name__)
            try:
                return running.enter_context(server(folder))
            except servers.Unavailable as exc:
                pytest.skip(str(exc))

        yield start
