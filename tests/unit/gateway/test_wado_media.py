"""WADO-RS content negotiation: what each Accept header that real clients send gets."""

from __future__ import annotations

import pytest
from api_gateway.dicomweb import media

from shared.errors import NotAcceptable

NATIVE = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def test_accept_header_is_read_with_its_parameters_and_preferences() -> None:
    accept = media.parse_accept(
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1;'
        ' q=0.5, multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50,'
        " text/html; q=0"
    )
    assert accept == [
        media.Accepted("multipart/related", "image/jpeg", JPEG, 1.0),
        media.Accepted("multipart/related", "application/octet-stream", NATIVE, 0.5),
    ]
    assert media.parse_accept(None) == [media.Accepted("*/*")]


@pytest.mark.parametrize(
    ("header", "stored", "sent"),
    [
        ('multipart/related; type="application/dicom"; transfer-syntax=*', J2K, J2K),
        ('multipart/related; type="application/dicom"', J2K, J2K),  # none: as stored
        (None, JPEG, JPEG),
        (f'multipart/related; type="application/dicom"; transfer-syntax={NATIVE}', J2K, NATIVE),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={NATIVE}',
            IMPLICIT,
            NATIVE,
        ),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', JPEG, JPEG),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', J2K, None),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={NATIVE}',
            BIG_ENDIAN,
            None,
        ),
    ],
)
def test_instances_go_as_stored_or_as_explicit_vr_little_endian(
    header: str | None, stored: str, sent: str | None
) -> None:
    syntaxes = media.instance_syntaxes(media.parse_accept(header))
    assert media.instance_syntax(syntaxes, stored) == sent


def test_instances_are_never_anything_but_dicom() -> None:
    with pytest.raises(NotAcceptable):
        media.instance_syntaxes(media.parse_accept("application/json"))


@pytest.mark.parametrize(
    ("header", "stored", "decode", "content_type"),
    [
        (OHIF_FRAMES, NATIVE, False, f"application/octet-stream; transfer-syntax={NATIVE}"),
        (OHIF_FRAMES, J2K, False, f"application/octet-stream; transfer-syntax={J2K}"),
        ("multipart/related; type=application/octet-stream", J2K, True, None),
        (
            'multipart/related; type="image/jpeg"',
            JPEG,
            False,
            f"image/jpeg; transfer-syntax={JPEG}",
        ),
        ('multipart/related; type="*/*"', RLE, False, f"image/dicom-rle; transfer-syntax={RLE}"),
        (None, NATIVE, False, f"application/octet-stream; transfer-syntax={NATIVE}"),
        (  # a preference for JPEG that this instance cannot meet, then anything decoded
            'multipart/related; type="image/jpeg", multipart/related; '
            'type="application/octet-stream"; q=0.5',
            J2K,
            True,
            None,
        ),
    ],
)
def test_frames_as_stored_when_accepted_else_decoded(
    header: str | None, stored: str, decode: bool, content_type: str | None
) -> None:
    coding = media.frame_coding(media.parse_accept(header), stored)
    assert coding.decode is decode
    expected = content_type or f"application/octet-stream; transfer-syntax={NATIVE}"
    assert coding.content_type == expected


def test_frames_in_a_syntax_they_cannot_have_are_406() -> None:
    header = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
    with pytest.raises(NotAcceptable):
        media.frame_coding(media.parse_accept(header), J2K)
    with pytest.raises(NotAcceptable):
        media.frame_coding(media.parse_accept('multipart/related; type="image/jp2"'), NATIVE)


@pytest.mark.parametrize(
    ("header", "format"),
    [
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/*", "jpeg"),
        (None, "jpeg"),
        ("image/gif, image/png;q=0.8", "png"),
    ],
)
def test_rendered_images_are_jpeg_or_png(header: str | None, format: str) -> None:
    assert media.rendered_format(media.parse_accept(header)) == format


def test_rendered_gif_alone_is_406() -> None:
    with pytest.raises(NotAcceptable):
        media.rendered_format(media.parse_accept("image/gif"))
