"""The study API on the whole pipeline: labelled files through to tags and PNGs, batches to
completion, de-identified copies, search kept by the status service, delete of everything."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from testbed.system import System
from tests.support import ct_slice

pytestmark = pytest.mark.timeout(120)


def wait_batch(system: System, batch_id: str, seconds: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    with system.client() as c:
        while time.monotonic() < deadline:
            status = c.get(f"/upload/batch/{batch_id}/status").json()
            if status["status"] in ("completed", "failed"):
                return dict(status)
            time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not done: {status}")


def test_seed_004_files_by_label_with_tags_and_png(system: System, tmp_path: Path) -> None:
    with system.client() as c:
        files = [
            ("files", ("IM000001", ct_slice(0, rows=64, columns=48))),
            ("files", ("IM000020", ct_slice(1, rows=64, columns=48))),
        ]
        answer = c.post("/upload", data={"study": "Test"}, files=files)
        assert answer.status_code == 202, answer.text
        ids = [u["study_id"] for u in answer.json()["uploads"]]
        assert {s["status"] for s in system.wait_final(ids).values()} == {"archived"}
        tags = c.get(
            "/files/Test/IM000001/tag", params=[("tag", "(0028,0011)"), ("tag", "(0028,0010)")]
        ).json()
        assert tags["success"] is True
        assert (tags["file"], tags["study"]) == ("IM000001", "Test")
        assert [(t["tag"], t["VR"], t["VM"], t["value"]) for t in tags["tags"]] == [
            ("(0028,0011)", "US", 1, 48),
            ("(0028,0010)", "US", 1, 64),
        ]
        assert {t["keyword"] for t in tags["tags"]} == {"Columns", "Rows"}
        png = c.get("/files/Test/IM000020/png")
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (48, 64)
        assert c.get("/files/Test/IM000099/png").json()["error"] == "file not found"


def test_a_batch_runs_to_completion_and_counts_by_modality(system: System) -> None:
    with system.client() as c:
        before = c.get("/stats").json()
        files = [
            {
                "filename": f"ct{i}.dcm",
                "content": base64.b64encode(ct_slice(i, rows=32, columns=32)).decode(),
            }
            for i in range(3)
        ] + [{"filename": "bad.dcm", "content": base64.b64encode(b"not dicom").decode()}]
        answer = c.post("/upload/batch", json={"files": files}, headers={"X-User-ID": "batcher"})
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["batch_id"]
        status = wait_batch(system, batch_id)
        assert status["status"] == "completed"
        assert status["processed_files"] == status["total_files"] == 4
        assert status["progress_percentage"] == 100
        assert status["counts"] == {"archived": 3, "rejected": 1}
        after = c.get("/stats").json()
        assert after["total_uploads"] == before["total_uploads"] + 4
        assert after["by_modality"]["CT"] == before["by_modality"].get("CT", 0) + 3
        assert after["by_state"]["rejected"] == before["by_state"].get("rejected", 0) + 1
        assert "batcher" in [b["user_id"] for b in c.get("/user/batcher/batches").json()["batches"]]


def test_a_jpeg_upload_is_archived_as_secondary_capture_with_a_preview(system: System) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture, format="JPEG")
    with system.client() as c:
        answer = c.post(
            "/upload",
            content=picture.getvalue(),
            headers={"X-File-Name": "photo.jpg", "content-type": "image/jpeg"},
        )
        assert answer.status_code == 202, answer.text
        upload_id = answer.json()["upload_id"]
        final = system.wait_final([upload_id])[upload_id]
        assert final["status"] == "archived", final
        assert final["details"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7"
        preview = Image.open(final["details"]["preview_file"]).convert("RGB")
        red, green, _ = preview.getpixel((20, 15))
        assert red > 150 > green


def test_the_deidentified_copy_keeps_pixels_and_replaces_uids_consistently(
    system: System,
) -> None:
    study = pydicom.uid.generate_uid()
    with system.client() as c:
        files = [
            (
                "file",
                (
                    f"s{i}",
                    ct_slice(i, rows=32, columns=32, study_uid=study, patient_name="Doe^Jane"),
                ),
            )
            for i in range(2)
        ]
        ids = [u["study_id"] for u in c.post("/upload", files=files).json()["uploads"]]
        system.wait_final(ids)
        copies = []
        for upload_id in ids:
            answer = c.get(f"/upload/{upload_id}/preprocessed-dicom")
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/dicom"
            copies.append(pydicom.dcmread(io.BytesIO(answer.content)))
        again = pydicom.dcmread(io.BytesIO(c.get(f"/uploads/{ids[0]}/deidentified").content))
        original = pydicom.dcmread(io.BytesIO(c.get(f"/uploads/{ids[0]}/original").content))
    first = copies[0]
    assert first.PatientIdentityRemoved == "YES"
    assert "Doe" not in str(first.get("PatientName", ""))
    assert first.StudyInstanceUID != study
    assert copies[1].StudyInstanceUID == first.StudyInstanceUID  # same study, same new UID
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert first.SOPInstanceUID != original.SOPInstanceUID
    assert first.PixelData == original.PixelData


def test_search_finds_archived_studies_and_delete_forgets_them(system: System) -> None:
    study = pydicom.uid.generate_uid()
    with system.client() as c:
        files = [
            (
                "file",
                (
                    f"s{i}",
                    ct_slice(
                        i, rows=32, columns=32, study_uid=study, patient_name="Searchable^Sam"
                    ),
                ),
            )
            for i in range(3)
        ]
        ids = [u["study_id"] for u in c.post("/upload", files=files).json()["uploads"]]
        system.wait_final(ids)
        found = c.get("/studies", params={"patient_name": "SEARCHABLE*"}).json()
        assert [s["study_uid"] for s in found["studies"]] == [study]
        assert found["studies"][0]["instance_count"] == 3
        assert sorted(found["studies"][0]["upload_ids"]) == sorted(ids)
        for upload_id in ids:
            removed = c.delete(f"/uploads/{upload_id}").json()["removed"]
            assert "job record" in removed
        assert "search index entry" in removed
        gone = c.get("/studies", params={"patient_name": "SEARCHABLE*"}).json()
        assert gone["studies"] == []
