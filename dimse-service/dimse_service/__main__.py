"""Start the DIMSE listener: ``dimse-service`` or ``python -m dimse_service``."""

from __future__ import annotations

import pydicom.config

from dimse_service.server import serve
from dimse_service.settings import get_settings


def main() -> None:
    # pydicom works here only on DIMSE command sets, C-FIND identifiers and answers, and the
    # file meta of a received data set (which is never decoded). Its checks of values as it
    # reads and writes them only warn, and warnings are dropped (they may quote values); the
    # query keys are checked by our own parsing. Skipped, every C-STORE costs a tenth less.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    serve(get_settings())


if __name__ == "__main__":
    main()
