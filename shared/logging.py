"""structlog set-up: JSON lines in containers, readable lines on a terminal, service on each."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Literal

import structlog

from shared.errors import frames, safe_error


def configure_logging(
    service: str, level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog, and stdlib logging (uvicorn's) through it, once for this process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _exception_as_error,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # one write() per line, so lines of processes sharing a stream never interleave
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)

    # Libraries log through stdlib: render their lines the same way, with the service on each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level), logging.WARNING))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # pydicom warns and logs about odd values by quoting them: patient data. The services say
    # what matters in their own words (rejection reasons, preview notes), so neither is shown.
    logging.getLogger("pydicom").disabled = True
    warnings.simplefilter("ignore")


def _exception_as_error(
    _logger: object, _name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Replace a traceback by the exception's class and the frames it came through: its
    message and local values may quote patient data."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if not isinstance(exc, BaseException):
            exc = sys.exc_info()[1]
        if exc is not None:
            event.setdefault("error", safe_error(exc))
            event.setdefault("frames", frames(exc))
    return event
