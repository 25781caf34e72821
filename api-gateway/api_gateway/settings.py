"""The gateway's settings: the shared ones plus its port, upload durability, peers' URLs, CORS,
and where the OHIF viewer it serves at /viewer is."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, AnyHttpUrl, Field

from shared.settings import ServiceSettings, load

# The @ohif/app release `make viewer` fetches (scripts/fetch_viewer.py) into .cache/ohif/<it>/
OHIF_VERSION = "3.13.2"


class GatewaySettings(ServiceSettings):
    port: int = Field(8000, ge=1, le=65535, alias="GATEWAY_PORT")
    fsync_uploads: bool = Field(True, alias="FSYNC_UPLOADS")
    recovery_interval_s: float = Field(60.0, gt=0, alias="RECOVERY_INTERVAL_S")
    recovery_grace_s: float = Field(30.0, ge=0, alias="RECOVERY_GRACE_S")
    s3_incoming_prefix: str = Field("incoming", min_length=1, alias="S3_INCOMING_PREFIX")
    # the other services' HTTP roots, asked for /ready by GET /system (the dashboard's Health)
    validator_url: AnyHttpUrl = Field(AnyHttpUrl("http://127.0.0.1:8001"), alias="VALIDATOR_URL")
    descriptor_url: AnyHttpUrl = Field(AnyHttpUrl("http://127.0.0.1:8002"), alias="DESCRIPTOR_URL")
    status_url: AnyHttpUrl = Field(AnyHttpUrl("http://127.0.0.1:8003"), alias="STATUS_URL")
    uploader_url: AnyHttpUrl = Field(AnyHttpUrl("http://127.0.0.1:8004"), alias="UPLOADER_URL")
    # the DIMSE listener's HTTP root; unset: not listed (a deployment without DIMSE)
    dimse_url: AnyHttpUrl | None = Field(None, alias="DIMSE_URL")
    max_batch_size: int = Field(512 * 1024 * 1024, gt=0, alias="MAX_BATCH_SIZE")
    deid_secret: str | None = Field(None, min_length=16, alias="DEID_SECRET")
    # STOW-RS: how long its answer waits for the instances' validation
    stow_validation_timeout_s: float = Field(10.0, ge=0, alias="STOW_VALIDATION_TIMEOUT_S")
    # every route's request body (api_gateway/body_deadline.py): the longest wait for its next
    # bytes (STOW_READ_TIMEOUT_S, its former STOW-only name, is still read), and the slowest
    # average rate it may come at, in bytes/s past that first wait (0: any)
    http_body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("HTTP_BODY_READ_TIMEOUT_S", "STOW_READ_TIMEOUT_S"),
    )
    http_body_min_rate: int = Field(1024, ge=0, alias="HTTP_BODY_MIN_RATE")
    # the DICOMweb root as clients reach it (behind a proxy), for the URLs in answers
    dicomweb_public_url: AnyHttpUrl | None = Field(None, alias="DICOMWEB_PUBLIC_URL")
    # browser origins (scheme://host[:port]) allowed to call the API, comma-separated; "*" any
    cors_allow_origins: str = Field("", alias="CORS_ALLOW_ORIGINS")
    # the OHIF viewer's built files, served at /viewer/ when there (make viewer puts them here)
    viewer_dir: Path = Field(Path(".cache/ohif") / OHIF_VERSION, alias="VIEWER_DIR")

    # access control (README "Access control"): auto is on unless the gateway listens on a
    # loopback address only, where the README's curl walk-through works without a credential
    access_control: Literal["auto", "on", "off"] = Field("auto", alias="ACCESS_CONTROL")
    metrics_public: bool = Field(True, alias="METRICS_PUBLIC")  # /metrics holds no patient data
    # OpenID Connect: tokens of this issuer for this audience are taken, with these algorithms
    oidc_issuer: str | None = Field(None, alias="OIDC_ISSUER")
    oidc_audience: str | None = Field(None, alias="OIDC_AUDIENCE")
    oidc_jwks_url: AnyHttpUrl | None = Field(None, alias="OIDC_JWKS_URL")  # else discovered
    oidc_algorithms: str = Field("RS256,ES256", alias="OIDC_ALGORITHMS")
    # the claim holding a token's scopes or roles (a dotted path), and the values granting each
    oidc_scope_claim: str = Field("scope", alias="OIDC_SCOPE_CLAIM")
    oidc_read_values: str = Field("dicomflow.read", alias="OIDC_READ_VALUES")
    oidc_write_values: str = Field("dicomflow.write", alias="OIDC_WRITE_VALUES")
    oidc_admin_values: str = Field("dicomflow.admin", alias="OIDC_ADMIN_VALUES")
    # the dashboard's sign-in at the issuer (Authorization Code with PKCE, in the browser): the
    # issuer's public client for it, and the scopes it asks for; unset: API keys only
    oidc_client_id: str | None = Field(None, min_length=1, alias="OIDC_CLIENT_ID")
    oidc_scopes: str = Field("openid", min_length=1, alias="OIDC_SCOPES")

    @property
    def access_enabled(self) -> bool:
        if self.access_control != "auto":
            return self.access_control == "on"
        return not is_loopback(self.host)

    @property
    def oidc_sign_in(self) -> bool:
        """Whether the dashboard offers to sign in at the issuer: tokens of it are taken, and
        it has a public client for the dashboard."""
        return bool(self.oidc_issuer and self.oidc_audience and self.oidc_client_id)

    @property
    def oidc_issuer_origin(self) -> str | None:
        """The issuer's origin (scheme://host[:port]), which the dashboard's page may fetch
        from (discovery, token exchange) when it signs in there; None when it does not."""
        if not self.oidc_sign_in or not self.oidc_issuer:
            return None
        parts = urlsplit(self.oidc_issuer)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def cors_origins(self) -> list[str]:
        """CORS_ALLOW_ORIGINS as a list: none by default, so no browser page of another origin
        may read an answer."""
        return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0: other machines may reach it


@functools.cache
def get_settings() -> GatewaySettings:
    return load(GatewaySettings)
