"""Start the validator: ``validator-service`` or ``python -m validator_service``."""

from __future__ import annotations

from functools import partial

from shared import redis_names as names
from shared.service import serve_worker
from validator_service import worker
from validator_service.settings import get_settings


def main() -> None:
    settings = get_settings()
    serve_worker(
        "validator-service",
        settings,
        names.GROUP_VALIDATOR,
        [settings.uploads_path],
        partial(worker.run, settings=settings),
        settings.port,
    )


if __name__ == "__main__":
    main()
