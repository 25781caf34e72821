"""DICOM helpers every service may need: reading with pydicom without leaking what it read."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

_LOG = logging.getLogger("pydicom")
_QUIET = threading.Lock()  # warning filters and logger filters are process-wide


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records while parsing: both may quote values, which
    may be patient data. The caller says what matters in its own words. One parse at a time
    per process holds it (it is CPU-bound under the GIL anyway)."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _LOG.addFilter(_drop)
        try:
            yield
        finally:
            _LOG.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False
