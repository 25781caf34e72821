"""Build the gateway's FastAPI app: routes, problem responses, probes; the lifespan connects.

No two routes answer the same request (``tests/unit/gateway/test_routing.py`` checks it), so
the order of ``ROUTERS`` does not matter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api_gateway.access import Scope, access_of, authorize, needs
from api_gateway.auditing import AuditTrail
from api_gateway.body_deadline import BodyDeadline
from api_gateway.compat import cloud_jobs, dicom_file_service, study_folders, upload_service
from api_gateway.dicomweb import qido, stow, wado
from api_gateway.hardening import SecurityHeaders
from api_gateway.recovery import keep_recovering
from api_gateway.routes import (
    audit_trail,
    auth,
    batches,
    cloud,
    dashboard,
    events,
    jobs,
    keys,
    labels,
    stats,
    studies,
    system,
    upload,
    uploads,
    users,
    viewer,
)
from api_gateway.settings import GatewaySettings, is_loopback
from shared import problems
from shared.bus import REDIS_DOWN
from shared.jobs import JobStore
from shared.service import (
    Check,
    connect,
    ensure_folders,
    make_bus,
    probe_router,
    standard_checks,
)
from shared.status_api import status_router

log = structlog.get_logger()

ROUTERS: tuple[APIRouter, ...] = (
    audit_trail.router,
    auth.router,
    upload.router,
    uploads.router,
    batches.router,
    labels.router,
    users.router,
    stats.router,
    jobs.router,
    keys.router,
    studies.router,
    events.router,
    system.router,
    cloud.router,
    dashboard.router,
    viewer.router,
    upload_service.router,
    study_folders.router,
    cloud_jobs.router,
    dicom_file_service.router,
    stow.router,
    wado.router,
    qido.router,
)

# What a browser viewer on an allowed origin may send and read (CORS_ALLOW_ORIGINS).
CORS_HEADERS = ("Authorization", "Accept", "Content-Type", "Range")
CORS_EXPOSED = ("ETag", "Content-Length", "Content-Range", "Content-Location", "Location")


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway's app, built without I/O: its lifespan makes the uploads folder, connects
    Redis, creates the consumer groups and runs the recovery of files Redis forgot."""
    checks: dict[str, Check] = {"started": _not_started}  # what /ready runs, set at start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_folders(settings.uploads_path)
        redis = connect(settings)
        store = app.state.store = JobStore(redis)
        app.state.access = access_of(settings, redis)
        checks.clear()
        checks.update(standard_checks(redis, settings, None, settings.uploads_path))
        try:
            await make_bus(redis, settings).ensure_groups(wait=False)
        except REDIS_DOWN:
            log.warning("redis.unavailable", error="groups not created yet; /ready says so")
        log.info("gateway.started", port=settings.port, access_control=settings.access_enabled)
        if not settings.access_enabled and not is_loopback(settings.host):
            log.warning(
                "access_control.off",
                host=settings.host,
                detail="ACCESS_CONTROL=off on an address other machines reach: anyone there "
                "may read, send and delete",
            )
        recovering = asyncio.create_task(
            keep_recovering(
                store,
                settings.uploads_path,
                settings.recovery_interval_s,
                settings.recovery_grace_s,
            )
        )
        try:
            yield
        finally:
            recovering.cancel()
            await redis.aclose()

    app = FastAPI(
        title="dicomflow gateway",
        version="0.1.0",
        summary="Upload DICOM files and follow each one through the pipeline.",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],  # each route's declared scope (api_gateway.access)
    )
    app.state.settings = settings  # read through deps.get_settings
    # innermost of the middleware: the audit trail sees its 408, CORS and security headers
    # are added to it
    app.add_middleware(
        BodyDeadline,
        read_timeout_s=settings.http_body_read_timeout_s,
        min_rate=settings.http_body_min_rate,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
            allow_headers=list(CORS_HEADERS),
            expose_headers=list(CORS_EXPOSED),
            max_age=600,
        )
    app.add_middleware(AuditTrail)
    app.add_middleware(SecurityHeaders)
    problems.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(status_router(needs(Scope.READ)))
    metrics = None if settings.metrics_public else needs(Scope.ADMIN)
    app.include_router(probe_router("api-gateway", checks, metrics))
    return app


async def _not_started() -> None:
    raise RuntimeError("the gateway has not started: its lifespan connects Redis")
