"""Start the status service: ``status-service`` or ``python -m status_service``."""

from __future__ import annotations

from shared.logging import configure_logging
from shared.service import connect, make_bus, run, run_forever, yield_cpu
from status_service import worker
from status_service.app import create_app
from status_service.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging("status-service", settings.log_level, settings.log_format)
    yield_cpu(settings)
    redis = connect(settings)
    app = create_app(redis, settings)
    run_forever(run(app, settings, settings.port, worker.run(make_bus(redis, settings), settings)))


if __name__ == "__main__":
    main()
