"""Start the DIMSE listener: ``dimse-service`` or ``python -m dimse_service``."""

from __future__ import annotations

from dimse_service.server import serve
from dimse_service.settings import get_settings


def main() -> None:
    serve(get_settings())


if __name__ == "__main__":
    main()
