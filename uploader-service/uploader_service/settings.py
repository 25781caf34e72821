"""The uploader's settings: the shared ones plus its port and the targets to copy to."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, load
from uploader_service.targets import REGISTRY

KNOWN_TARGETS = tuple(REGISTRY)


class UploaderSettings(ServiceSettings):
    port: int = Field(8004, ge=1, le=65535, alias="UPLOADER_PORT")
    worker_nice: int = Field(19, ge=0, le=19, alias="UPLOADER_NICE")
    # no answer waits for it: it runs on what the ways in, the validator and the status
    # service leave
    worker_sched: Literal["normal", "idle"] = Field("idle", alias="UPLOADER_SCHED")
    upload_targets: Annotated[tuple[str, ...], NoDecode] = Field(("local",), alias="UPLOAD_TARGETS")

    @field_validator("upload_targets", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(t.strip().lower() for t in value.split(",") if t.strip())
        if isinstance(value, tuple | list):
            unknown = [t for t in value if t not in KNOWN_TARGETS]
            if unknown:
                raise ValueError(f"unknown target(s) {unknown}; known: {list(KNOWN_TARGETS)}")
            if not value:
                raise ValueError("name at least one target, e.g. 'local'")
        return value


@functools.cache
def get_settings() -> UploaderSettings:
    return load(UploaderSettings)
