"""S3 settings, one way to build an S3 client, and presigned URLs (for the uploader and gateway).

Credentials, region and endpoint are left to boto3's own configuration chain:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile, SSO, an instance role),
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``)
for MinIO, Ceph or moto, which botocore honours and for which it picks path-style addressing
by itself. ``AWS_MAX_ATTEMPTS`` caps the retries (3 by default).
"""

from __future__ import annotations

import re
from typing import Literal, Self

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
DICOM_CONTENT_TYPE = "application/dicom"
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


class S3Settings(BaseSettings):
    """Where the S3 target writes (S3_*), how, and how long presigned URLs stay valid."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    bucket: str = Field(alias="S3_BUCKET")
    prefix: str = Field("dicom", alias="S3_PREFIX")
    sse: Literal["", "AES256", "aws:kms"] = Field("", alias="S3_SSE")
    sse_kms_key_id: str = Field("", alias="S3_SSE_KMS_KEY_ID")
    multipart_threshold: int = Field(8 * MiB, gt=0, alias="S3_MULTIPART_THRESHOLD")
    multipart_chunksize: int = Field(
        8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB, alias="S3_MULTIPART_CHUNKSIZE"
    )
    connect_timeout_s: float = Field(5, gt=0, le=300, alias="S3_CONNECT_TIMEOUT_S")
    read_timeout_s: float = Field(60, gt=0, le=3600, alias="S3_READ_TIMEOUT_S")
    presign_expires_s: int = Field(3600, ge=1, le=604_800, alias="PRESIGN_EXPIRES_S")

    @field_validator("bucket")
    @classmethod
    def _bare_bucket_name(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value):
            raise ValueError("a bucket name such as 'dicom-archive', not a URL or a path")
        return value

    @model_validator(mode="after")
    def _kms_key_iff_kms(self) -> Self:
        if self.sse == "aws:kms" and not self.sse_kms_key_id:
            raise ValueError("S3_SSE_KMS_KEY_ID: required when S3_SSE is aws:kms")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError("S3_SSE_KMS_KEY_ID: only used when S3_SSE is aws:kms")
        return self

    def sse_args(self) -> dict[str, str]:
        """The encryption arguments of a PutObject / CreateMultipartUpload, if any."""
        if not self.sse:
            return {}
        if self.sse == "aws:kms":
            return {"ServerSideEncryption": self.sse, "SSEKMSKeyId": self.sse_kms_key_id}
        return {"ServerSideEncryption": self.sse}


def s3_client(settings: S3Settings) -> BaseClient:
    """An S3 client: standard retries (exponential backoff with jitter), timeouts, SigV4.

    A client is thread-safe; build one per process and share it.
    """
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard"},  # attempts: AWS_MAX_ATTEMPTS, else 3
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=32,  # a few concurrent jobs, each a multipart upload
    )
    return boto3.session.Session().client("s3", config=config)


def presign_put(client: BaseClient, settings: S3Settings, key: str) -> str:
    """A SigV4 URL a plain HTTP client can PUT one DICOM file to.

    The request must send ``Content-Type: application/dicom`` (it is signed). Encryption is
    not part of the URL, so the bucket's default encryption applies to what is PUT there.
    """
    return str(
        client.generate_presigned_url(
            "put_object",
            Params={"Bucket": settings.bucket, "Key": key, "ContentType": DICOM_CONTENT_TYPE},
            ExpiresIn=settings.presign_expires_s,
            HttpMethod="PUT",
        )
    )


def presign_get(client: BaseClient, settings: S3Settings, key: str) -> str:
    """A SigV4 URL a plain HTTP client can GET one object from."""
    return str(
        client.generate_presigned_url(
            "get_object",
            Params={"Bucket": settings.bucket, "Key": key},
            ExpiresIn=settings.presign_expires_s,
            HttpMethod="GET",
        )
    )
