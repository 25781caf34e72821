"""What a gateway handler may ask for: the settings, the job store, Redis, the status feed, the
door (``Door``: how a credential becomes a principal), and who is asking (``By``: the principal
the door let in, and the client's address).

Each is a FastAPI dependency, declared with its ``Annotated`` alias (``store: Store``), so no
handler reads ``app.state``. ``create_app`` puts the settings on the app; the lifespan connects
Redis and puts the job store beside them. A test may override any of these functions with
``app.dependency_overrides``. The store and the feed are the status API's own
(``shared.status_api``), so one override serves both.
"""

from __future__ import annotations

from typing import Annotated, TypeAlias

from fastapi import Depends, Request
from redis.asyncio import Redis

from api_gateway.access import ANONYMOUS, Access, Principal
from api_gateway.settings import GatewaySettings
from shared.audit import Caller
from shared.status_api import Feed, Store, get_feed, get_store

__all__ = [
    "By",
    "Door",
    "Feed",
    "RedisClient",
    "Settings",
    "Store",
    "get_access",
    "get_caller",
    "get_feed",
    "get_redis",
    "get_settings",
    "get_store",
]


async def get_settings(request: Request) -> GatewaySettings:
    """The settings the app was built with."""
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_redis(store: Store) -> Redis:
    """The Redis client of the job store."""
    return store.redis


async def get_access(request: Request) -> Access:
    """The door the lifespan built from the settings (``api_gateway.access.access_of``)."""
    door: Access = request.app.state.access
    return door


Settings: TypeAlias = Annotated[GatewaySettings, Depends(get_settings)]
RedisClient: TypeAlias = Annotated[Redis, Depends(get_redis)]
Door: TypeAlias = Annotated[Access, Depends(get_access)]


def caller_of(request: Request) -> Caller:
    """Who sent the request (the door's principal; anonymous with access control off) and
    from which address: for the job's origin and the audit trail."""
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return Caller(principal.actor, request.client.host if request.client else "")


async def get_caller(request: Request) -> Caller:
    return caller_of(request)


By: TypeAlias = Annotated[Caller, Depends(get_caller)]
