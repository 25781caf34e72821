"""The gateway's settings: the shared ones plus its port and upload durability."""

from __future__ import annotations

import functools

from pydantic import Field

from shared.settings import ServiceSettings, load


class GatewaySettings(ServiceSettings):
    port: int = Field(8000, ge=1, le=65535, alias="GATEWAY_PORT")
    fsync_uploads: bool = Field(True, alias="FSYNC_UPLOADS")
    recovery_interval_s: float = Field(60.0, gt=0, alias="RECOVERY_INTERVAL_S")
    recovery_grace_s: float = Field(30.0, ge=0, alias="RECOVERY_GRACE_S")
    s3_incoming_prefix: str = Field("incoming", min_length=1, alias="S3_INCOMING_PREFIX")


@functools.cache
def get_settings() -> GatewaySettings:
    return load(GatewaySettings)
