"""The validator's settings: the shared ones plus its port and the decoding budgets."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from shared.settings import ServiceSettings, load


class ValidatorSettings(ServiceSettings):
    port: int = Field(8001, ge=1, le=65535, alias="VALIDATOR_PORT")
    # a STOW-RS answer waits for validation: the validator yields less than the stages after it
    worker_nice: int = Field(19, ge=0, le=19, alias="VALIDATOR_NICE")
    worker_sched: Literal["normal", "idle"] = Field("normal", alias="VALIDATOR_SCHED")
    max_pixel_bytes: int = Field(2 * 1024**3, gt=0, alias="MAX_PIXEL_BYTES")
    max_inflated_size: int = Field(1024**3, gt=0, alias="MAX_INFLATED_SIZE")


@functools.cache
def get_settings() -> ValidatorSettings:
    return load(ValidatorSettings)
