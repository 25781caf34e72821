"""DICOM helpers every service may need: reading with pydicom without leaking what it read,
and decoding pixel data without a decoder's panic passing every ``except Exception``.

Quiet is a flag of the code that parses (a context variable: its thread, or its asyncio task),
read by a warnings filter and a logging filter installed once for the process. Entering it
takes no lock, so a small file parsed in the event loop never waits for a large one parsed in
a thread, and code outside it keeps its warnings.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from typing import cast

_LOG = logging.getLogger("pydicom")
_quiet: ContextVar[bool] = ContextVar("quiet_pydicom", default=False)


class _WhileQuiet:
    """In place of a warnings filter's message pattern (``warnings`` calls its ``match``): any
    warning matches while the code that raises it is in ``quiet_pydicom``."""

    def match(self, _text: str) -> bool:
        return _quiet.get()


_IGNORE_WHILE_QUIET = ("ignore", _WhileQuiet(), Warning, None, 0)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records while parsing: both may quote values, which
    may be patient data. The caller says what matters in its own words. Only the code in the
    block is quiet (this thread or task); other threads and tasks run on, and warn, meanwhile."""
    _install()
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def _install() -> None:
    """Put both filters in place: cheap when they are. The warnings filter goes first, ahead of
    any added since (pytest adds its own for each test), so that nothing overrides it; two
    threads doing this at once at worst add it twice, which changes nothing."""
    _LOG.addFilter(_drop_while_quiet)  # does nothing when it is there already
    filters = cast(list[object], warnings.filters)  # a list, typed as a Sequence of patterns
    if not filters or filters[0] is not _IGNORE_WHILE_QUIET:
        with contextlib.suppress(ValueError):
            filters.remove(_IGNORE_WHILE_QUIET)
        filters.insert(0, _IGNORE_WHILE_QUIET)


def _drop_while_quiet(_record: logging.LogRecord) -> bool:
    return not _quiet.get()


class DecoderPanic(Exception):
    """A pixel data decoder written in Rust panicked on a corrupt stream (an ordinary error)."""


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Decode pixel data with pydicom's plugins, a decoder's panic raised as ``DecoderPanic``.

    pylibjpeg-rle is Rust: on some corrupt streams (an RLE frame shorter than Rows x Columns
    says) it panics, and pyo3 raises ``pyo3_runtime.PanicException``, a ``BaseException``, so
    that neither pydicom (which would try its next plugin) nor a caller's ``except Exception``
    sees it. Within this block it is an ``Exception`` like any other failure to decode. The
    class is matched by name: pyo3 makes it at run time, in no module one can import.
    """
    try:
        yield
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise DecoderPanic("the pixel data decoder panicked on the stream") from exc
