"""What every service process shares: Redis and bus set-up, probe routes, running HTTP beside work.

``/health`` says the process answers; ``/ready`` says Redis answers, the service's consumer
groups exist and its folders are writable; ``/metrics`` is Prometheus text. ``run`` serves the
HTTP app (within ``http_limits``) and the worker loops in one event loop and stops them together
on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import structlog
import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from shared import redis_names as names
from shared.bus import Bus
from shared.errors import frames, safe_error
from shared.http_limits import raise_open_file_limit, server_config
from shared.logging import configure_logging
from shared.settings import ServiceSettings

log = structlog.get_logger()

Check = Callable[[], Awaitable[None]]


def connect(settings: ServiceSettings) -> Redis:
    """A Redis client that retries briefly on connection errors and never hangs forever.

    Replies come decoded (``str``), as everywhere in dicomflow. A value that is not UTF-8 (none
    of ours: they are JSON or text, but another program may write to a stream) reads with
    U+FFFD in place of its bad bytes rather than raising in the middle of a read loop.
    """
    return Redis.from_url(
        str(settings.redis_url),
        decode_responses=True,
        encoding_errors="replace",
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
    )


def make_bus(redis: Redis, settings: ServiceSettings) -> Bus:
    return Bus(
        redis,
        consumer=settings.consumer_name,
        max_deliveries=settings.max_deliveries,
        claim_idle_ms=settings.claim_idle_ms,
        backoff_max_ms=settings.backoff_max_ms,
    )


def redis_check(redis: Redis) -> Check:
    async def check() -> None:
        await redis.ping()

    return check


def groups_check(redis: Redis, group: str, streams: Sequence[str]) -> Check:
    async def check() -> None:
        for stream in streams:
            if group not in {g["name"] for g in await redis.xinfo_groups(stream)}:
                raise RuntimeError(f"consumer group {group} missing on {stream}")

    return check


def folders_check(*folders: Path) -> Check:
    async def check() -> None:
        for folder in folders:
            if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise RuntimeError(f"{folder} is not a writable folder")

    return check


OPEN: Final[dict[str, Any]] = {"security": []}  # OpenAPI's "no credential needed"


def probe_router(
    service: str, checks: dict[str, Check], metrics_extra: dict[str, Any] | None = None
) -> APIRouter:
    """/health, /ready and /metrics for one service; the probes are open to anyone (they say
    nothing of the data), /metrics too unless ``metrics_extra`` says otherwise."""
    router = APIRouter(tags=["probes"])
    started = time.time()

    @router.get("/health", openapi_extra=OPEN)
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "service": service,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - started, 1),
        }

    @router.get("/ready", openapi_extra=OPEN)
    async def ready() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                async with asyncio.timeout(3):
                    await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = safe_error(exc) if not str(exc) else str(exc)
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not-ready", "service": service, "checks": results},
            status_code=200 if ok else 503,
        )

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,  # documented as the text it is
        openapi_extra=OPEN if metrics_extra is None else metrics_extra,
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def worker_app(service: str, checks: dict[str, Check]) -> FastAPI:
    """The small HTTP app a worker runs beside its consume loop."""
    app = FastAPI(title=f"dicomflow {service}", docs_url=None, redoc_url=None)
    app.include_router(probe_router(service, checks))
    return app


def standard_checks(
    redis: Redis, settings: ServiceSettings, group: str | None, *folders: Path
) -> dict[str, Check]:
    checks = {"redis": redis_check(redis)}
    if group:
        streams = [s for s, groups in names.TOPOLOGY.items() if group in groups]
        checks["consumer_group"] = groups_check(redis, group, streams)
    if folders:
        checks["folders"] = folders_check(*folders)
    return checks


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``run`` stops server and work together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(
    app: FastAPI, settings: ServiceSettings, port: int, *work: Coroutine[Any, Any, None]
) -> None:
    """Serve ``app`` on ``settings.host``:``port`` within the HTTP limits (``http_limits``) and
    run ``work`` until SIGTERM/SIGINT, or until the work fails."""
    raise_open_file_limit(settings.http_max_connections)
    server = _Server(server_config(app, settings, port))
    app.state.stopping = asyncio.Event()  # open streams (SSE, long-polls) end when it is set
    tasks = [asyncio.create_task(coro) for coro in work]
    serving = asyncio.create_task(server.serve())

    def stop() -> None:
        app.state.stopping.set()
        server.should_exit = True
        for task in tasks:
            task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    done, _ = await asyncio.wait([serving, *tasks], return_when=asyncio.FIRST_COMPLETED)
    app.state.stopping.set()
    for task in tasks:
        task.cancel()
    server.should_exit = True
    await asyncio.gather(serving, *tasks, return_exceptions=True)
    for task in done:
        if task is not serving and not task.cancelled() and (exc := task.exception()):
            log.error("service.crashed", error=safe_error(exc), frames=frames(exc))
            raise SystemExit(1)
    log.info("service.stopped")


def ensure_folders(*folders: Path) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


def serve_worker(
    service: str,
    settings: ServiceSettings,
    group: str,
    folders: Sequence[Path],
    work: Callable[[Bus], Coroutine[Any, Any, None]],
    port: int,
) -> None:
    """A worker process's whole life: its priority, logging, folders, Redis, probes, and its
    consume loop."""
    configure_logging(service, settings.log_level, settings.log_format)
    yield_cpu(settings)
    ensure_folders(*folders)
    redis = connect(settings)
    app = worker_app(service, standard_checks(redis, settings, group, *folders))
    run_forever(run(app, settings, port, work(make_bus(redis, settings))))


def yield_cpu(settings: ServiceSettings) -> None:
    """Lower this worker's CPU priority as its settings say (``worker_nice``, ``worker_sched``).

    Linux keeps both per thread, and a thread inherits them when it starts: every thread
    already running (a library's pool started at import, numpy's OpenBLAS) is lowered too,
    and the threads started later inherit it. Where the system refuses SCHED_IDLE (not Linux,
    or a sandbox that forbids it), the stage says so and runs at its niceness alone.
    """
    task = Path("/proc/self/task")
    threads = [int(t.name) for t in task.iterdir()] if task.is_dir() else [0]
    for thread in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + settings.worker_nice
            os.setpriority(os.PRIO_PROCESS, thread, min(niceness, 19))
    if settings.worker_sched != "idle":
        return
    try:
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        log.warning("service.sched_idle_refused", error=safe_error(exc))


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop where it is installed, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
