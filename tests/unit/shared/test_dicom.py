"""Quiet parsing: pydicom's warnings and log records are dropped where, and only where, it runs."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator

import pytest

from shared.dicom import quiet_pydicom

PYDICOM = logging.getLogger("pydicom")


@pytest.fixture
def thread_in_quiet() -> Iterator[threading.Event]:
    """A thread parsing a large file: inside ``quiet_pydicom`` until the event is set.

    Set at the latest after 5 s by a watchdog, so that a test that would wait for it fails
    instead of hanging."""
    inside, leave = threading.Event(), threading.Event()

    def parse() -> None:
        with quiet_pydicom():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=parse)
    thread.start()
    watchdog = threading.Timer(5, leave.set)
    watchdog.start()
    assert inside.wait(5)
    yield leave
    leave.set()
    watchdog.cancel()
    thread.join(5)


async def test_the_event_loop_enters_quiet_while_a_thread_is_in_it(
    thread_in_quiet: threading.Event,
) -> None:
    with quiet_pydicom():  # a small file, parsed in the event loop
        entered_while_the_thread_parses = not thread_in_quiet.is_set()
    assert entered_while_the_thread_parses


def test_warnings_and_records_are_dropped_inside_and_kept_outside(
    thread_in_quiet: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.warns(UserWarning, match="outside"):  # another thread being quiet is not ours
        warnings.warn("outside", UserWarning, stacklevel=1)
    PYDICOM.warning("outside")
    with quiet_pydicom():
        thread_in_quiet.set()  # the thread leaves its section while this one is in its own
        warnings.warn("Doe^Jane", UserWarning, stacklevel=1)  # would fail the test: "error"
        PYDICOM.warning("Doe^Jane")
    assert [r.getMessage() for r in caplog.records] == ["outside"]


def test_quiet_sections_nest() -> None:
    with quiet_pydicom():
        with quiet_pydicom():
            pass
        warnings.warn("Doe^Jane", UserWarning, stacklevel=1)
    with pytest.warns(UserWarning, match="outside"):
        warnings.warn("outside", UserWarning, stacklevel=1)
