"""The descriptor's choices that need no Redis and no disk."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import pydicom
import pydicom.config
import pytest
from descriptor_service.metadata import describe
from descriptor_service.worker import _native
from pydicom.data import get_testdata_file

from shared.render import RenderError, to_display


@pytest.mark.parametrize(
    ("syntax", "native"),
    [
        ("1.2.840.10008.1.2", True),  # Implicit VR Little Endian
        ("1.2.840.10008.1.2.1", True),
        ("1.2.840.10008.1.2.2", True),  # Explicit VR Big Endian
        ("1.2.840.10008.1.2.1.99", False),  # deflated: may inflate far beyond its size
        ("1.2.840.10008.1.2.4.90", False),  # JPEG 2000: decoding is slow for its size
        ("1.2.840.10008.1.2.5", False),  # RLE
        ("1.2.3.4", False),
        (None, False),
    ],
)
def test_the_descriptor_works_inline_only_on_pixels_stored_as_they_are(
    syntax: str | None, native: bool
) -> None:
    assert _native(syntax) is native


@pytest.fixture
def reading_checks() -> Iterator[None]:
    mode = pydicom.config.settings.reading_validation_mode
    yield
    pydicom.config.settings.reading_validation_mode = mode


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "badVR.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm"]
)
def test_skipping_pydicoms_value_checks_changes_neither_metadata_nor_preview(
    name: str, reading_checks: None
) -> None:
    """The descriptor skips pydicom's checks of values as it reads (they only warn)."""
    made = []
    for mode in (pydicom.config.WARN, pydicom.config.IGNORE):
        pydicom.config.settings.reading_validation_mode = mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(get_testdata_file(name))
            made.append((json.dumps(describe(ds), sort_keys=True), _preview(ds)))
    assert made[0] == made[1]


def _preview(ds: pydicom.Dataset) -> bytes | str:
    """The display pixels, or why there are none."""
    try:
        return to_display(ds).tobytes()
    except RenderError as exc:
        return str(exc)
