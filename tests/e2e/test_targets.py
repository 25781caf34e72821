"""The pipeline with every cloud target live: moto (S3), Azurite, the GCS emulator and Orthanc."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from uploader_service.targets.keys import object_keys

from testbed import servers
from testbed.system import System, start_system, stop_system
from tests.support import ct_slice, dicom_ids, free_port, pydicom_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The four servers, each with an empty bucket or container named for this run."""
    folder = tmp_path_factory.mktemp("stores")
    with contextlib.ExitStack() as stack:
        try:
            s3 = stack.enter_context(servers.moto_s3(folder / "moto"))
            azure = stack.enter_context(servers.azurite(folder / "azurite"))
            gcs = stack.enter_context(servers.gcs_emulator(folder / "gcs"))
            orthanc = stack.enter_context(servers.orthanc(folder / "orthanc"))
        except servers.Unavailable as exc:
            pytest.skip(str(exc))
        name = f"dicomflow-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", **_aws(s3)).create_bucket(Bucket=name)
        BlobServiceClient.from_connection_string(azure.connection_string()).create_container(name)
        _gcs_client(gcs).create_bucket(name)
        yield {"name": name, "s3": s3, "azure": azure, "gcs": gcs, "orthanc": orthanc}


def _aws(s3: servers.S3Server) -> dict[str, str]:
    return {
        "endpoint_url": s3.url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
    }


def _gcs_client(gcs: servers.GcsServer) -> storage.Client:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture(scope="module")
def system(stores: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    name = str(stores["name"])
    env = {
        **stores["s3"].env(name),  # type: ignore[attr-defined]
        **stores["azure"].env(name),  # type: ignore[attr-defined]
        **stores["gcs"].env(name),  # type: ignore[attr-defined]
        **stores["orthanc"].env(),  # type: ignore[attr-defined]
        "UPLOAD_TARGETS": "local,s3,azure,gcs,dicomweb",
    }
    running = start_system(tmp_path_factory.mktemp("system"), **env)
    yield running
    stop_system(running)


def test_every_target_holds_the_instance_and_the_status_says_where(
    system: System, stores: dict[str, object]
) -> None:
    sources = [pydicom_file("CT_small.dcm"), pydicom_file("JPEG2000.dcm")]
    ids = system.upload(*sources)
    finals = system.wait_final(ids, seconds=90)
    name = str(stores["name"])
    for upload_id, source in zip(ids, sources, strict=True):
        final = finals[upload_id]
        assert final["status"] == "archived", final
        targets = {t["target"]: t for t in final["details"]["targets"]}
        assert set(targets) == {"local", "s3", "azure", "gcs", "dicomweb"}
        assert all(t["ok"] and t["location"] and t["checksum"] for t in targets.values())
        d = final["details"]
        keys = object_keys("dicom", dicom_ids(d))
        original = source.read_bytes()
        s3 = boto3.client("s3", **_aws(stores["s3"]))  # type: ignore[arg-type]
        assert s3.get_object(Bucket=name, Key=keys.dicom)["Body"].read() == original
        assert targets["s3"]["location"] == f"s3://{name}/{keys.dicom}"
        azure = BlobServiceClient.from_connection_string(
            stores["azure"].connection_string()  # type: ignore[attr-defined]
        )
        assert azure.get_blob_client(name, keys.dicom).download_blob().readall() == original
        gcs = _gcs_client(stores["gcs"])  # type: ignore[arg-type]
        assert gcs.bucket(name).blob(keys.dicom).download_as_bytes() == original
        orthanc: servers.OrthancServer = stores["orthanc"]  # type: ignore[assignment]
        wado = httpx.get(
            targets["dicomweb"]["location"],
            auth=(servers.ORTHANC_USER, servers.ORTHANC_PASSWORD),
            headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert wado.status_code == 200
        assert original in wado.content
        assert targets["dicomweb"]["location"].startswith(orthanc.dicomweb)


@pytest.fixture(scope="module")
def late_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, int, Path]]:
    """A pipeline whose S3 endpoint is not there yet: nothing listens on its port."""
    port = free_port()
    folder = tmp_path_factory.mktemp("late")
    env = {
        "UPLOAD_TARGETS": "local,s3",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "S3_BUCKET": "late",
        "CLAIM_IDLE_MS": "500",
        "MAX_DELIVERIES": "3",
    }
    running = start_system(folder / "system", **env)
    yield running, port, folder
    stop_system(running)


