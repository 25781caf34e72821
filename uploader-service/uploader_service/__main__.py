"""Start the uploader: ``uploader-service`` or ``python -m uploader_service``."""

from __future__ import annotations

from functools import partial

from shared import redis_names as names
from shared.service import serve_worker
from uploader_service import worker
from uploader_service.settings import get_settings
from uploader_service.targets import build_targets


def main() -> None:
    settings = get_settings()
    targets = build_targets(settings.upload_targets)  # an incomplete target stops us here
    serve_worker(
        "uploader-service",
        settings,
        names.GROUP_UPLOADER,
        [settings.archive_path],
        partial(worker.run, settings=settings, targets=targets),
        settings.port,
    )


if __name__ == "__main__":
    main()
