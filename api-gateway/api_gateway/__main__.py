"""Start the gateway: ``api-gateway`` or ``python -m api_gateway``."""

from __future__ import annotations

from api_gateway.app import create_app
from api_gateway.settings import get_settings
from shared.logging import configure_logging
from shared.service import run, run_forever


def main() -> None:
    settings = get_settings()
    configure_logging("api-gateway", settings.log_level, settings.log_format)
    run_forever(run(create_app(settings), settings.host, settings.port))


if __name__ == "__main__":
    main()
