"""Start the descriptor: ``descriptor-service`` or ``python -m descriptor_service``."""

from __future__ import annotations

from functools import partial

import pydicom.config

from descriptor_service import worker
from descriptor_service.settings import get_settings
from shared import redis_names as names
from shared.service import serve_worker


def main() -> None:
    settings = get_settings()
    # Every file here has passed the validator. pydicom's own checks of values as it reads
    # them only warn, and warnings are dropped (they may quote values): skipped, they give the
    # same metadata and preview for a tenth less work.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    serve_worker(
        "descriptor-service",
        settings,
        names.GROUP_DESCRIPTOR,
        [settings.uploads_path, settings.archive_path],
        partial(worker.run, settings=settings),
        settings.port,
    )


if __name__ == "__main__":
    main()
