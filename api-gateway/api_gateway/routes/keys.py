"""API keys, for admins: create one (its secret shown once), list them, revoke one.

The first admin key cannot come from here (nothing may call this yet): ``api-gateway keys
create NAME --scope admin`` makes it beside Redis (``api_gateway.__main__``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, Field

from api_gateway.access import ApiKey, KeyStore, Scope, needs
from api_gateway.auditing import touched
from api_gateway.deps import RedisClient
from shared.errors import AppError, BadRequest

router = APIRouter(tags=["access"])


class KeyNotFound(AppError):
    status, code = 404, "key-not-found"


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["ct-scanner-1"])
    scopes: list[Scope] = Field(min_length=1, examples=[["write"]])


class KeyInfo(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    created_at: str


class CreatedKey(KeyInfo):
    key: str = Field(description="the secret: shown this once, kept nowhere")


class Keys(BaseModel):
    keys: list[KeyInfo]
    count: int


async def get_keys(redis: RedisClient) -> KeyStore:
    return KeyStore(redis)


KeysStore = Annotated[KeyStore, Depends(get_keys)]


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo.model_validate(key.as_json())


@router.post(
    "/keys",
    response_model=CreatedKey,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=needs(Scope.ADMIN, audit="key.create"),
)
async def create_key(body: NewKey, keys: KeysStore, request: Request) -> CreatedKey:
    """A new API key with a name and scopes; its secret is in this answer only."""
    try:
        key, secret = await keys.create(body.name, body.scopes)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    touched(request, key_id=key.id)
    return CreatedKey(**_info(key).model_dump(), key=secret)


@router.get("/keys", response_model=Keys, openapi_extra=needs(Scope.ADMIN))
async def list_keys(keys: KeysStore) -> Keys:
    """Every API key: id, name, scopes, creation time (never a secret)."""
    found = [_info(k) for k in await keys.list()]
    return Keys(keys=found, count=len(found))


@router.delete(
    "/keys/{key_id}", response_model=KeyInfo, openapi_extra=needs(Scope.ADMIN, audit="key.revoke")
)
async def revoke_key(key_id: str, keys: KeysStore) -> KeyInfo:
    """Revoke a key: requests carrying it are refused from now on."""
    key = await keys.revoke(key_id)
    if key is None:
        raise KeyNotFound("no API key has this id")
    return _info(key)
