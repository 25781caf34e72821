"""What every service reads from the environment, and one way to load it that fails clearly."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, RedisDsn, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """The seed's names, unprefixed (REDIS_URL, UPLOADS_PATH, ...), shared by every service."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: RedisDsn = RedisDsn("redis://localhost:6379/0")
    uploads_path: Path = Path("uploads")
    archive_path: Path = Path("archive")
    max_file_size: int = Field(100 * 1024 * 1024, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    host: str = Field("127.0.0.1", alias="HOST")
    # Unique per process: hostname-pid (a container's hostname is its own). ``make run`` sets
    # <its own hostname-pid>-<stage>-<replica>, kept across restarts of that replica.
    consumer_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", alias="CONSUMER_NAME"
    )
    max_deliveries: int = Field(5, ge=1, alias="MAX_DELIVERIES")
    claim_idle_ms: int = Field(15_000, ge=100, alias="CLAIM_IDLE_MS")
    backoff_max_ms: int = Field(300_000, ge=100, alias="BACKOFF_MAX_MS")
    worker_concurrency: int = Field(4, ge=1, le=64, alias="WORKER_CONCURRENCY")
    # how much a worker stage yields the CPU to the ways in (gateway, dimse-service): niceness
    # it adds to itself at start, so a burst is taken as fast as the machine can take it and
    # worked through after; each stage names its own (VALIDATOR_NICE, ...)
    worker_nice: int = Field(0, ge=0, le=19)
    # "idle": Linux's SCHED_IDLE, below any niceness (the nice value no longer counts): the
    # stage runs on what every other process leaves; for the stages no answer waits for
    # (DESCRIPTOR_SCHED, UPLOADER_SCHED)
    worker_sched: Literal["normal", "idle"] = "normal"

    # what one HTTP client may take from a service's port (shared/http_limits.py): time to send
    # a request's line and headers, their size, connections (past it: 503), idle keep-alive
    http_header_timeout_s: float = Field(10.0, gt=0, le=300, alias="HTTP_HEADER_TIMEOUT_S")
    http_max_header_bytes: int = Field(64 * 1024, ge=4096, alias="HTTP_MAX_HEADER_BYTES")
    http_max_headers: int = Field(100, ge=16, alias="HTTP_MAX_HEADERS")
    http_max_connections: int = Field(1000, ge=1, alias="HTTP_MAX_CONNECTIONS")
    http_backlog: int = Field(2048, ge=1, alias="HTTP_BACKLOG")
    http_keep_alive_s: int = Field(5, ge=1, le=300, alias="HTTP_KEEP_ALIVE_S")


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Build settings, or stop the process with one line naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            if not err["loc"]:  # a check across fields names its variables itself
                print(f"configuration error: {message}", file=sys.stderr)
                continue
            field = str(err["loc"][0])
            info = cls.model_fields.get(field)
            name = (info.alias if info and info.alias else field).upper()
            print(f"configuration error: {name}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
