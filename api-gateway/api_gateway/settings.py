"""The gateway's settings: the shared ones plus its port and upload durability."""

from __future__ import annotations

import functools

from pydantic import Field

from shared.settings import ServiceSettings, load


class GatewaySettings(ServiceSettings):
    port: int = Field(8000, ge=1, le=65535, alias="GATEWAY_PORT")
    fsync_uploads: bool = Field(True, alias="FSYNC_UPLOADS")


@functools.cache
def get_settings() -> GatewaySettings:
    return load(GatewaySettings)
