"""STOW-RS's answer (PS3.18 §10.5.3, Annex I) from what became of each instance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from api_gateway.dicomweb import stow
from pydicom import Dataset

from shared.jobs import JobStatus


def job(status: str, **details: Any) -> JobStatus:
    return JobStatus(
        study_id=uuid4(),
        status=status,  # type: ignore[arg-type]
        timestamp=datetime.now(UTC),
        details=details,
    )


def instance(n: int = 1, **fields: Any) -> stow.Instance:
    values: dict[str, Any] = {
        "upload_id": uuid4(),
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_uid": f"1.2.3.4.{n}",
    }
    return stow.Instance(f"part {n}", **{**values, **fields})


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        ("invalid-uid", stow.DOES_NOT_MATCH_SOP_CLASS),
        ("missing-attribute", stow.DOES_NOT_MATCH_SOP_CLASS),
        ("unsupported-transfer-syntax", stow.TRANSFER_SYNTAX_NOT_SUPPORTED),
        ("not-dicom", stow.CANNOT_UNDERSTAND),
        ("too-large", stow.OUT_OF_RESOURCES),
    ],
)
def test_a_rejection_is_a_failure_with_the_matching_reason(code: str, failure: int) -> None:
    one = instance()
    stow._settle(one, job("rejected", reasons=[{"code": code, "message": "why"}]), False)
    assert (one.failure, one.reason) == (failure, "why")


def test_pending_validated_and_failed_jobs() -> None:
    pending, validated, archived, failed = (instance(n) for n in range(4))
    stow._settle(pending, job("validating"), True)
    stow._settle(validated, job("validated"), False)
    stow._settle(archived, job("archived"), False)
    stow._settle(failed, job("failed"), False)
    assert (pending.warning, pending.failure) == (stow.VALIDATION_PENDING, None)
    assert (validated.warning, validated.failure) == (None, None)
    assert (archived.warning, archived.failure) == (None, None)
    assert failed.failure == stow.PROCESSING_FAILURE


def test_the_status_code_is_200_202_or_409() -> None:
    base = "http://host/dicomweb"
    ok, warned, bad = instance(1), instance(2, warning=stow.VALIDATION_PENDING), instance(3)
    bad.failure = stow.CANNOT_UNDERSTAND
    assert stow.store_response([ok], base, None)[0] == 200
    assert stow.store_response([ok, warned], base, None)[0] == 202
    assert stow.store_response([ok, bad], base, None)[0] == 202
    assert stow.store_response([bad], base, None)[0] == 409


def test_the_response_module_names_each_instance_and_its_upload_id() -> None:
    ok, bad = instance(1), instance(2)
    ok.file = object()  # type: ignore[assignment]  # kept: its upload id is given
    bad.failure, bad.reason = stow.STUDY_UID_MISMATCH, "another study"
    status, body = stow.store_response([ok, bad], "http://host/dicomweb", None)
    assert status == 202
    ds = Dataset.from_json(body)
    assert ds.RetrieveURL == "http://host/dicomweb/studies/1.2.3"
    (stored,) = ds.ReferencedSOPSequence
    assert (
        stored.RetrieveURL
        == "http://host/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.1"
    )
    assert stored[0x0009, 0x0010].value == "dicomflow"
    assert stored[0x0009, 0x1001].value == str(ok.upload_id)
    (failed,) = ds.FailedSOPSequence
    assert failed.FailureReason == 0xC409
    assert failed[0x0009, 0x1002].value == "part 2: another study"
    assert (0x0009, 0x1001) not in failed  # nothing of it was kept
