"""dimse-service's settings: the shared ones plus its AE, ports, limits and timeouts."""

from __future__ import annotations

import functools

from pydantic import Field, field_validator

from shared.settings import ServiceSettings, load


class DimseSettings(ServiceSettings):
    port: int = Field(11112, ge=1, le=65535, alias="DIMSE_PORT")
    http_port: int = Field(8005, ge=1, le=65535, alias="DIMSE_HTTP_PORT")
    bind: str = Field("127.0.0.1", alias="DIMSE_BIND")
    ae_title: str = Field("DICOMFLOW", min_length=1, max_length=16, alias="DIMSE_AE_TITLE")
    # comma-separated; empty: any calling AE title is accepted
    allowed_calling_ae_titles: str = Field("", alias="DIMSE_ALLOWED_CALLING_AE_TITLES")
    max_associations: int = Field(10, ge=1, le=1000, alias="DIMSE_MAX_ASSOCIATIONS")
    max_pdu: int = Field(16382, ge=0, alias="DIMSE_MAX_PDU")  # 0: unlimited
    acse_timeout: float = Field(30, gt=0, alias="DIMSE_ACSE_TIMEOUT")
    dimse_timeout: float = Field(30, gt=0, alias="DIMSE_DIMSE_TIMEOUT")
    network_timeout: float = Field(60, gt=0, alias="DIMSE_NETWORK_TIMEOUT")
    # how long a handler waits for Redis (the intake, a query) before answering a failure
    redis_timeout: float = Field(20, gt=0, alias="DIMSE_REDIS_TIMEOUT")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
        return value

    @property
    def allowed_callers(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.allowed_calling_ae_titles.split(",") if t.strip())

    @property
    def io_timeout(self) -> float:
        """How long one read or write of a connection may make no progress: a peer that stops
        in the middle of a PDU or a TLS handshake, or stops reading our answers, is dropped."""
        return min(self.acse_timeout, self.network_timeout)


@functools.cache
def get_settings() -> DimseSettings:
    return load(DimseSettings)