def _wait(system: System, upload_id: str, predicate: object, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = system.status(upload_id)
        if predicate(status):  # type: ignore[operator]
            return status
        time.sleep(0.1)
    raise AssertionError(f"not reached within {seconds}s: {system.status(upload_id)}")


def test_a_target_that_stays_down_fails_the_job_and_a_retry_finishes_it(
    late_s3: tuple[System, int, Path], tmp_path: Path
) -> None:
    system, port, folder = late_s3
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    first.write_bytes(ct_slice(0, rows=64, columns=64, seed=51))
    second.write_bytes(ct_slice(1, rows=64, columns=64, seed=52))
    [job] = system.upload(first)
    failed = system.wait_final([job], seconds=60)[job]
    assert failed["status"] == "failed"
    assert failed["details"]["failed_stage"] == "uploader"
    assert "s3: cannot reach the endpoint" in failed["details"]["error"]
    targets = {t["target"]: t for t in failed["details"]["targets"]}
    assert targets["local"]["ok"] is True
    assert targets["s3"]["ok"] is False
    local_seconds = targets["local"]["seconds"]

    # a second job arrives while S3 is still down, and S3 comes up before its retries run out
    [late] = system.upload(second)
    _wait(system, late, lambda s: any(not t["ok"] for t in s["details"].get("targets", [])))
    with servers.moto_s3(folder / "moto", port) as s3:
        boto3.client("s3", **_aws(s3)).create_bucket(Bucket="late")
        assert system.wait_final([late], seconds=60)[late]["status"] == "archived"

        with system.client() as c:
            answer = c.post(f"/jobs/{job}/retry")
        assert answer.status_code == 202
        assert answer.json()["status"] == "described"
        done = system.wait_final([job], seconds=60)[job]
        assert done["status"] == "archived"
        targets = {t["target"]: t for t in done["details"]["targets"]}
        assert targets["s3"]["ok"] is True
        # the local copy was made once, before the failure, and not again
        assert targets["local"]["seconds"] == local_seconds
        assert [h["state"] for h in done["details"]["history"]].count("retried") == 1


def test_presigned_put_then_ingest_then_presigned_download(system: System, tmp_path: Path) -> None:
    data = ct_slice(0, rows=64, columns=64, seed=61)
    with system.client() as c:
        presigned = c.post("/dicom/presign", json={}).json()
        assert presigned["method"] == "PUT"
        assert presigned["objectKey"].startswith("incoming/")
        put = httpx.put(presigned["url"], content=data, headers=presigned["headers"])
        assert put.status_code == 200
        queued = c.post(
            "/dicom/upload", json={"objectKey": presigned["objectKey"], "platform": "s3"}
        )
        assert queued.status_code == 202, queued.text
        assert queued.json()["status"] == "success"
        job = queued.json()["jobId"]
        final = system.wait_final([job], seconds=90)[job]
        assert final["status"] == "archived"
        assert (system.archive / job / "original.dcm").read_bytes() == data
        download = c.get(f"/uploads/{job}/download-url").json()
        assert download["method"] == "GET"
        assert httpx.get(download["url"]).content == data
        missing = c.post("/dicom/upload", json={"objectKey": "incoming/nope.dcm", "platform": "s3"})
        assert missing.status_code == 404


def test_push_an_archived_upload_to_one_platform(system: System, tmp_path: Path) -> None:
    path = tmp_path / "push.dcm"
    path.write_bytes(ct_slice(0, rows=64, columns=64, seed=62))
    [source] = system.upload(path)
    assert system.wait_final([source], seconds=90)[source]["status"] == "archived"
    with system.client() as c:
        queued = c.post("/dicom/upload", json={"objectKey": source, "platform": "gcp"})
        assert queued.status_code == 202, queued.text
        job = queued.json()["jobId"]
        final = system.wait_final([job], seconds=60)[job]
        assert final["status"] == "archived"
        assert [t["target"] for t in final["details"]["targets"]] == ["gcs"]
        assert c.get(f"/dicom/status/{job}").json()["platform"] == "gcs"
        unknown = c.post("/dicom/upload", json={"objectKey": source, "platform": "ftp"})
        assert unknown.status_code == 400


def test_retrieve_a_study_from_the_dicomweb_server(system: System) -> None:
    source = pydicom_file("MR_small.dcm")
    [first] = system.upload(source)
    study = system.wait_final([first], seconds=90)[first]["details"]["study_instance_uid"]
    with system.client() as c:
        answer = c.post("/dicom/retrieve", json={"studyInstanceUID": study})
        assert answer.status_code == 202, answer.text
        jobs = answer.json()["jobIds"]
        assert len(jobs) == 1
        final = system.wait_final(jobs, seconds=60)[jobs[0]]
        # the same instance, the same bytes: recognised as the first upload's duplicate
        assert final["status"] == "archived"
        assert final["details"]["duplicate_of"] == first
        nothing = c.post("/dicom/retrieve", json={"studyInstanceUID": "1.2.3.4.5.6.7"})
        assert nothing.status_code == 404
        bad = c.post("/dicom/retrieve", json={"studyInstanceUID": "not a uid"})
        assert bad.status_code == 400


def test_routes_that_need_an_unconfigured_service_say_what_to_set(
    late_s3: tuple[System, int, Path],
) -> None:
    system, _, _ = late_s3
    with system.client() as c:
        answer = c.post("/dicom/retrieve", json={"studyInstanceUID": "1.2.3"})
    assert answer.status_code == 501
    assert answer.json()["type"] == "/problems/not-configured"
    assert "DICOMWEB_URL" in answer.json()["detail"]


def test_a_refused_credential_fails_the_job_at_once_and_says_so(
    stores: dict[str, object], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    orthanc: servers.OrthancServer = stores["orthanc"]  # type: ignore[assignment]
    env = {**orthanc.env(), "DICOMWEB_PASSWORD": "wrong", "UPLOAD_TARGETS": "local,dicomweb"}
    system = start_system(tmp_path_factory.mktemp("refused"), **env)
    try:
        path = tmp_path / "refused.dcm"
        path.write_bytes(ct_slice(0, rows=32, columns=32, seed=71))
        [job] = system.upload(path)
        final = system.wait_final([job], seconds=30)[job]
        assert final["status"] == "failed"
        assert final["details"]["deliveries"] == 1  # not retried: it cannot pass
        assert "dicomweb: credentials refused" in final["details"]["error"]
    finally:
        stop_system(system)


def test_delete_with_its_cloud_copies_removes_them_and_forgets_the_job(
    stores: dict[str, object], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    name = str(stores["name"])
    s3: servers.S3Server = stores["s3"]  # type: ignore[assignment]
    gcs: servers.GcsServer = stores["gcs"]  # type: ignore[assignment]
    env = {**s3.env(name), **gcs.env(name), "UPLOAD_TARGETS": "local,s3,gcs"}
    system = start_system(tmp_path_factory.mktemp("deleting"), **env)
    try:
        path = tmp_path / "gone.dcm"
        path.write_bytes(ct_slice(0, rows=32, columns=32, seed=81))
        [job] = system.upload(path)
        d = system.wait_final([job], seconds=60)[job]["details"]
        keys = object_keys("dicom", dicom_ids(d))
        client = boto3.client("s3", **_aws(s3))
        assert client.head_object(Bucket=name, Key=keys.dicom)["ContentLength"] > 0
        with system.client() as c:
            answer = c.delete("/dicom/delete", params={"jobId": job, "deleteCloud": "true"})
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "deleting"
            assert sorted(answer.json()["cloud"]) == ["gcs", "s3"]
            deadline = time.monotonic() + 30
            while c.get(f"/dicom/status/{job}").status_code != 404:
                assert time.monotonic() < deadline, c.get(f"/status/{job}").json()
                time.sleep(0.1)
        listed = client.list_objects_v2(Bucket=name, Prefix=keys.dicom.rsplit(".", 1)[0])
        assert listed.get("KeyCount", 0) == 0
        assert not _gcs_client(gcs).bucket(name).blob(keys.dicom).exists()
        assert not (system.archive / job).exists()
    finally:
        stop_system(system)


def test_a_target_that_cannot_delete_keeps_the_job_and_says_why(system: System) -> None:
    [job] = system.upload(pydicom_file("SC_rgb_rle.dcm"))
    assert system.wait_final([job], seconds=90)[job]["status"] == "archived"
    with system.client() as c:
        answer = c.delete("/dicom/delete", params={"jobId": job, "deleteCloud": "true"})
    assert answer.status_code == 202
    # Orthanc's DICOMweb has no DELETE: the other copies go, the job stays and says why
    status = _wait(system, job, lambda s: "error" in s["details"], seconds=30)
    assert "does not support DELETE" in status["details"]["error"]
    assert status["details"]["deletion"]["targets"] == ["s3", "azure", "gcs", "dicomweb"]
