"""dimse-service's settings: the shared ones plus its AE, ports, TLS, limits and timeouts."""

from __future__ import annotations

import functools

from pydantic import Field, FilePath, field_validator, model_validator

from shared.settings import ServiceSettings, load


class DimseSettings(ServiceSettings):
    # 0: no plain (unencrypted) listener, TLS only
    port: int = Field(11112, ge=0, le=65535, alias="DIMSE_PORT")
    http_port: int = Field(8005, ge=1, le=65535, alias="DIMSE_HTTP_PORT")
    bind: str = Field("127.0.0.1", alias="DIMSE_BIND")
    ae_title: str = Field("DICOMFLOW", min_length=1, max_length=16, alias="DIMSE_AE_TITLE")
    # comma-separated; empty: any calling AE title is accepted
    allowed_calling_ae_titles: str = Field("", alias="DIMSE_ALLOWED_CALLING_AE_TITLES")
    max_associations: int = Field(10, ge=1, le=1000, alias="DIMSE_MAX_ASSOCIATIONS")
    max_pdu: int = Field(131072, ge=0, alias="DIMSE_MAX_PDU")  # 0: unlimited
    acse_timeout: float = Field(30, gt=0, alias="DIMSE_ACSE_TIMEOUT")
    dimse_timeout: float = Field(30, gt=0, alias="DIMSE_DIMSE_TIMEOUT")
    network_timeout: float = Field(60, gt=0, alias="DIMSE_NETWORK_TIMEOUT")
    # how long a handler waits for Redis (the intake, a query) before answering a failure
    redis_timeout: float = Field(20, gt=0, alias="DIMSE_REDIS_TIMEOUT")
    # DICOM TLS (PS3.15 Annex B) on a port of its own: a certificate and its key (PEM) turn it
    # on; a CA file makes every peer show a certificate that CA signed (mutual TLS)
    tls_port: int = Field(2762, ge=1, le=65535, alias="DIMSE_TLS_PORT")
    tls_cert_file: FilePath | None = Field(None, alias="DIMSE_TLS_CERT_FILE")
    tls_key_file: FilePath | None = Field(None, alias="DIMSE_TLS_KEY_FILE")
    tls_ca_file: FilePath | None = Field(None, alias="DIMSE_TLS_CA_FILE")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
        return value

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _listeners(self) -> DimseSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("DIMSE_TLS_CERT_FILE and DIMSE_TLS_KEY_FILE go together: set both")
        if self.tls_ca_file is not None and not self.tls:
            raise ValueError("DIMSE_TLS_CA_FILE needs DIMSE_TLS_CERT_FILE and DIMSE_TLS_KEY_FILE")
        if self.port == 0 and not self.tls:
            raise ValueError(
                "DIMSE_PORT=0 (no plain listener) needs TLS: set DIMSE_TLS_CERT_FILE and "
                "DIMSE_TLS_KEY_FILE"
            )
        if self.tls and self.port == self.tls_port:
            raise ValueError("DIMSE_PORT and DIMSE_TLS_PORT must differ (PS3.15 B.1)")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

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
