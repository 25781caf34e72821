"""The descriptor's choices that need no Redis and no disk."""

from __future__ import annotations

import pytest
from descriptor_service.worker import _native


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
