"""The s3 target and presigned URLs against a real moto S3 server on a free port."""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from pydicom.uid import generate_uid
from uploader_service.targets import Item
from uploader_service.targets.keys import object_keys
from uploader_service.targets.s3 import S3Target

from shared.errors import PermanentError, RetryableError
from shared.s3 import MiB, S3Settings, presign_get, presign_put, s3_client
from shared.settings import load
from testbed import servers
from tests.integration.targets.items import make_item
from tests.support import dicom_ids, free_port, pydicom_file

if TYPE_CHECKING:
    from tests.integration.targets.conftest import StartServer

pytestmark = pytest.mark.timeout(60)
REGION = "eu-west-1"
BIG = 20 * MiB  # three parts of the default 8 MiB
UNSET = [
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "S3_BUCKET",
    "S3_PREFIX",
    "S3_SSE",
    "S3_SSE_KMS_KEY_ID",
    "S3_MULTIPART_THRESHOLD",
    "S3_MULTIPART_CHUNKSIZE",
    "S3_CONNECT_TIMEOUT_S",
    "S3_READ_TIMEOUT_S",
    "PRESIGN_EXPIRES_S",
]


# ---- a moto server of our own ------------------------------------------------------------


def admin_client(service: str, url: str, key: str = "testing", secret: str = "testing") -> Any:
    """A client that ignores the environment: for setting the server up."""
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def new_bucket(url: str) -> str:
    bucket = f"dicomflow-{uuid.uuid4().hex[:12]}"
    admin_client("s3", url).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return bucket


@pytest.fixture(scope="module")
def moto_url(start_server: StartServer) -> str:
    """A moto server for this module, accepting any credentials (its default)."""
    return start_server(servers.moto_s3).url


def use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str, **env: str) -> None:
    """Point boto3 and S3Settings at endpoint, away from the machine's own AWS set-up."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket on the module's moto, with the environment pointing at it."""
    name = new_bucket(moto_url)
    use(monkeypatch, tmp_path, moto_url, S3_BUCKET=name)
    return name


def client() -> Any:
    """A plain client configured from the environment, for looking at what was stored."""
    return boto3.session.Session().client("s3")


# ---- items built from real files -----------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Item:
    """pydicom's CT_small.dcm, with its metadata.json and a preview.png."""
    return make_item(tmp_path / "archive" / "small", pydicom_file("CT_small.dcm").read_bytes())


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Item:
    """A 20 MiB original (random bytes: the target does not read DICOM), no preview."""
    folder = tmp_path_factory.mktemp("big")
    ids = dicom_ids(fresh=True)
    original = random.Random(7).randbytes(BIG)
    return make_item(folder / "archive", original, ids=ids, preview=False)


def read(bucket: str, key: str) -> bytes:
    return bytes(client().get_object(Bucket=bucket, Key=key)["Body"].read())


# ---- what put stores -----------------------------------------------------------------------


async def test_put_stores_original_metadata_and_preview_at_the_scheme_keys(
    bucket: str, small: Item
) -> None:
    result = await S3Target.from_env().put(small)

    keys = object_keys("dicom", small.ids)
    assert result.ok
    assert result.target == "s3"
    assert result.location == f"s3://{bucket}/{keys.dicom}"
    assert result.bytes == small.size
    assert result.checksum == f"sha256:{small.sha256}"
    assert result.seconds is not None
    assert result.seconds >= 0
    assert small.preview is not None
    for key, path, content_type in [
        (keys.dicom, small.original, "application/dicom"),
        (keys.metadata, small.metadata, "application/json"),
        (keys.preview, small.preview, "image/png"),
    ]:
        head = client().head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == content_type
        assert read(bucket, key) == path.read_bytes()
    listed = client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted([keys.dicom, keys.metadata, keys.preview])


