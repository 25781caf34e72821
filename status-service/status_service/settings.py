"""The status service's settings: the shared ones plus its port."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from shared.settings import ServiceSettings, load


class StatusSettings(ServiceSettings):
    port: int = Field(8003, ge=1, le=65535, alias="STATUS_PORT")
    worker_concurrency: int = Field(8, ge=1, le=64, alias="STATUS_CONCURRENCY")
    # it tells waiting clients (STOW-RS, ?wait=) where their uploads stand: niced, but never
    # under SCHED_IDLE as the stages no answer waits for are
    worker_nice: int = Field(19, ge=0, le=19, alias="STATUS_NICE")
    worker_sched: Literal["normal", "idle"] = Field("normal", alias="STATUS_SCHED")


@functools.cache
def get_settings() -> StatusSettings:
    return load(StatusSettings)
