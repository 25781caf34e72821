"""The descriptor's settings: the shared ones plus its port and PNG compression."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from shared.settings import ServiceSettings, load


class DescriptorSettings(ServiceSettings):
    port: int = Field(8002, ge=1, le=65535, alias="DESCRIPTOR_PORT")
    worker_nice: int = Field(19, ge=0, le=19, alias="DESCRIPTOR_NICE")
    # no answer waits for it: it runs on what the ways in, the validator and the status
    # service leave
    worker_sched: Literal["normal", "idle"] = Field("idle", alias="DESCRIPTOR_SCHED")
    png_compress_level: int = Field(1, ge=0, le=3, alias="DESCRIPTOR_PNG_COMPRESS_LEVEL")


@functools.cache
def get_settings() -> DescriptorSettings:
    return load(DescriptorSettings)
