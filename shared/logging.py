"""structlog set-up: JSON lines in containers, readable lines on a terminal, service on each."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Literal

import structlog


def configure_logging(
    service: str, level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog and stdlib logging once for this process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # one write() per line, so lines of processes sharing a stream never interleave
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # uvicorn and libraries log through stdlib: keep them quiet and on the same stream.
    logging.basicConfig(level=max(logging.getLevelName(level), logging.WARNING), stream=sys.stderr)
    logging.getLogger("uvicorn.access").disabled = True
    # pydicom warns and logs about odd values by quoting them: patient data. The services say
    # what matters in their own words (rejection reasons, preview notes), so neither is shown.
    logging.getLogger("pydicom").disabled = True
    warnings.simplefilter("ignore")
