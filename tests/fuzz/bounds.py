"""Each fuzz case bounded in time and memory, and counted for the summary of ``make fuzz``.

``with bounded("validator", seconds=5, memory_mb=256):`` runs one case under a wall-clock
alarm (``setitimer``; an outer timer such as pytest-timeout's is put back, less the time used)
and a cap on the address space (``RLIMIT_AS``, so a runaway allocation fails instead of taking
the machine), then checks how far the resident set grew (the kernel's peak, ``VmHWM``, reset
before the case through ``/proc/self/clear_refs``). The alarm raises a ``BaseException``, so
no ``except Exception`` in the code under test can swallow a hang; out of the case, it and any
other ``BaseException`` that escapes the code (a Rust panic is one) become ``CaseFailed``, an
``AssertionError``, which hypothesis shrinks and reports like any failed property.

A native library that aborts the process (a Rust decoder whose allocation fails does) ends
the run with no report from hypothesis; so each case's input, when given, is written first to
``.cache/fuzz/<target>.last``, where the case that killed the run can be read back.
"""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

CASES: Counter[str] = Counter()  # cases run per target, for the summary
LAST_CASES = Path(__file__).resolve().parents[2] / ".cache" / "fuzz"
MIB = 1024 * 1024
# what the address-space cap leaves above the process's size before the case: far above the
# resident budget (allocators reserve more than they touch), far below the machine's memory
ADDRESS_SPACE_HEADROOM = 3 * 1024 * MIB
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class _Alarm(BaseException):
    """Raised in the case by the timer: not an Exception, so the code under test lets it by."""


class CaseFailed(AssertionError):
    """A case overran its bounds, or the code under test let a BaseException escape."""


def _kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    return int(match[1]) if match else 0


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def bounded(
    target: str, *, seconds: float = 5.0, memory_mb: int = 512, case: object = None
) -> Iterator[None]:
    """Run one case of ``target`` within ``seconds`` and ``memory_mb`` of resident growth."""
    CASES[target] += 1
    if case is not None:
        LAST_CASES.mkdir(parents=True, exist_ok=True)
        (LAST_CASES / f"{target.replace(' ', '-').replace('/', '-')}.last").write_text(repr(case))

    def overran(_signum: int, _frame: FrameType | None) -> None:
        raise _Alarm(f"one {target} case ran longer than {seconds:g} s")

    measured = _reset_peak()
    rss_before = _kib("VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _kib("VmSize") * 1024 + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous_handler = signal.signal(signal.SIGALRM, overran)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    except _Alarm as alarm:
        raise CaseFailed(str(alarm)) from None
    except (Exception, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # e.g. pyo3_runtime.PanicException from a Rust decoder
        raise CaseFailed(f"{type(exc).__qualname__} escaped the code under test") from exc
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_left:  # put the outer timer back, less what this case used
            used = time.monotonic() - started
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - used, 0.001))
    grown_mb = (_kib("VmHWM") - rss_before) / 1024 if measured else 0
    if grown_mb > memory_mb:
        raise CaseFailed(f"one {target} case grew by {grown_mb:.0f} MiB, over {memory_mb} MiB")
