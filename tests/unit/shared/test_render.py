"""The display pipeline on pydicom's own test files, checked pixel by pixel against references."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from shared import render
from shared.render import RenderError, has_pixels, render_png, to_display


def read(name: str) -> Dataset:
    """A file bundled with pydicom; never one it would download (unit tests stay offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return dcmread(path)


def window_reference(values: NDArray[np.float64], center: float, width: float) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2.1 (LINEAR) written out, with 0-255 as the output range."""
    c, w = center - 0.5, width - 1
    y = np.where(
        values <= c - w / 2,
        0.0,
        np.where(values > c + w / 2, 255.0, ((values - c) / w + 0.5) * 255),
    )
    return np.rint(y).astype(np.uint8)


def min_max_reference(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    low, high = values.min(), values.max()
    return np.rint((values - low) / (high - low) * 255).astype(np.uint8)


def rescaled(ds: Dataset) -> NDArray[np.float64]:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def synthetic(arr: NDArray[np.generic], pi: str = "MONOCHROME2", bits_stored: int = 16) -> Dataset:
    """A native little-endian image made in memory from an array."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientName = "Doe^Jane"
    ds.set_pixel_data(arr, pi, bits_stored, generate_instance_uid=False)
    return ds


def png_pixels(data: bytes) -> NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


# Grayscale: modality LUT, VOI, polarity


def test_ct_small_without_a_window_shows_the_min_max_of_its_hounsfield_units() -> None:
    ds = read("CT_small.dcm")
    assert "WindowCenter" not in ds
    assert float(ds.RescaleIntercept) == -1024
    np.testing.assert_array_equal(to_display(ds), min_max_reference(rescaled(ds)))


def test_ct_small_file_window_is_applied_to_rescaled_values() -> None:
    ds = read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400  # CT_small has no window of its own
    shown = to_display(ds)
    expected = window_reference(rescaled(ds), 40, 400)
    np.testing.assert_array_equal(shown, expected)
    assert np.count_nonzero((shown > 0) & (shown < 255)) > 0  # some pixels inside the window


def test_file_window_with_rescale_on_jpeg_2000() -> None:
    ds = read("693_J2KI.dcm")  # JPEG 2000 lossy, signed, Rescale and Window in the file
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_array_equal(to_display(ds), window_reference(rescaled(ds), center, width))


def test_explicit_window_overrides_the_files() -> None:
    ds = read("MR_small.dcm")
    values = ds.pixel_array.astype(np.float64)
    by_file = to_display(ds)
    np.testing.assert_array_equal(
        by_file, window_reference(values, float(ds.WindowCenter), float(ds.WindowWidth))
    )
    overridden = to_display(ds, window=(1000, 500))
    np.testing.assert_array_equal(overridden, window_reference(values, 1000, 500))
    assert not np.array_equal(overridden, by_file)


@pytest.mark.parametrize("window", [(40, 0), (40, 0.5), (40, float("nan")), (float("inf"), 400)])
def test_explicit_window_must_be_usable(window: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="window"):
        to_display(read("CT_small.dcm"), window=window)


def test_sigmoid_voi_lut_function() -> None:
    ds = read("MR_small.dcm")
    ds.VOILUTFunction = "SIGMOID"
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values = ds.pixel_array.astype(np.float64)
    expected = np.rint(255 / (1 + np.exp(-4 * (values - center) / width))).astype(np.uint8)
    np.testing.assert_array_equal(to_display(ds), expected)


def test_malformed_file_window_falls_back_to_min_max() -> None:
    ds = read("MR_small.dcm")
    ds.WindowWidth = 0  # LINEAR needs a width of at least 1
    np.testing.assert_array_equal(to_display(ds), min_max_reference(ds.pixel_array * 1.0))


def test_monochrome1_is_inverted() -> None:
    # pydicom bundles no MONOCHROME1 image: relabel a MONOCHROME2 one, same values, other polarity
    ds = read("MR_small.dcm")
    as_monochrome2 = to_display(ds)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(to_display(ds), 255 - as_monochrome2)
    assert np.ptp(as_monochrome2) > 100


def test_voi_lut_sequence() -> None:
    # pydicom bundles no VOI LUT Sequence either: a 4-entry, 8-bit LUT starting at 1000
    ds = synthetic(np.array([[0, 1000, 1001], [1002, 1003, 5000]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [4, 1000, 8]
    item.LUTData = [10, 20, 200, 255]
    ds.VOILUTSequence = Sequence([item])
    expected = np.array([[10, 10, 20], [200, 255, 255]], dtype=np.uint8)  # 8 bits: as they are
    np.testing.assert_array_equal(to_display(ds), expected)


def test_voi_lut_sequence_after_rescale() -> None:
    ds = synthetic(np.array([[0, 1], [2, 3]], dtype=np.uint16))
    ds.RescaleSlope, ds.RescaleIntercept = 1, 1000  # float output, rounded to index the LUT
    item = Dataset()
    item.LUTDescriptor = [4, 1000, 16]
    item.LUTData = [0, 1000, 30000, 65535]
    ds.VOILUTSequence = Sequence([item])
    expected = np.rint(np.array([[0, 1000], [30000, 65535]]) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_display(ds), expected)


def test_window_is_preferred_to_a_voi_lut_sequence() -> None:
    ds = read("MR_small.dcm")
    by_window = to_display(ds)
    item = Dataset()
    item.LUTDescriptor = [2, 0, 8]
    item.LUTData = [0, 255]
    ds.VOILUTSequence = Sequence([item])
    np.testing.assert_array_equal(to_display(ds), by_window)


def test_modality_lut_sequence_then_min_max() -> None:
    ds = synthetic(np.array([[0, 1], [2, 3]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = [100, 150, 300, 600]
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    expected = min_max_reference(np.array([[100, 150], [300, 600]], dtype=np.float64))
    np.testing.assert_array_equal(to_display(ds), expected)


def test_enhanced_functional_groups_give_the_frames_rescale_and_window() -> None:
    stored = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8) * 10
    ds = synthetic(stored)
    shared, frames = Dataset(), [Dataset(), Dataset()]
    shared.FrameVOILUTSequence = Sequence([Dataset()])
    shared.FrameVOILUTSequence[0].WindowCenter = 300
    shared.FrameVOILUTSequence[0].WindowWidth = 200
    for i, group in enumerate(frames):
        group.PixelValueTransformationSequence = Sequence([Dataset()])
        group.PixelValueTransformationSequence[0].RescaleSlope = 1
        group.PixelValueTransformationSequence[0].RescaleIntercept = -100 * i
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    for frame in (0, 1):
        expected = window_reference(stored[frame] - 100.0 * frame, 300, 200)
        np.testing.assert_array_equal(to_display(ds, frame=frame), expected)


def test_constant_image_does_not_divide_by_zero() -> None:
    ds = synthetic(np.full((4, 5), 1234, dtype=np.int16))
    np.testing.assert_array_equal(to_display(ds), np.zeros((4, 5), dtype=np.uint8))
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert (to_display(ds) == 255).all()


def test_signed_values_without_rescale() -> None:
    stored = np.array([[-2000, -1], [0, 1500]], dtype=np.int16)
    np.testing.assert_array_equal(
        to_display(synthetic(stored)), min_max_reference(stored.astype(np.float64))
    )


def test_one_bit_segmentation() -> None:
    ds = read("liver_1frame.dcm")  # Bits Allocated 1, enhanced multi-frame
    np.testing.assert_array_equal(to_display(ds), ds.pixel_array.astype(np.uint8) * 255)


def test_thirty_two_bit_dose_frame() -> None:
    ds = read("rtdose.dcm")  # 15 frames, 32-bit unsigned
    np.testing.assert_array_equal(
        to_display(ds, frame=2), min_max_reference(ds.pixel_array[2].astype(np.float64))
    )


def test_float_pixel_data_with_nan() -> None:
    ds = synthetic(np.zeros((1, 1), dtype=np.uint16))
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    values = np.array([[-1.5, 0.0], [np.nan, 1.5]], dtype="<f4")
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 32
    ds.FloatPixelData = values.tobytes()
    assert has_pixels(ds)
    np.testing.assert_array_equal(to_display(ds), np.array([[0, 128], [0, 255]], dtype=np.uint8))


# Transfer syntaxes: encodings of the same pixels show the same


@pytest.mark.parametrize(
    "encoded",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_encodings_show_exactly_the_native_image(encoded: str) -> None:
    np.testing.assert_array_equal(to_display(read(encoded)), to_display(read("MR_small.dcm")))


def test_jpeg_2000_lossy() -> None:
    ds = read("JPEG2000.dcm")
    shown = to_display(ds)
    assert shown.shape == (ds.Rows, ds.Columns) == (1024, 256)
    np.testing.assert_array_equal(shown, min_max_reference(ds.pixel_array.astype(np.float64)))


def test_deflated_transfer_syntax() -> None:
    ds = read("image_dfl.dcm")
    assert ds.file_meta.TransferSyntaxUID.name == "Deflated Explicit VR Little Endian"
    np.testing.assert_array_equal(to_display(ds), min_max_reference(ds.pixel_array * 1.0))


# Colour

RED, LIGHT_BLUE = (255, 0, 0), (128, 128, 255)  # SC_rgb* at (0, 0) and (50, 50)


def test_rgb_shown_as_rgb() -> None:
    shown = to_display(read("SC_rgb_rle.dcm"))
    assert shown.shape == (100, 100, 3)
    assert shown.dtype == np.uint8
    assert tuple(shown[0, 0]) == RED
    assert tuple(shown[50, 50]) == LIGHT_BLUE


@pytest.mark.parametrize("encoded", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_16bit.dcm"])
def test_lossless_rgb_encodings_match_rle(encoded: str) -> None:
    # JPEG lossless (process 14, SV1); 16 bits per sample keep their high byte
    np.testing.assert_array_equal(to_display(read(encoded)), to_display(read("SC_rgb_rle.dcm")))


def test_thirty_two_bit_rgb_keeps_its_high_byte() -> None:
    np.testing.assert_array_equal(
        to_display(read("SC_rgb_rle_32bit.dcm")), to_display(read("SC_rgb_rle.dcm"))
    )


@pytest.mark.parametrize(
    ("encoded", "max_error", "mean_error"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", 8, 1.0),  # JPEG baseline, YBR_FULL
        ("SC_ybr_full_422_uncompressed.dcm", 8, 1.0),  # native YBR_FULL_422
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 90, 3.0),  # JPEG baseline, YBR_FULL_422 (chroma halved)
    ],
)
def test_ybr_is_converted_to_rgb(encoded: str, max_error: int, mean_error: float) -> None:
    ds = read(encoded)
    assert ds.PhotometricInterpretation.startswith("YBR_FULL")
    shown = to_display(ds).astype(int)
    error = np.abs(shown - to_display(read("SC_rgb_rle.dcm")).astype(int))
    assert error.max() <= max_error
    assert error.mean() <= mean_error
    # Left as YCbCr, pure red would read about (76, 85, 255)
    assert shown[0, 0, 0] >= 245
    assert shown[0, 0, 1:].max() <= 10


def test_multi_frame_decodes_the_frame_asked_for() -> None:
    ds = read("examples_ybr_color.dcm")  # 30 frames, JPEG baseline, YBR_FULL_422
    third, first = to_display(ds, frame=2), to_display(ds, frame=0)
    assert not np.array_equal(third, first)
    np.testing.assert_array_equal(third, ds.pixel_array[2])  # pydicom's own YBR to RGB


def test_frame_out_of_range() -> None:
    with pytest.raises(IndexError, match="frame 15"):
        to_display(read("rtdose.dcm"), frame=15)


def test_palette_color_through_its_16_bit_palette() -> None:
    ds = read("examples_palette.dcm")
    assert ds.RedPaletteColorLookupTableDescriptor == [256, 0, 16]
    lut = np.stack(
        [
            np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
            for colour in ("Red", "Green", "Blue")
        ],
        axis=-1,
    )
    expected = (lut[ds.pixel_array] >> 8).astype(np.uint8)  # the high byte of each entry
    shown = to_display(ds)
    assert shown.shape == (350, 800, 3)
    np.testing.assert_array_equal(shown, expected)


# Failures


def test_no_pixel_data() -> None:
    ds = read("rtplan.dcm")
    assert not has_pixels(ds)
    with pytest.raises(RenderError, match="no pixel data"):
        render_png(ds)


def test_empty_pixel_data_is_no_pixel_data() -> None:
    ds = synthetic(np.zeros((2, 2), dtype=np.uint8), bits_stored=8)
    ds.PixelData = b""
    assert not has_pixels(ds)


def test_undecodable_stream_is_a_render_error_without_values() -> None:
    ds = read("JPEG-lossy.dcm")  # 12-bit JPEG extended that the installed plugins refuse
    with pytest.raises(RenderError) as caught:
        render_png(ds)
    message = str(caught.value)
    assert message == "cannot decode pixel data: RuntimeError (JPEG Extended (Process 2 and 4))"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_corrupt_jpeg_2000_stream() -> None:
    ds = read("JPEG2000.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 8]])
    with pytest.raises(RenderError, match=r"^cannot decode pixel data: \w+ \(JPEG 2000"):
        to_display(ds)


def test_a_decoder_panic_is_a_render_error() -> None:
    """Found by fuzzing: pylibjpeg-rle (Rust) panics on an RLE frame longer than Rows x
    Columns say, and pyo3's PanicException is a BaseException, which got past every guard."""
    ds = read("MR_small_RLE.dcm")
    ds.Rows = ds.Columns = 1
    with pytest.raises(RenderError, match=r"^cannot decode pixel data: DecoderPanic \(RLE"):
        to_display(ds)


def test_a_frame_larger_than_a_preview_is_refused_before_decoding() -> None:
    """Found by fuzzing: an RLE image whose Rows and Columns claim 32768 x 32768 at 16 bits
    (2 GiB, within the validator's budget) made the decoder allocate 2 GiB (or abort the
    process where memory is capped) before it found the stream too short."""
    ds = read("MR_small_RLE.dcm")
    ds.Rows = ds.Columns = 32768
    with pytest.raises(RenderError, match=r"^the frame claims 1073741824 samples, more than"):
        to_display(ds)
    ds.Rows, ds.Columns = 8192, 8192  # the largest frame shown: decoding is tried (and fails)
    with pytest.raises(RenderError, match=r"^cannot decode pixel data"):
        to_display(ds)


def test_missing_decoder_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoder(uid: str) -> None:
        raise NotImplementedError(f"no decoder for {uid}")

    monkeypatch.setattr(render, "get_decoder", no_decoder)
    with pytest.raises(RenderError, match=r"NotImplementedError \(Explicit VR Little Endian\)"):
        to_display(read("CT_small.dcm"))


def test_unreadable_number_of_frames() -> None:
    ds = read("badVR.dcm")  # Number of Frames '1A'
    with pytest.warns(UserWarning, match="Invalid value for VR IS"), pytest.raises(RenderError):
        to_display(ds)


def test_unsupported_photometric_interpretation() -> None:
    ds = read("SC_rgb_rle.dcm")
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(RenderError, match="HSV"):
        to_display(ds)


def test_dataset_is_left_as_it_was() -> None:
    ds = read("693_J2KI.dcm")
    before = copy.deepcopy(ds)
    render_png(ds, window=(40, 400))
    assert ds == before


# PNG


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm"])
def test_png_holds_exactly_the_display_array_at_full_resolution(name: str) -> None:
    ds = read(name)
    pixels = png_pixels(render_png(ds))
    assert pixels.shape[:2] == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(pixels, to_display(ds))


def test_png_compress_level_is_passed_through() -> None:
    ds = read("CT_small.dcm")
    stored, packed = render_png(ds, compress_level=0), render_png(ds, compress_level=3)
    assert len(packed) < len(stored)
    np.testing.assert_array_equal(png_pixels(stored), png_pixels(packed))


def test_png_of_an_explicit_window_and_frame() -> None:
    ds = read("rtdose.dcm")
    pixels = png_pixels(render_png(ds, frame=3, window=(1_000_000, 200_000)))
    np.testing.assert_array_equal(pixels, to_display(ds, frame=3, window=(1_000_000, 200_000)))


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm", "MR_small_bigendian.dcm"]
)
@pytest.mark.parametrize("window", [None, (40.0, 400.0), (1000.0, 1.0)])
@pytest.mark.parametrize("drop_window", [False, True])
def test_lookup_table_path_gives_the_same_image_as_the_direct_pipeline(
    name: str, window: tuple[float, float] | None, drop_window: bool
) -> None:
    ds = dcmread(get_testdata_file(name, download=False))
    if drop_window:  # exercises the min-max fallback
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
            ds.pop(keyword, None)
    arr = ds.pixel_array[0] if ds.get("NumberOfFrames", 1) > 1 else ds.pixel_array
    attrs = render._frame_attributes(ds, 0)
    assert arr.dtype.kind in "iu"
    via_table = render._grayscale(arr, attrs, window)
    direct = render._shade(arr, attrs, window)
    np.testing.assert_array_equal(via_table, direct)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5), (64, 33, 3), (1, 1, 3)])
def test_png_encoder_round_trips_every_shape_and_value(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image.flat[0], image.flat[-1] = 255, 0  # differences that wrap modulo 256
    data = render.encode_png(image)
    np.testing.assert_array_equal(png_pixels(data), image)
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.verify()  # chunk CRCs
    assert data.count(b"IDAT") == 1


def test_png_encoder_writes_the_chunks_other_decoders_read() -> None:
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    data = render.encode_png(image)
    decoded = png_by_the_spec(data)  # a second, independent decoder: zlib + the spec's Up filter
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_png_encoder_refuses_what_it_cannot_encode(image: NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        render.encode_png(image)  # type: ignore[arg-type]


def png_by_the_spec(data: bytes) -> NDArray[np.uint8]:
    """Read a single-IDAT 8-bit grayscale PNG by the spec, undoing the Up filter."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        chunks[kind] = body
        at += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 0)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width + 1)
    assert set(raw[:, 0]) == {2}
    return np.cumsum(raw[:, 1:], axis=0, dtype=np.uint8)


def test_png_encoder_splits_large_data_over_several_idat_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render, "IDAT_MAX", 100)
    image = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = render.encode_png(image)
    assert data.count(b"IDAT") > 10
    np.testing.assert_array_equal(png_pixels(data), image)
