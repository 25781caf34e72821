"""``GET /system``: the whole pipeline at a glance, for the dashboard's Health view.

Each service's readiness (its own ``/ready``, asked concurrently with a short timeout; the
gateway answers for itself in-process), the depth of every consumer group's queue
(``XINFO GROUPS``: entries delivered but not acked, and entries not yet delivered), and how
many jobs are in each state (``names.STATE_COUNTS``). A service that does not answer is
reported as not ready with a one-line reason; the answer itself is always 200.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel
from redis.asyncio import Redis

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Settings
from shared import catalog
from shared import redis_names as names
from shared.errors import safe_error

router = APIRouter(tags=["system"])

PROBE_TIMEOUT_S = 2.0
REDIS_TIMEOUT_S = 3.0


class ServiceHealth(BaseModel):
    name: str
    url: str
    ready: bool
    checks: dict[str, str] | None = None
    error: str | None = None


class QueueDepth(BaseModel):
    stream: str
    group: str
    pending: int
    lag: int | None  # None when Redis cannot tell (entries deleted from the stream)


class Counts(BaseModel):
    by_state: dict[str, int]


class SystemView(BaseModel):
    services: list[ServiceHealth]
    queues: list[QueueDepth]
    counts: Counts
    error: str | None = None


@router.get("/system", response_model_exclude_none=True, openapi_extra=needs(Scope.ADMIN))
async def system(request: Request, settings: Settings, redis: RedisClient) -> SystemView:
    """Readiness of the services (dimse-service where DIMSE_URL is set), queue depth per
    consumer group, jobs per state."""
    peers = {
        "validator-service": str(settings.validator_url),
        "descriptor-service": str(settings.descriptor_url),
        "status-service": str(settings.status_url),
        "uploader-service": str(settings.uploader_url),
    }
    if settings.dimse_url is not None:
        peers["dimse-service"] = str(settings.dimse_url)
    self_url = str(request.base_url).rstrip("/")
    itself = httpx.ASGITransport(app=request.app)  # the gateway answers for itself, in-process
    async with (
        httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client,
        httpx.AsyncClient(transport=itself, base_url=self_url, timeout=10) as own,
    ):
        services, queues, by_state = await asyncio.gather(
            asyncio.gather(
                _probe(own, "api-gateway", self_url),
                *(_probe(client, name, url.rstrip("/")) for name, url in peers.items()),
            ),
            asyncio.wait_for(_queues(redis), REDIS_TIMEOUT_S),
            asyncio.wait_for(_state_counts(redis), REDIS_TIMEOUT_S),
            return_exceptions=True,
        )
    failed = next((r for r in (queues, by_state) if isinstance(r, Exception)), None)
    error = None
    if failed is not None:
        error = "no answer in time" if isinstance(failed, TimeoutError) else safe_error(failed)
    if isinstance(services, BaseException):
        raise services
    return SystemView(
        services=list(services),
        queues=queues if isinstance(queues, list) else [],
        counts=Counts(by_state=by_state if isinstance(by_state, dict) else {}),
        error=f"Redis: {error}" if error else None,
    )


async def _probe(client: httpx.AsyncClient, name: str, url: str) -> ServiceHealth:
    """One service's ``/ready``: ready only on a 200; otherwise the reason, in one line."""
    try:
        answer = await client.get(f"{url}/ready")
    except httpx.TimeoutException:
        return ServiceHealth(
            name=name, url=url, ready=False, error=f"no answer in {PROBE_TIMEOUT_S:g}s"
        )
    except httpx.ConnectError:
        return ServiceHealth(name=name, url=url, ready=False, error="connection refused")
    except httpx.HTTPError as exc:
        return ServiceHealth(name=name, url=url, ready=False, error=_line(safe_error(exc)))
    checks = _checks(answer)
    if answer.status_code == 200:
        return ServiceHealth(name=name, url=url, ready=True, checks=checks)
    failing: dict[str, list[str]] = {}  # message -> the checks that failed with it
    for check, result in (checks or {}).items():
        if result != "ok":
            failing.setdefault(result, []).append(check)
    reason = "; ".join(f"{', '.join(c)}: {m}" for m, c in failing.items())
    reason = reason or f"/ready answered {answer.status_code}"
    return ServiceHealth(name=name, url=url, ready=False, checks=checks, error=_line(reason))


def _checks(answer: httpx.Response) -> dict[str, str] | None:
    try:
        body: Any = answer.json()
    except ValueError:
        return None
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, dict):
        return None
    return {str(k): str(v) for k, v in checks.items()}


def _line(text: str, limit: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


async def _queues(redis: Redis) -> list[QueueDepth]:
    """``XINFO GROUPS`` of every stream of the topology, in one round trip."""
    streams = list(names.TOPOLOGY)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        infos = await pipe.execute(raise_on_error=False)
    out: list[QueueDepth] = []
    for stream, groups in zip(streams, infos, strict=True):
        if isinstance(groups, Exception):  # the stream does not exist yet: nothing queued
            continue
        for g in groups:
            lag = g.get("lag")
            out.append(
                QueueDepth(
                    stream=stream,
                    group=g["name"],
                    pending=int(g.get("pending") or 0),
                    lag=None if lag is None else int(lag),
                )
            )
    return out


async def _state_counts(redis: Redis) -> dict[str, int]:
    counts = cast(dict[str, str], await redis.hgetall(names.STATE_COUNTS))  # type: ignore[misc]
    return catalog.positive_counts(counts)
