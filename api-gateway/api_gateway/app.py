"""Build the gateway's FastAPI app: routes, problem responses, Redis, probes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from api_gateway.compat import cloud_jobs, dicom_file_service, study_folders, upload_service
from api_gateway.recovery import keep_recovering
from api_gateway.routes import (
    batches,
    cloud,
    dashboard,
    events,
    jobs,
    labels,
    stats,
    studies,
    system,
    uploads,
    users,
)
from api_gateway.routes.upload import router
from api_gateway.settings import GatewaySettings
from shared import problems
from shared.bus import REDIS_DOWN
from shared.jobs import JobStore
from shared.service import connect, ensure_folders, make_bus, probe_router, standard_checks
from shared.status_api import status_router

log = structlog.get_logger()


def create_app(settings: GatewaySettings) -> FastAPI:
    ensure_folders(settings.uploads_path)
    redis = connect(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await make_bus(redis, settings).ensure_groups()
        except REDIS_DOWN:
            log.warning("redis.unavailable", error="groups not created yet; /ready says so")
        log.info("gateway.started", port=settings.port)
        recovering = asyncio.create_task(
            keep_recovering(
                app.state.store,
                settings.uploads_path,
                settings.recovery_interval_s,
                settings.recovery_grace_s,
            )
        )
        yield
        recovering.cancel()
        await redis.aclose()

    app = FastAPI(
        title="dicomflow gateway",
        version="0.1.0",
        summary="Upload DICOM files and follow each one through the pipeline.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = JobStore(redis)
    problems.install(app)
    app.include_router(router)
    app.include_router(upload_service.router)  # before ours: /upload/batch is not an upload id
    app.include_router(uploads.router)
    app.include_router(batches.router)
    app.include_router(study_folders.router)
    app.include_router(studies.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(dashboard.router)
    app.include_router(jobs.router)
    app.include_router(cloud_jobs.router)
    app.include_router(cloud.router)
    app.include_router(labels.router)
    app.include_router(stats.router)
    app.include_router(users.router)
    app.include_router(dicom_file_service.router)
    app.include_router(status_router())
    app.include_router(
        probe_router("api-gateway", standard_checks(redis, settings, None, settings.uploads_path))
    )
    return app
