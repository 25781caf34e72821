"""The validator's checks on mutated DICOM files: always a verdict, in bounded time and memory.

``check_file`` documents one way to fail, ``OSError`` reading the file; whatever the bytes, the
answer is a ``Verdict``: accepted with the identifiers, or rejected with reasons whose codes
are the documented ones and whose messages quote no value (patient data).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from hypothesis import event, example, given, note
from pydicom import dcmread
from validator_service.rules import Limits, Verdict, check_file

from tests.fuzz.bounds import bounded
from tests.fuzz.conftest import cases
from tests.fuzz.mutations import Mutant, mutants, seed

# README, "The job lifecycle": the rejection codes
CODES = frozenset(
    {
        "empty-file",
        "not-dicom",
        "missing-file-meta",
        "bad-file-meta",
        "missing-attribute",
        "invalid-uid",
        "truncated",
        "pixel-data-length",
        "pixel-attributes",
        "pixel-data-encapsulation",
        "too-large",
        "too-large-decoded",
        "too-many-elements",
        "unsupported-transfer-syntax",
        "too-deep",
        "unreadable",
    }
)
LIMITS = Limits()  # what the validator runs with by default (ValidatorSettings' values)


def patient_names(data: bytes) -> list[str]:
    """Values in the file that are patient data, to look for in the messages."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=True, specific_tags=["PatientName", "PatientID"])
            values = [str(ds.get(k) or "") for k in ("PatientName", "PatientID")]
    except Exception:
        return []
    return [v for v in values if len(v.strip()) >= 4 and re.search("[A-Za-z]", v)]


def check(workdir: Path, data: bytes, case: Mutant | None = None) -> Verdict:
    path = workdir / "validator-case.dcm"
    path.write_bytes(data)
    with bounded("validator", seconds=5, memory_mb=256, case=case):
        return check_file(path, LIMITS)


@given(mutants())
@cases("validator")
@example(Mutant("CT_small.dcm"))
# found by fuzzing: the length of InstanceNumber made to swallow the pixel module, so that the
# pixel data's items and delimiter stood where data elements should be; it was accepted
@example(Mutant("SC_rgb_rle_32bit.dcm", (("length", 0x00200013, 414),)))
def test_validator_answers_every_mutated_file_with_a_verdict(workdir: Path, mutant: Mutant) -> None:
    note(repr(mutant))
    verdict = check(workdir, mutant.data, mutant)
    event(verdict.reasons[0].code if verdict.reasons else "accepted")
    assert isinstance(verdict, Verdict)
    assert verdict.accepted == (verdict.ids is not None)
    assert verdict.accepted or verdict.reasons
    for reason in verdict.reasons:
        assert reason.code in CODES, reason
        assert "MemoryError" not in reason.message, "the case hit the address-space cap"
    said = " ".join(r.message for r in (*verdict.reasons, *verdict.warnings))
    for value in patient_names(mutant.data):
        assert value not in said, "a message quotes patient data"


def test_the_seeds_are_there_and_mostly_valid(workdir: Path) -> None:
    """The fuzzer starts from real files: each seed loads, and most are accepted unchanged."""
    from tests.fuzz.mutations import SEEDS

    accepted = [name for name in SEEDS if check(workdir, seed(name).data).accepted]
    assert len(accepted) >= len(SEEDS) * 2 // 3, accepted
    assert seed("CT_small.dcm").fields[0x00280010].length == 2  # the layout found Rows
