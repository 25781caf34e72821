"""JPEG and PNG images made by Pillow, as Secondary Capture instances read back by pydicom."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from api_gateway import secondary_capture
from api_gateway.secondary_capture import ImageConversionError, image_to_dicom, sniff
from numpy.typing import NDArray
from PIL import Image, ImageOps
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage

from shared.errors import PermanentError, safe_error


def gradient(width: int, height: int, mode: str) -> Image.Image:
    """A smooth picture (JPEG round trips stay close) with different channels."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    r = (x + 0 * y).astype(np.uint8)
    g = (0 * x + y).astype(np.uint8)
    b = ((x + y) / 2).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(g)
    return Image.fromarray(np.dstack([r, g, b]))


def save(img: Image.Image, path: Path, fmt: str, **options: object) -> Path:
    img.save(path, fmt, **options)
    return path


def convert(tmp_path: Path, source: Path, kind: str, name: str = "out.dcm") -> Dataset:
    dest = tmp_path / name
    image_to_dicom(source, dest, kind=kind, filename=source.name)  # type: ignore[arg-type]
    assert dest.read_bytes()[128:132] == b"DICM"
    return dcmread(dest)


def pillow_pixels(path: Path, mode: str) -> NDArray[np.uint8]:
    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


def over_black(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Colour times alpha, rounded: the composite over black the module promises."""
    values = rgba.astype(np.uint16)
    return ((values[..., :-1] * values[..., -1:] + 127) // 255).astype(np.uint8)


def assert_common(ds: Dataset, rows: int, columns: int) -> None:
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Rows == rows
    assert ds.Columns == columns
    assert ds.Modality == "OT"
    assert ds.ConversionType == "WSD"
    assert ds.PatientName == ""
    assert ds.PatientID == ""
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StudyDate == ds.ContentDate == datetime.now(UTC).strftime("%Y%m%d")
    assert ds.StudyTime
    assert ds.ContentTime
    assert ds.SeriesNumber == 1
    assert ds.InstanceNumber == 1
    assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
    assert ds.PixelRepresentation == 0
    assert ds.HighBit == ds.BitsStored - 1
    if ds.SamplesPerPixel == 3:
        assert ds.PlanarConfiguration == 0


# --- sniff --------------------------------------------------------------------------------


def test_sniff_tells_dicom_jpeg_png_and_anything_else(tmp_path: Path) -> None:
    dicom = Path(get_testdata_file("CT_small.dcm", download=False) or "")
    jpeg = save(gradient(8, 8, "RGB"), tmp_path / "a.jpg", "JPEG")
    png = save(gradient(8, 8, "RGB"), tmp_path / "a.png", "PNG")
    assert sniff(dicom.read_bytes()[:132]) == "dicom"
    assert sniff(jpeg.read_bytes()[:132]) == "jpeg"
    assert sniff(png.read_bytes()[:132]) == "png"
    assert sniff(b"hello, this is text" * 10) is None
    assert sniff(b"") is None


# --- JPEG ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subsampling", "photometric"), [(2, "YBR_FULL_422"), (1, "YBR_FULL_422"), (0, "YBR_FULL")]
)
def test_a_baseline_colour_jpeg_keeps_its_bitstream(
    tmp_path: Path, subsampling: int, photometric: str
) -> None:
    source = save(gradient(64, 48, "RGB"), tmp_path / "photo.jpg", "JPEG", subsampling=subsampling)
    ds = convert(tmp_path, source, "jpeg")

    assert_common(ds, 48, 64)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == photometric
    assert ds.SamplesPerPixel == 3
    assert ds.BitsAllocated == 8
    assert ds.BitsStored == 8
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    assert ds.SeriesDescription == "photo.jpg"
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    # Pillow writes nothing that is left out; an odd-length fragment gets one byte of padding
    assert frame in (source.read_bytes(), source.read_bytes() + b"\x00")
    got = ds.pixel_array.astype(int)  # pydicom gives YBR as RGB
    want = pillow_pixels(source, "RGB").astype(int)
    assert np.abs(got - want).max() <= 3
    assert np.abs(got - want).mean() < 0.5


def test_a_baseline_jpeg_of_rgb_components_says_rgb(tmp_path: Path) -> None:
    """Adobe APP14 with transform 0: the components are R, G, B, not YCbCr (PS3.5 8.2.1)."""
    source = save(gradient(32, 24, "RGB"), tmp_path / "rgb.jpg", "JPEG", keep_rgb=True)
    ds = convert(tmp_path, source, "jpeg")
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "RGB"
    want = pillow_pixels(source, "RGB").astype(int)
    assert np.abs(ds.pixel_array.astype(int) - want).max() <= 3


def test_a_baseline_grey_jpeg_keeps_its_bitstream(tmp_path: Path) -> None:
    source = save(gradient(40, 30, "L"), tmp_path / "grey.jpg", "JPEG")
    ds = convert(tmp_path, source, "jpeg")

    assert_common(ds, 30, 40)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.SamplesPerPixel == 1
    assert np.abs(ds.pixel_array.astype(int) - pillow_pixels(source, "L")).max() <= 1


def test_metadata_and_trailing_bytes_are_left_out_of_the_bitstream(tmp_path: Path) -> None:
    img = gradient(32, 32, "RGB")
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0xA431] = "SERIAL-12345"  # BodySerialNumber
    source = tmp_path / "phone.jpg"
    img.save(source, "JPEG", exif=exif.tobytes(), comment=b"Jane Doe's wound")
    source.write_bytes(source.read_bytes() + b"MOTION-PHOTO-VIDEO")  # data after EOI
    ds = convert(tmp_path, source, "jpeg")

    raw = (tmp_path / "out.dcm").read_bytes()
    for text in (b"SecretCameraMaker", b"SERIAL-12345", b"Jane Doe", b"MOTION", b"Exif"):
        assert text not in raw
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.startswith(b"\xff\xd8")
    assert frame.endswith((b"\xff\xd9", b"\xff\xd9\x00"))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    with Image.open(io.BytesIO(frame)) as again:  # still the same picture
        assert np.array_equal(np.asarray(again), pillow_pixels(source, "RGB"))


def test_an_icc_profile_moves_to_the_icc_profile_attribute(tmp_path: Path) -> None:
    cms = pytest.importorskip("PIL.ImageCms")
    icc = cms.ImageCmsProfile(cms.createProfile("sRGB")).tobytes()
    source = save(gradient(16, 16, "RGB"), tmp_path / "icc.jpg", "JPEG", icc_profile=icc)
    ds = convert(tmp_path, source, "jpeg")
    assert ds.ICCProfile == icc
    assert b"ICC_PROFILE" not in next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_progressive_jpeg_is_decoded_and_stored_uncompressed(tmp_path: Path, mode: str) -> None:
    source = save(gradient(50, 20, mode), tmp_path / "p.jpg", "JPEG", progressive=True)
    ds = convert(tmp_path, source, "jpeg")

    assert_common(ds, 20, 50)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == ("RGB" if mode == "RGB" else "MONOCHROME2")
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    np.testing.assert_array_equal(ds.pixel_array, pillow_pixels(source, mode))


def test_a_cmyk_jpeg_is_stored_as_rgb(tmp_path: Path) -> None:
    r, g, b = gradient(24, 16, "RGB").split()
    cmyk = Image.merge("CMYK", (r, g, b, Image.new("L", (24, 16), 30)))
    source = save(cmyk, tmp_path / "print.jpg", "JPEG")
    ds = convert(tmp_path, source, "jpeg")
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(ds.pixel_array, pillow_pixels(source, "RGB"))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_jpeg_turned_by_exif_is_stored_upright(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: int
) -> None:
    monkeypatch.setattr(secondary_capture, "_STRIP_PIXELS", 100)  # many strips, odd last one
    exif = Image.Exif()
    exif[0x0112] = orientation
    source = tmp_path / "turned.jpg"
    gradient(37, 23, "RGB").save(source, "JPEG", exif=exif.tobytes())
    ds = convert(tmp_path, source, "jpeg")

    with Image.open(source) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert (ds.Rows, ds.Columns) == upright.shape[:2]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(ds.pixel_array, upright)


# --- PNG ----------------------------------------------------------------------------------


def rgba_picture() -> Image.Image:
    rgb = np.asarray(gradient(30, 20, "RGB"))
    alpha = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (20, 1))
    return Image.merge("RGBA", (*Image.fromarray(rgb).split(), Image.fromarray(alpha)))


def png_cases() -> dict[str, tuple[Image.Image, str, NDArray[np.generic]]]:
    """Pillow mode -> (image, photometric, the pixels pydicom must give back)."""
    grey = gradient(30, 20, "L")
    rgb = gradient(30, 20, "RGB")
    rgba = rgba_picture()
    la = Image.merge("LA", (grey, rgba.getchannel("A")))
    words = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 109).astype(np.uint16)
    i16 = Image.fromarray(words)
    palette = rgb.quantize(16)
    clear = palette.copy()
    clear.info["transparency"] = 0  # palette entry 0 is transparent
    bits = grey.point(lambda v: 255 if v > 128 else 0).convert("1")
    clear_rgba = np.asarray(clear.convert("RGBA"))
    return {
        "L": (grey, "MONOCHROME2", np.asarray(grey)),
        "LA": (la, "MONOCHROME2", over_black(np.asarray(la))[..., 0]),
        "1": (bits, "MONOCHROME2", np.asarray(bits.convert("L"))),
        "I;16": (i16, "MONOCHROME2", words),
        "RGB": (rgb, "RGB", np.asarray(rgb)),
        "RGBA": (rgba, "RGB", over_black(np.asarray(rgba))),
        "P": (palette, "RGB", np.asarray(palette.convert("RGB"))),
        "P+transparency": (clear, "RGB", over_black(clear_rgba)),
    }


@pytest.mark.parametrize("case", list(png_cases()))
def test_a_png_is_stored_uncompressed_pixel_for_pixel(tmp_path: Path, case: str) -> None:
    img, photometric, want = png_cases()[case]
    source = save(img, tmp_path / "scan.png", "PNG", transparency=img.info.get("transparency"))
    with Image.open(source) as check:
        assert check.mode == case.split("+")[0]  # the PNG really has that mode
    ds = convert(tmp_path, source, "png")

    assert_common(ds, 20, 30)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == photometric
    assert ds.SamplesPerPixel == (3 if photometric == "RGB" else 1)
    assert ds.BitsAllocated == ds.BitsStored == (16 if case == "I;16" else 8)
    assert "LossyImageCompression" not in ds
    np.testing.assert_array_equal(ds.pixel_array, want)


def test_an_odd_number_of_pixel_bytes_is_padded(tmp_path: Path) -> None:
    source = save(gradient(3, 3, "L"), tmp_path / "tiny.png", "PNG")
    ds = convert(tmp_path, source, "png")
    assert len(ds.PixelData) == 10
    np.testing.assert_array_equal(ds.pixel_array, np.asarray(gradient(3, 3, "L")))


def test_two_conversions_get_their_own_uids_and_a_safe_label(tmp_path: Path) -> None:
    source = save(gradient(4, 4, "L"), tmp_path / "a.png", "PNG")
    image_to_dicom(source, tmp_path / "1.dcm", kind="png", filename="C:\\scans\\x\x07\\knee.png")
    image_to_dicom(source, tmp_path / "2.dcm", kind="png")
    one, two = dcmread(tmp_path / "1.dcm"), dcmread(tmp_path / "2.dcm")
    assert one.SOPInstanceUID != two.SOPInstanceUID
    assert one.StudyInstanceUID != two.StudyInstanceUID
    assert one.SeriesDescription == "knee.png"
    assert "SeriesDescription" not in two


# --- refusals -----------------------------------------------------------------------------


def png_with_header(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR claiming a size, with a valid CRC, and nothing else."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def jpeg_with_frame(width: int, height: int, precision: int = 8) -> bytes:
    """SOI and a baseline frame header claiming a size, then a scan header and EOI."""
    sof = bytes([precision]) + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    return (
        b"\xff\xd8\xff\xc0"
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xda"
        + struct.pack(">H", len(sos) + 2)
        + sos
        + b"\x00\xff\xd9"
    )


def refused(tmp_path: Path, data: bytes, kind: str) -> ImageConversionError:
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    with pytest.raises(ImageConversionError) as caught:
        image_to_dicom(source, tmp_path / "out.dcm", kind=kind)  # type: ignore[arg-type]
    assert not (tmp_path / "out.dcm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]  # no temporary left
    assert isinstance(caught.value, PermanentError)
    assert safe_error(caught.value) == str(caught.value)
    assert caught.value.__cause__ is None
    return caught.value


def test_a_truncated_png_is_refused(tmp_path: Path) -> None:
    data = (save(gradient(64, 64, "RGB"), tmp_path / "whole.png", "PNG")).read_bytes()
    (tmp_path / "whole.png").unlink()
    assert "truncated" in str(refused(tmp_path, data[: len(data) // 2], "png"))


def test_a_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = (save(gradient(64, 64, "RGB"), tmp_path / "whole.jpg", "JPEG")).read_bytes()
    (tmp_path / "whole.jpg").unlink()
    assert "truncated" in str(refused(tmp_path, data[: len(data) // 2], "jpeg"))
    assert "truncated" in str(refused(tmp_path, data[:300], "jpeg"))


def test_a_text_file_is_neither(tmp_path: Path) -> None:
    text = b"Patient: Jane Doe\n" * 20
    assert str(refused(tmp_path, text, "png")) == "the file is not a PNG"
    assert str(refused(tmp_path, text, "jpeg")) == "the file is not a JPEG"


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    for data, kind in (
        (png_with_header(100_000, 100_000), "png"),
        (jpeg_with_frame(60_000, 60_000), "jpeg"),
    ):
        message = str(refused(tmp_path, data, kind))
        assert "pixels" in message
        assert str(secondary_capture.MAX_PIXELS) in message


def test_pillows_own_bomb_check_is_ours_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = save(gradient(30, 30, "RGB"), tmp_path / "big.png", "PNG").read_bytes()
    (tmp_path / "big.png").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels > 2 x 100: an error
    assert "too large" in str(refused(tmp_path, data, "png"))


def test_a_12_bit_jpeg_is_refused(tmp_path: Path) -> None:
    ds = dcmread(get_testdata_file("JPGExtended.dcm", download=False) or "")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert "12-bit" in str(refused(tmp_path, frame, "jpeg"))
    assert "12-bit" in str(refused(tmp_path, jpeg_with_frame(8, 8, precision=12), "jpeg"))
