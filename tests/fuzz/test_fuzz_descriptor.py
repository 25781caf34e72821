"""The descriptor on mutated files the validator accepts: metadata and preview, or its note.

What the descriptor's worker runs for each validated file is ``archive(event, settings)``:
read the archived original, write ``metadata.json`` (strict JSON: the DICOM JSON model and a
summary, never failing on a bad value) and ``preview.png``, or a ``preview_note`` when the
renderer says why it cannot (``RenderError``). Any other exception would fail the job after
its retries; so would a case that hangs or allocates gigabytes because a mutated Rows,
Columns or NumberOfFrames claims a huge image. The gateway's tag reader (``read_tags``, the
same files later) answers or raises its ``Unreadable``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pydicom.config
import pytest
from api_gateway.tags import Unreadable, read_tags
from descriptor_service.settings import DescriptorSettings
from descriptor_service.worker import archive
from hypothesis import event, example, given, note
from hypothesis import strategies as st
from PIL import Image
from pydicom.tag import Tag
from validator_service.rules import Limits, check_file

from shared.events import FileRef, FileValidated
from shared.render import PNG_SIGNATURE
from tests.fuzz.bounds import bounded
from tests.fuzz.conftest import cases
from tests.fuzz.mutations import INTERESTING, SEEDS, Mutant, mutants, seed

TAGS = [Tag(t) for t in INTERESTING]


@pytest.fixture(scope="module")
def descriptor(workdir: Path) -> Iterator[DescriptorSettings]:
    """The descriptor's settings on a folder of its own, and pydicom read as it reads."""
    uploads, archive_path = workdir / "uploads", workdir / "archive"
    uploads.mkdir()
    mode = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE  # as __main__ sets
    yield DescriptorSettings(UPLOADS_PATH=uploads, ARCHIVE_PATH=archive_path)
    pydicom.config.settings.reading_validation_mode = mode


def _accepted_seeds() -> tuple[str, ...]:
    """The seeds the validator accepts as they are: the others' mutants would not get here."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seed.dcm"
        accepted = []
        for name in SEEDS:
            path.write_bytes(seed(name).data)
            if check_file(path, Limits()).accepted:
                accepted.append(name)
    return tuple(accepted)


ACCEPTED = _accepted_seeds()


GENTLE = mutants(ACCEPTED, fields=4, gentle=True)  # more of them get past the validator


@given(st.one_of(mutants(ACCEPTED, fields=3, changes=2), GENTLE, GENTLE))
@cases("descriptor")
@example(Mutant("CT_small.dcm+MONOCHROME1"))
@example(Mutant("examples_palette.dcm"))
# found by fuzzing: Rows x Columns of an RLE image claimed 2 GiB, within the validator's budget
# for a whole file (MAX_PIXEL_BYTES), and decoding the preview's one frame took 2 GiB
@example(
    Mutant(
        "MR_small_RLE.dcm", (("value", 0x00280010, b"\x00\x80"), ("value", 0x00280011, b"\x00\x80"))
    )
)
# found by fuzzing: pylibjpeg-rle panics (a BaseException) on a frame shorter than it expects
@example(
    Mutant(
        "MR_small_RLE.dcm", (("value", 0x00280010, b"\x01\x00"), ("value", 0x00280011, b"\x01\x00"))
    )
)
def test_descriptor_describes_every_accepted_mutant(
    descriptor: DescriptorSettings, mutant: Mutant
) -> None:
    note(repr(mutant))
    upload_id = uuid4()
    path = descriptor.uploads_path / f"{upload_id}.dcm"
    path.write_bytes(mutant.data)
    verdict = check_file(path, Limits())
    if verdict.ids is None:
        event("rejected by the validator")
        path.unlink()
        return
    event("accepted")
    validated = FileValidated(
        upload_id=upload_id,
        file=FileRef(path=str(path), sha256="0" * 64, size=len(mutant.data)),
        ids=verdict.ids,
        has_pixels=verdict.has_pixels,
    )
    try:
        with (
            warnings.catch_warnings(),
            bounded("descriptor", seconds=5, memory_mb=512, case=mutant),
        ):
            warnings.simplefilter("ignore")  # as the services run (shared.logging)
            described = archive(validated, descriptor)
            folder = Path(described.archive_path)
            try:
                answers = read_tags(folder / "original.dcm", TAGS)
            except Unreadable:
                answers = None
        metadata = json.loads((folder / "metadata.json").read_bytes(), parse_constant=_no_nan)
        assert set(metadata) >= {"summary", "dataset", "file_meta", "problems"}
        if described.preview_file is None:
            assert described.preview_note
            assert "MemoryError" not in described.preview_note, "hit the address-space cap"
            event("no preview")
        else:
            png = Path(described.preview_file).read_bytes()
            assert png.startswith(PNG_SIGNATURE)
            with Image.open(folder / "preview.png") as image:
                image.load()
            event("preview")
        assert answers is None or len(answers) == len(TAGS)
    finally:
        path.unlink(missing_ok=True)
        shutil.rmtree(descriptor.archive_path / str(upload_id), ignore_errors=True)


def _no_nan(constant: str) -> None:
    raise AssertionError(f"metadata.json holds {constant}: not strict JSON")


def test_most_seeds_are_described_with_a_preview(descriptor: DescriptorSettings) -> None:
    """The property above is not vacuous: unmutated seeds get through to a preview."""
    previews = 0
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm"):
        path = descriptor.uploads_path / f"{name}.dcm"
        path.write_bytes(seed(name).data)
        verdict = check_file(path, Limits())
        assert verdict.ids is not None, name
        ref = FileRef(path=str(path), sha256="0" * 64, size=path.stat().st_size)
        validated = FileValidated(
            upload_id=uuid4(), file=ref, ids=verdict.ids, has_pixels=verdict.has_pixels
        )
        previews += archive(validated, descriptor).preview_file is not None
    assert previews == 4