async def test_prefix_comes_from_s3_prefix(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_PREFIX", "/site-a/archive/")
    result = await S3Target.from_env().put(small)
    key = object_keys("site-a/archive", small.ids).dicom
    assert key.startswith("site-a/archive/")
    assert result.location == f"s3://{bucket}/{key}"
    assert read(bucket, key) == small.original.read_bytes()


def spy_on_read_backs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys S3Target reads back to hash them, from now on."""
    read_backs: list[str] = []
    real_read_back = S3Target._read_back_sha256

    def spy(self: S3Target, key: str) -> str:
        read_backs.append(key)
        return real_read_back(self, key)

    monkeypatch.setattr(S3Target, "_read_back_sha256", spy)
    return read_backs


async def test_large_original_goes_multipart_and_is_verified_by_composite_checksum(
    bucket: str, big: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_backs = spy_on_read_backs(monkeypatch)
    result = await S3Target.from_env().put(big)

    key = object_keys("dicom", big.ids).dicom
    assert result.ok
    assert read_backs == []  # the composite checksum was enough
    assert result.checksum == f"sha256:{big.sha256}"
    assert result.bytes == BIG
    head = client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB
    assert head["ContentLength"] == BIG
    got = client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"].endswith("-3")  # a checksum of the parts' checksums
    assert hashlib.sha256(got["Body"].read()).hexdigest() == big.sha256


async def test_putting_twice_stores_once_and_answers_the_same(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = S3Target.from_env()
    first = await target.put(small)
    uploads: list[str] = []
    real_upload = S3Target._upload

    def counting(self: S3Target, path: Path, key: str, content_type: str) -> None:
        uploads.append(key)
        real_upload(self, path, key, content_type)

    monkeypatch.setattr(S3Target, "_upload", counting)
    second = await target.put(small)

    assert uploads == []  # every object was there already, with the same checksum
    assert second.model_dump(exclude={"seconds"}) == first.model_dump(exclude={"seconds"})
    assert len(client().list_objects_v2(Bucket=bucket)["Contents"]) == 3


async def test_put_again_repairs_an_object_that_was_changed(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = S3Target.from_env()
    await target.put(small)
    key = object_keys("dicom", small.ids).dicom
    client().put_object(Bucket=bucket, Key=key, Body=b"not the original")

    await target.put(small)

    assert read(bucket, key) == small.original.read_bytes()


async def test_sse_aes256_is_applied_to_every_object(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_SSE", "AES256")
    await S3Target.from_env().put(small)
    keys = object_keys("dicom", small.ids)
    for key in (keys.dicom, keys.metadata, keys.preview):
        assert client().head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


async def test_sse_kms_is_applied_with_the_configured_key(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = boto3.session.Session().client("kms")
    key_id = kms.create_key(Description="dicomflow test")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("S3_SSE", "aws:kms")
    monkeypatch.setenv("S3_SSE_KMS_KEY_ID", key_id)
    await S3Target.from_env().put(small)
    head = client().head_object(Bucket=bucket, Key=object_keys("dicom", small.ids).dicom)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_sse_kms_without_a_key_id_is_a_configuration_error(
    bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("S3_SSE", "aws:kms")
    with pytest.raises(SystemExit) as exited:
        load(S3Settings)
    assert exited.value.code == 2
    expected = "configuration error: S3_SSE_KMS_KEY_ID: required when S3_SSE is aws:kms\n"
    assert capsys.readouterr().err == expected


# ---- verification ------------------------------------------------------------------------


def overwrite_after_upload(
    monkeypatch: pytest.MonkeyPatch, suffix: str, data: bytes, config: TransferConfig | None = None
) -> None:
    """Make S3Target._upload store other bytes of the same length once it has uploaded."""
    real_upload = S3Target._upload

    def then_overwrite(self: S3Target, path: Path, key: str, content_type: str) -> None:
        real_upload(self, path, key, content_type)
        if key.endswith(suffix):
            extra = {"ContentType": content_type, "ChecksumAlgorithm": "SHA256"}
            client().upload_fileobj(
                io.BytesIO(data), self.settings.bucket, key, ExtraArgs=extra, Config=config
            )

    monkeypatch.setattr(S3Target, "_upload", then_overwrite)


async def test_a_single_part_object_that_differs_after_upload_is_a_permanent_error(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    overwrite_after_upload(monkeypatch, ".dcm", b"\0" * small.size)
    key = object_keys("dicom", small.ids).dicom
    with pytest.raises(PermanentError, match="checksum mismatch") as raised:
        await S3Target.from_env().put(small)
    assert str(raised.value) == f"s3: checksum mismatch for s3://{bucket}/{key} after upload"


async def test_a_multipart_object_that_differs_after_upload_is_a_permanent_error(
    bucket: str, big: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    overwrite_after_upload(monkeypatch, ".dcm", b"\1" * BIG, other)
    key = object_keys("dicom", big.ids).dicom
    with pytest.raises(PermanentError, match=f"checksum mismatch for s3://{bucket}/{key}"):
        await S3Target.from_env().put(big)


async def test_parts_of_an_unexpected_size_are_verified_by_reading_back(
    bucket: str, big: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = S3Target.from_env()
    # the transfer manager cuts 5 MiB parts where the target predicts 8 MiB ones
    target.transfer = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB)
    read_backs = spy_on_read_backs(monkeypatch)
    result = await target.put(big)

    key = object_keys("dicom", big.ids).dicom
    assert result.ok
    assert read_backs == [key]
    assert client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-4")


async def test_an_original_that_differs_from_the_upload_is_not_sent(
    bucket: str, small: Item
) -> None:
    small.original.write_bytes(b"\0" * small.size)
    with pytest.raises(PermanentError, match="does not match the upload's SHA-256"):
        await S3Target.from_env().put(small)
    assert client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


async def test_a_missing_original_is_worth_retrying(bucket: str, small: Item) -> None:
    small.original.unlink()
    with pytest.raises(RetryableError, match="not on disk"):
        await S3Target.from_env().put(small)


# ---- errors --------------------------------------------------------------------------------


async def test_a_missing_bucket_is_a_permanent_error_at_once(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_BUCKET", "dicomflow-no-such-bucket")
    started = time.monotonic()
    with pytest.raises(PermanentError) as raised:
        await S3Target.from_env().put(small)
    assert str(raised.value) == "s3: bucket 'dicomflow-no-such-bucket' does not exist"
    assert time.monotonic() - started < 5


async def test_an_endpoint_that_is_down_is_worth_retrying(
    small: Item, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    use(monkeypatch, tmp_path, closed, S3_BUCKET="dicomflow-down", AWS_MAX_ATTEMPTS="1")
    with pytest.raises(RetryableError) as raised:
        await S3Target.from_env().put(small)
    assert str(raised.value) == (
        f"s3: cannot reach the endpoint {closed} (EndpointConnectionError)"
    )


async def test_an_endpoint_that_does_not_answer_in_time_is_worth_retrying(
    small: Item, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        use(
            monkeypatch,
            tmp_path,
            url,
            S3_BUCKET="dicomflow-slow",
            AWS_MAX_ATTEMPTS="1",
            S3_READ_TIMEOUT_S="0.5",
        )
        with pytest.raises(RetryableError, match=r"cannot reach the endpoint .*ReadTimeoutError"):
            await S3Target.from_env().put(small)


class Throttling(BaseHTTPRequestHandler):
    """An S3 endpoint under load: no object is there (HEAD 404), every PUT gets 503 SlowDown."""

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self._drain()
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drain(self) -> None:
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        if length := int(self.headers.get("Content-Length", 0)):
            self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self.rfile.read(size + 2)
            while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                pass

    def log_message(self, *args: object) -> None:
        pass


async def test_throttling_is_worth_retrying(
    small: Item, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        use(monkeypatch, tmp_path, url, S3_BUCKET="dicomflow-busy", AWS_MAX_ATTEMPTS="1")
        with pytest.raises(RetryableError) as raised:
            await S3Target.from_env().put(small)
        assert str(raised.value) == "s3: the endpoint is busy or failing (SlowDown, HTTP 503)"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---- credentials: a second moto that checks them -------------------------------------------


@pytest.fixture(scope="module")
def moto_with_auth(start_server: StartServer) -> dict[str, Any]:
    """A moto server that enforces IAM: one user may write the bucket, another may not.

    moto accepts any credentials unless told otherwise; POST /moto-api/reset-auth with 0
    makes it check every request's access key, signature and IAM policy from then on.
    """
    url = start_server(servers.moto_s3).url
    iam = admin_client("iam", url)
    keys = {}
    for user in ("writer", "stranger"):
        iam.create_user(UserName=user)
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps(policy))
    bucket = new_bucket(url)
    httpx.post(f"{url}/moto-api/reset-auth", content=b"0").raise_for_status()
    return {"url": url, "bucket": bucket, "keys": keys}


def credentials(auth: dict[str, Any], who: str) -> tuple[str, str]:
    if who == "unknown key":
        return "AKIAIOSFODNN7UNKNOWN", "whatever"
    key = auth["keys"]["writer" if who in ("writer", "wrong secret") else who]
    secret = "not-the-secret" if who == "wrong secret" else key["SecretAccessKey"]
    return key["AccessKeyId"], secret


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("unknown key", "InvalidAccessKeyId"),
        ("wrong secret", "SignatureDoesNotMatch"),
        ("stranger", "AccessDenied"),
    ],
)
async def test_refused_credentials_are_a_permanent_error(
    moto_with_auth: dict[str, Any],
    small: Item,
    who: str,
    code: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    key_id, secret = credentials(moto_with_auth, who)
    use(
        monkeypatch,
        tmp_path,
        moto_with_auth["url"],
        S3_BUCKET=moto_with_auth["bucket"],
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
    )
    with pytest.raises(PermanentError) as raised:
        await S3Target.from_env().put(small)
    assert str(raised.value) == f"s3: credentials refused ({code})"


async def test_accepted_credentials_store_the_file(
    moto_with_auth: dict[str, Any], small: Item, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_id, secret = credentials(moto_with_auth, "writer")
    use(
        monkeypatch,
        tmp_path,
        moto_with_auth["url"],
        S3_BUCKET=moto_with_auth["bucket"],
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
    )
    result = await S3Target.from_env().put(small)
    assert result.ok
    assert result.checksum == f"sha256:{small.sha256}"


# ---- configuration and presigned URLs ------------------------------------------------------


def test_from_env_without_a_bucket_stops_the_process_naming_s3_bucket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, moto_url: str
) -> None:
    use(monkeypatch, tmp_path, moto_url)
    code = "from uploader_service.targets.s3 import S3Target; S3Target.from_env()"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr == "configuration error: S3_BUCKET: Field required\n"


def test_the_client_uses_aws_endpoint_url(bucket: str, moto_url: str) -> None:
    settings = load(S3Settings)
    assert s3_client(settings).meta.endpoint_url == moto_url
    assert settings.bucket == bucket


def test_a_presigned_put_and_get_work_with_a_plain_http_client(bucket: str, small: Item) -> None:
    settings = load(S3Settings)
    s3 = s3_client(settings)
    key = object_keys(settings.prefix, small.ids).dicom
    data = small.original.read_bytes()

    put_url = presign_put(s3, settings, key)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in put_url
    assert "X-Amz-Expires=3600" in put_url
    stored = httpx.put(put_url, content=data, headers={"Content-Type": "application/dicom"})
    assert stored.status_code == 200, stored.text

    head = client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/dicom"
    assert head["ContentLength"] == len(data)
    fetched = httpx.get(presign_get(s3, settings, key))
    assert fetched.status_code == 200
    assert fetched.content == data


# ---- delete --------------------------------------------------------------------------------


def keys_in(bucket: str) -> list[str]:
    listed = client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def sibling_of(item: Item, folder: Path) -> Item:
    """Another instance of the same series: its keys share everything but the SOP UID."""
    ids = item.ids.model_copy(update={"sop_uid": generate_uid()})
    return make_item(folder, b"another instance", ids=ids)


async def test_delete_removes_the_three_objects_and_nothing_else(
    bucket: str, small: Item, tmp_path: Path
) -> None:
    target = S3Target.from_env()
    sibling = sibling_of(small, tmp_path / "sibling")
    await target.put(small)
    await target.put(sibling)

    result = await target.delete(small.ids)

    keys = object_keys("dicom", small.ids)
    assert (result.target, result.ok) == ("s3", True)
    assert result.location == f"s3://{bucket}/{keys.dicom}"
    assert result.error is None
    left = object_keys("dicom", sibling.ids)
    assert keys_in(bucket) == sorted([left.dicom, left.metadata, left.preview])


async def test_deleting_what_is_already_gone_succeeds(bucket: str, small: Item) -> None:
    target = S3Target.from_env()
    await target.put(small)
    first = await target.delete(small.ids)
    second = await target.delete(small.ids)
    assert second.ok
    assert second.location == first.location
    assert keys_in(bucket) == []


async def test_delete_from_a_missing_bucket_is_a_permanent_error(
    bucket: str, small: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_BUCKET", "dicomflow-no-such-bucket")
    with pytest.raises(PermanentError) as raised:
        await S3Target.from_env().delete(small.ids)
    assert str(raised.value) == "s3: bucket 'dicomflow-no-such-bucket' does not exist"


async def test_keys_the_caller_may_not_delete_are_a_permanent_error(
    moto_with_auth: dict[str, Any], small: Item, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """S3 answers DeleteObjects with 200 and an AccessDenied per key: judged like an upload."""

    def as_user(who: str) -> S3Target:
        key_id, secret = credentials(moto_with_auth, who)
        use(
            monkeypatch,
            tmp_path,
            moto_with_auth["url"],
            S3_BUCKET=moto_with_auth["bucket"],
            AWS_ACCESS_KEY_ID=key_id,
            AWS_SECRET_ACCESS_KEY=secret,
        )
        return S3Target.from_env()

    await as_user("writer").put(small)
    with pytest.raises(PermanentError) as raised:
        await as_user("stranger").delete(small.ids)
    assert str(raised.value) == "s3: credentials refused (AccessDenied)"
    key = object_keys("dicom", small.ids).dicom
    head = as_user("writer").client.head_object(Bucket=moto_with_auth["bucket"], Key=key)
    assert head["ContentLength"] == small.size  # still there
