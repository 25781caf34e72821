"""What a browser needs to sign in: ``GET /auth/config`` (is access control on, and where to
sign in with OpenID Connect) and ``GET /auth/whoami`` (whom a credential names, and what it may
do); the dashboard asks both before anything else (``static/signin.js``).

Both are open routes: the first holds nothing secret (an issuer's public client id is public by
design: a browser sends it to the issuer in the open), and the second checks the credential it
is sent itself, whatever its scopes, since a key that may only upload must be able to sign in
too. A wrong credential gets the door's 401, and is in the audit trail as refused.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api_gateway.access import ANONYMOUS, Scope, needs
from api_gateway.deps import Door, Settings

router = APIRouter(tags=["access"])


class OidcSignIn(BaseModel):
    """Where the dashboard signs a person in: Authorization Code with PKCE at ``issuer`` (its
    endpoints from the issuer's discovery document), as the public client ``client_id``."""

    issuer: str = Field(examples=["https://keycloak.example.org/realms/hospital"])
    client_id: str = Field(examples=["dicomflow-dashboard"])
    scopes: list[str] = Field(examples=[["openid", "dicomflow.read"]])


class SignInConfig(BaseModel):
    access_control: bool = Field(description="whether requests need a credential")
    oidc: OidcSignIn | None = Field(
        description="sign-in at an OpenID Connect issuer; null: API keys only"
    )


class Identity(BaseModel):
    actor: str = Field(description="a key's name (key:…), a token's subject (oidc:…), anonymous")
    scopes: list[Scope] = Field(description="what it may do (admin holds read and write)")
    access_control: bool


@router.get("/auth/config", response_model=SignInConfig, openapi_extra=needs(None))
async def sign_in_config(settings: Settings) -> SignInConfig:
    """Whether this gateway asks for a credential, and the OpenID Connect issuer and public
    client the dashboard signs people in with (``OIDC_CLIENT_ID``), if any."""
    oidc = None
    if settings.oidc_sign_in and settings.oidc_issuer and settings.oidc_client_id:
        oidc = OidcSignIn(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            scopes=settings.oidc_scopes.split(),
        )
    return SignInConfig(access_control=settings.access_enabled, oidc=oidc)


@router.get(
    "/auth/whoami",
    response_model=Identity,
    responses={401: {"description": "No credential, or one that is not valid"}},
    openapi_extra=needs(None),  # any valid credential, whatever its scopes: checked here
)
async def whoami(request: Request, settings: Settings, door: Door) -> Identity:
    """Whom the request's credential names and the scopes it holds; 401 without a valid one
    (with access control off: anonymous, who may do everything)."""
    principal = ANONYMOUS
    if settings.access_enabled:
        principal = await door.principal(
            request.headers.get("authorization"), request.headers.get("x-api-key")
        )
    request.state.principal = principal  # the audit trail names who was refused, too
    scopes = [scope for scope in Scope if principal.may(scope)]
    return Identity(actor=principal.actor, scopes=scopes, access_control=settings.access_enabled)
