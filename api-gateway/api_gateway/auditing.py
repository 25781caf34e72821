"""The gateway's part of the audit trail (``shared.audit``): each request to a route that names
an action (``needs(..., audit="download.original")``), and every refused request, recorded once
it is answered: who, what, from where, and the status it got.

What a request touched is read from its path parameters, upload ids and UIDs only; a handler may
add what its path does not say (a key it created) with ``touched(request, key_id=...)``.
Recording never fails a request: with Redis unreachable the entry is lost and a warning logged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_gateway.access import ANONYMOUS, AUDIT_KEY, Principal
from shared import audit
from shared.bus import REDIS_DOWN

log = structlog.get_logger()

REFUSED = {401: "refused", 403: "refused"}
# path parameters -> what an audit entry names; any other (a label, a file name) is left out
PARAMETERS = {
    "study_id": "upload_id",
    "upload_id": "upload_id",
    "job_id": "upload_id",
    "file_id": "upload_id",
    "study": "study_uid",
    "series": "series_uid",
    "sop": "sop_uid",
    "key_id": "key_id",
}


def touched(request: Request, **targets: str) -> None:
    """Name what a request touched beyond its path parameters (``shared.audit.TARGETS``)."""
    request.state.audited = {**getattr(request.state, "audited", {}), **targets}


class AuditTrail:
    """ASGI middleware: the request goes on untouched; its answer's status is noted as it
    starts, and the entry written when the answer is done (or the handler failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            route = scope.get("route")
            action = (
                (route.openapi_extra or {}).get(AUDIT_KEY) if isinstance(route, APIRoute) else None
            )
            action = REFUSED.get(status, action)
            if action and isinstance(route, APIRoute):
                await _record(scope, route, action, str(status or "error"))


async def _record(scope: Scope, route: APIRoute, action: str, outcome: str) -> None:
    state: dict[str, Any] = scope.get("state", {})
    principal: Principal = state.get("principal", ANONYMOUS)
    params: dict[str, Any] = scope.get("path_params", {})
    targets = {PARAMETERS[k]: str(v)[:128] for k, v in params.items() if k in PARAMETERS}
    targets |= state.get("audited", {})
    client = scope.get("client")
    entry = audit.fields(
        principal.actor,
        action,
        outcome,
        client[0] if client else None,
        method=scope.get("method", ""),
        route=route.path,
        **targets,
    )
    store = getattr(scope["app"].state, "store", None)  # None: the lifespan did not run
    if store is None:
        return
    with contextlib.suppress(*REDIS_DOWN):
        await audit.record(store.redis, entry)
        return
    log.warning("audit.unrecorded", action=action, outcome=outcome, reason="redis unavailable")
