"""The status service's HTTP app: the status API and probes."""

from __future__ import annotations

from fastapi import FastAPI
from redis.asyncio import Redis

from shared import problems
from shared import redis_names as names
from shared.jobs import JobStore
from shared.service import probe_router, standard_checks
from shared.status_api import status_router
from status_service.settings import StatusSettings


def create_app(redis: Redis, settings: StatusSettings) -> FastAPI:
    app = FastAPI(title="dicomflow status", version="0.1.0", summary="Where each upload stands.")
    app.state.store = JobStore(redis)
    problems.install(app)
    app.include_router(status_router())
    app.include_router(
        probe_router("status-service", standard_checks(redis, settings, names.GROUP_STATUS))
    )
    return app
