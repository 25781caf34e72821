"""Start the descriptor: ``descriptor-service`` or ``python -m descriptor_service``."""

from __future__ import annotations

from functools import partial

from descriptor_service import worker
from descriptor_service.settings import get_settings
from shared import redis_names as names
from shared.service import serve_worker


def main() -> None:
    settings = get_settings()
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
