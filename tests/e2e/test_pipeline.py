"""The five services as processes, driven over HTTP as a user would."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image

from testbed.system import NAMES, System, start_system, stop_system
from tests.support import ct_slice, pydicom_file, write_ct_series

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# pydicom test files that ship inside its wheel (others would be downloaded: no network here)
ENCODINGS = [
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_rle.dcm",  # RLE, RGB
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, RGB
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "image_dfl.dcm",  # deflated explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "examples_palette.dcm",  # PALETTE COLOR
    "rtdose.dcm",  # multi-frame, implicit VR
]


def test_upload_is_archived_with_metadata_preview_and_details(system: System) -> None:
    source = pydicom_file("CT_small.dcm")
    [upload_id] = system.upload(source)
    final = system.wait_final([upload_id])[upload_id]
    assert final["status"] == "archived", final
    details = final["details"]
    folder = Path(details["archive_path"])
    assert folder == system.archive / upload_id
    assert (folder / "original.dcm").read_bytes() == source.read_bytes()
    assert details["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert details["metadata_file"] == str(folder / "metadata.json")
    assert details["preview_file"] == str(folder / "preview.png")
    assert details["sop_instance_uid"]
    assert details["study_instance_uid"]
    assert details["modality"] == "CT"
    for stage in ("validating", "describing", "uploading", "total"):
        assert details["timings_ms"][stage] >= 0
    assert next(h["state"] for h in details["history"]) == "accepted"
    assert details["targets"][0]["target"] == "local"
    assert details["targets"][0]["checksum"] == f"sha256:{details['sha256']}"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["summary"]["sop_instance_uid"] == details["sop_instance_uid"]
    assert "InlineBinary" not in json.dumps(metadata.get("dataset", {}).get("7FE00010", {}))
    with Image.open(folder / "preview.png") as png:
        assert png.size == (128, 128)
    # the upload itself is gone once archived
    assert not (system.uploads / f"{upload_id}.dcm").exists()


def test_status_service_answers_the_same_status(system: System) -> None:
    [upload_id] = system.upload(pydicom_file("MR_small.dcm"))
    system.wait_final([upload_id])
    with system.client("status") as c:
        assert c.get(f"/status/{upload_id}").json() == system.status(upload_id)


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_encoding_is_archived_with_a_preview(system: System, name: str) -> None:
    [upload_id] = system.upload(pydicom_file(name))
    final = system.wait_final([upload_id])[upload_id]
    assert final["status"] == "archived", final
    preview = Path(final["details"]["preview_file"])
    with Image.open(preview) as png:
        assert png.size[0] > 0


def test_instance_without_pixel_data_is_archived_without_preview(system: System) -> None:
    [upload_id] = system.upload(pydicom_file("rtplan.dcm"))
    final = system.wait_final([upload_id])[upload_id]
    assert final["status"] == "archived", final
    assert "preview_file" not in final["details"]
    assert "no pixel data" in final["details"]["preview_note"]
    assert final["details"]["has_pixels"] is False


def test_several_files_in_one_request_make_one_job_each(system: System, tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, 3, seed=11, rows=64, columns=64)
    ids = system.upload(*paths)
    assert len(set(ids)) == 3
    finals = system.wait_final(ids)
    assert {f["status"] for f in finals.values()} == {"archived"}


def test_bad_files_are_rejected_with_reasons(system: System, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not DICOM\n" * 20)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct_slice(0, rows=64, columns=64)[:-1000])
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    ids = system.upload(text, truncated, empty)
    finals = system.wait_final(ids)
    for upload_id in ids:
        final = finals[upload_id]
        assert final["status"] == "rejected", final
        reasons = final["details"]["reasons"]
        assert reasons
        assert all(r["code"] and r["message"] for r in reasons)
        assert not (system.archive / upload_id).exists()
    assert finals[ids[0]]["details"]["reasons"][0]["code"] == "not-dicom"
    assert finals[ids[2]]["details"]["reasons"][0]["code"] == "empty-file"


def test_same_instance_twice_is_reported_as_duplicate_not_stored_twice(
    system: System, tmp_path: Path
) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(ct_slice(0, rows=64, columns=64, seed=99))
    [first] = system.upload(path)
    assert system.wait_final([first])[first]["status"] == "archived"
    [second] = system.upload(path)
    final = system.wait_final([second])[second]
    assert final["status"] == "archived"
    assert final["details"]["duplicate_of"] == first
    assert final["details"]["archive_path"] == str(system.archive / first)
    assert not (system.archive / second).exists()


def test_http_errors_are_json_problems(system: System) -> None:
    with system.client() as c:
        missing = c.get("/status/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
        assert missing.json()["type"] == "/problems/upload-not-found"
        assert c.get("/status/not-a-uuid").status_code == 404
        no_file = c.post("/upload", files={"other": ("a.txt", b"x")})
        assert no_file.status_code == 400
        assert no_file.json()["type"] == "/problems/no-file"
        no_name = c.post("/upload", content=b"DICM", headers={"content-type": "application/dicom"})
        assert no_name.status_code == 400
        assert "X-File-Name" in no_name.json()["detail"]
        broken = c.post(
            "/upload",
            content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert broken.status_code == 400
        assert broken.json()["detail"]
        assert list(system.uploads.glob("*.part")) == []


def test_probes_on_every_service(system: System) -> None:
    for name in NAMES:
        with system.client(name) as c:
            assert c.get("/health").json()["status"] == "healthy"
            ready = c.get("/ready")
            assert ready.status_code == 200, ready.text
            assert "# TYPE dicomflow_deliveries_total counter" in c.get("/metrics").text


def test_no_patient_data_in_any_log_line(system: System, tmp_path: Path) -> None:
    path = tmp_path / "phi.dcm"
    data = ct_slice(0, rows=32, columns=32, seed=5, patient_name="Doe^Jane^Secret")
    # an invalid DS value that quotes patient data: pydicom warns about it, quoting it
    assert data.count(b"20260101") == 1
    path.write_bytes(data.replace(b"20260101", b"Doe^Jane"))
    [upload_id] = system.upload(path)
    system.wait_final([upload_id])
    log = system.log.read_text()
    assert upload_id in log  # the log is there and carries the upload id
    assert "Doe" not in log
    assert "Jane" not in log
    assert "SYN-0001" not in log
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            assert "service" in record


@pytest.fixture(scope="module")
def small_limit_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("limited"), MAX_FILE_SIZE="200000")
    yield running
    stop_system(running)


def test_too_large_upload_gets_413_and_leaves_nothing(small_limit_system: System) -> None:
    system = small_limit_system
    with system.client() as c:
        answer = c.post("/upload", files={"file": ("big.dcm", os.urandom(300_000))})
    assert answer.status_code == 413
    assert answer.json()["type"] == "/problems/file-too-large"
    assert "MAX_FILE_SIZE" in answer.json()["detail"]
    assert list(system.uploads.iterdir()) == []


def test_sigkill_of_workers_mid_load_loses_nothing(system: System, tmp_path: Path) -> None:
    """SIGKILL each service mid-load: every accepted upload still ends archived, exactly once."""
    paths = write_ct_series(tmp_path / "load", 60, seed=7, rows=128, columns=128)
    ids: list[str] = []
    victims = ["descriptor", "validator", "status", "uploader", "gateway"]
    for batch_start in range(0, len(paths), 12):
        ids += system.upload(*paths[batch_start : batch_start + 12])
        if victims:
            victim = victims.pop(0)
            killed = system.kill(victim)
            system.wait_healthy(victim, other_than=killed)
    finals = system.wait_final(ids, seconds=120)
    states = {upload_id: f["status"] for upload_id, f in finals.items()}
    assert set(states.values()) == {"archived"}, states
    folders = {p.name for p in system.archive.iterdir()}
    assert set(ids) <= folders
    for upload_id in ids:
        assert (system.archive / upload_id / "original.dcm").stat().st_size > 0
    # nothing stuck half-way: no partial uploads, no temporary archive files
    assert list(system.uploads.glob("*.part")) == []
    assert list(system.archive.glob("*/.*.tmp")) == []
    # and no status transition went backwards or was counted twice
    for final in finals.values():
        states_seen = [h["state"] for h in final["details"]["history"]]
        assert states_seen.count("archived") == 1


def test_a_service_that_dies_unasked_fails_the_run(system: System) -> None:
    """The crash check itself: a worker killed behind the System's back (as a crash would
    end it) is found in run.py's log, restarted or not, while the System's own kills are not."""
    assert system.unexpected_exits() == []
    victim = system.pid("validator")
    os.kill(victim, signal.SIGKILL)  # not System.kill: the test does not own this death
    system.wait_healthy("validator", other_than=victim)
    deadline = time.monotonic() + 10
    while not system.unexpected_exits() and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(AssertionError, match=f"validator service.exited pid={victim}"):
        system.assert_no_crash()
    system.assert_no_crash()  # reported once: the tests after this one are not blamed


def test_redis_killed_mid_load_loses_no_accepted_upload(own_system: System, tmp_path: Path) -> None:
    """Redis dies (SIGKILL) and comes back from its append-only file: the work goes on."""
    system = own_system
    paths = write_ct_series(tmp_path / "redis", 30, seed=21, rows=96, columns=96)
    ids = system.upload(*paths[:15])
    system.redis.kill()
    with system.client(timeout=10) as c:
        refused = c.post("/upload", files={"file": ("x.dcm", paths[15].read_bytes())})
    assert refused.status_code == 503
    assert refused.json()["type"] == "/problems/service-unavailable"
    system.redis.start()
    ids += system.upload(*paths[15:])
    finals = system.wait_final(ids, seconds=120)
    assert {f["status"] for f in finals.values()} == {"archived"}


def test_an_upload_redis_forgot_is_queued_again(system: System, tmp_path: Path) -> None:
    """A complete upload with no job (Redis lost its last writes) is found and finished."""
    forgotten = str(uuid.uuid4())
    (system.uploads / f"{forgotten}.dcm").write_bytes(ct_slice(0, rows=64, columns=64, seed=31))
    final = system.wait_final([forgotten], seconds=30)[forgotten]
    assert final["status"] == "archived"
    assert (system.archive / forgotten / "original.dcm").is_file()


def test_seed_job_api_status_audit_and_delete(system: System, tmp_path: Path) -> None:
    path = tmp_path / "job.dcm"
    path.write_bytes(ct_slice(0, rows=64, columns=64, seed=41))
    [job_id] = system.upload(path)
    final = system.wait_final([job_id])[job_id]
    with system.client() as c:
        status = c.get(f"/dicom/status/{job_id}").json()
        assert status["jobId"] == job_id
        assert status["status"] == "COMPLETED"
        assert status["platform"] == "local"
        assert status["createdAt"] <= status["updatedAt"]
        audit = c.get("/jobs/audit.csv")
        assert audit.headers["content-type"].startswith("text/csv")
        rows = [r for r in csv.DictReader(io.StringIO(audit.text)) if r["job_id"] == job_id]
        assert len(rows) == 1
        assert rows[0]["target"] == "local"
        assert rows[0]["outcome"] == "ok"
        assert rows[0]["sop_instance_uid"] == final["details"]["sop_instance_uid"]
        assert "Synthetic" not in audit.text  # no patient names in the audit
        deleted = c.delete("/dicom/delete", params={"jobId": job_id})
        assert deleted.status_code == 200
        assert str(system.archive / job_id) in deleted.json()["removed"]
        assert not (system.archive / job_id).exists()
        assert c.get(f"/dicom/status/{job_id}").status_code == 404
        # the instance can be stored again now that its only copy is gone
        [again] = system.upload(path)
        assert system.wait_final([again])[again]["details"].get("duplicate_of") is None


def test_original_download_with_ranges(system: System) -> None:
    source = pydicom_file("CT_small.dcm")
    [upload_id] = system.upload(source)
    system.wait_final([upload_id])
    with system.client() as c:
        whole = c.get(f"/uploads/{upload_id}/original")
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "application/dicom"
        assert int(whole.headers["content-length"]) == source.stat().st_size
        assert whole.content == source.read_bytes()
        part = c.get(f"/uploads/{upload_id}/original", headers={"range": "bytes=128-131"})
        assert part.status_code == 206
        assert part.content == b"DICM"


def test_images_on_demand_follow_the_display_pipeline(system: System) -> None:
    import numpy as np
    import pydicom

    from shared.render import to_display

    source = pydicom_file("CT_small.dcm")
    [upload_id] = system.upload(source)
    final = system.wait_final([upload_id])[upload_id]
    ds = pydicom.dcmread(source)
    with system.client() as c:
        default = c.get(f"/uploads/{upload_id}/image")
        assert default.headers["content-type"] == "image/png"
        with (
            Image.open(io.BytesIO(default.content)) as png,
            Image.open(final["details"]["preview_file"]) as preview,
        ):
            assert np.array_equal(np.asarray(png), np.asarray(preview))
        windowed = c.get(f"/uploads/{upload_id}/image", params={"window": "100,50"})
        with Image.open(io.BytesIO(windowed.content)) as png:
            assert np.array_equal(np.asarray(png), to_display(ds, 0, (100.0, 50.0)))
        small = c.get(f"/uploads/{upload_id}/image", params={"size": 64, "format": "jpeg"})
        assert small.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(small.content)) as jpeg:
            assert max(jpeg.size) == 64
        assert c.get(f"/uploads/{upload_id}/image", params={"window": "a,b"}).status_code == 400
        assert c.get(f"/uploads/{upload_id}/image", params={"frame": 2}).status_code == 400
        assert c.get(f"/uploads/{upload_id}/image", params={"size": 5000}).status_code == 400
    renders = Path(final["details"]["archive_path"]) / "renders"  # one file per parameter set
    assert (renders / "1_100_50_full.png").is_file()
    assert (renders / "1_file_64.jpeg").is_file()


def test_any_frame_of_a_multiframe_and_none_of_an_instance_without_pixels(system: System) -> None:
    import numpy as np

    [multi, plan] = system.upload(pydicom_file("rtdose.dcm"), pydicom_file("rtplan.dcm"))
    system.wait_final([multi, plan])
    with system.client() as c:
        first = c.get(f"/uploads/{multi}/image", params={"frame": 1}).content
        later = c.get(f"/uploads/{multi}/image", params={"frame": 9}).content
        with Image.open(io.BytesIO(first)) as a, Image.open(io.BytesIO(later)) as b:
            assert not np.array_equal(np.asarray(a), np.asarray(b))
        none = c.get(f"/uploads/{plan}/image")
        assert none.status_code == 422
        assert none.json()["type"] == "/problems/not-renderable"
        missing = c.get("/uploads/00000000-0000-0000-0000-000000000000/original")
        assert missing.status_code == 404


def test_header_tags_of_an_archived_upload(system: System) -> None:
    [upload_id] = system.upload(pydicom_file("MR_small.dcm"))
    system.wait_final([upload_id])
    with system.client() as c:
        answer = c.get(
            f"/uploads/{upload_id}/tags",
            params=[
                ("tag", "(0028,0011)"),
                ("tag", "Rows"),
                ("tag", "00100010"),
                ("tag", "(0018,1030)"),
                ("tag", "PixelData"),
            ],
        )
        assert answer.status_code == 200, answer.text
        columns, rows, name, absent, pixels = answer.json()["tags"]
        assert columns == {
            "tag": "(0028,0011)",
            "keyword": "Columns",
            "name": "Columns",
            "VR": "US",
            "VM": 1,
            "value": 64,
            "present": True,
        }
        assert rows["value"] == 64
        assert name["VR"] == "PN"
        assert isinstance(name["value"], str)
        assert absent["present"] is False
        assert absent["value"] is None
        assert pixels["value"] == {"size": 8192}
        invalid = c.get(
            f"/uploads/{upload_id}/tags", params=[("tag", "(2222,2222)"), ("tag", "Rows")]
        )
        assert invalid.status_code == 400
        assert invalid.json()["invalidTags"] == ["(2222,2222)"]
        missing = c.get(f"/uploads/{upload_id}/tags")
        assert missing.status_code == 400
        assert "tag" in missing.json()["detail"]


def test_seed_003_file_service(system: System) -> None:
    source = pydicom_file("CT_small.dcm")
    with system.client() as c:
        stored = c.post("/dicom-image", files={"file": ("IM000001", source.read_bytes())})
        assert stored.status_code == 201
        file_id = stored.json()["file_id"]
        system.wait_final([file_id])
        original = c.get(f"/dicom-image/{file_id}")
        assert original.content == source.read_bytes()
        assert original.headers["content-type"] == "application/dicom"
        tag = c.get(f"/dicom-image/{file_id}", params={"dicom_tag": "(0010,0010)"}).json()
        assert tag["tags"][0]["keyword"] == "PatientName"
        assert tag["tags"][0]["value"] == "CompressedSamples^CT1"
        png = c.get(f"/dicom-image/{file_id}/png")
        assert png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as image:
            assert image.size == (128, 128)
        assert c.get("/dicom-image/not-an-id/png").status_code == 404


def test_the_ways_in_run_at_normal_priority_and_the_stages_behind_them_yield(
    system: System,
) -> None:
    """The ways in at nice 0; the validator and the status service, which a STOW-RS answer
    waits for, at nice 19; the descriptor and the uploader, which no answer waits for, under
    SCHED_IDLE (below nice 19). Threads inherit it: every thread of each process is checked."""
    priority = {}
    for name in system.ports:
        process = psutil.Process(system.pid(name))
        policies = {os.sched_getscheduler(t.id) for t in process.threads()}
        assert len(policies) == 1, (name, policies)
        priority[name] = (process.nice(), policies.pop())
    assert priority == {
        "gateway": (0, os.SCHED_OTHER),
        "dimse": (0, os.SCHED_OTHER),
        "validator": (19, os.SCHED_OTHER),
        "status": (19, os.SCHED_OTHER),
        "descriptor": (19, os.SCHED_IDLE),
        "uploader": (19, os.SCHED_IDLE),
    }
