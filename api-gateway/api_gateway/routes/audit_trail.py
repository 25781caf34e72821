"""``GET /audit``, for admins: the audit trail, filtered by actor, action and time, page by page."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient
from shared import audit
from shared.errors import BadRequest

router = APIRouter(tags=["access"])


class AuditPage(BaseModel):
    entries: list[dict[str, Any]] = Field(
        description="oldest first: id, at, actor, action, outcome, client, what it touched "
        "(upload_id, study_uid, series_uid, sop_uid, key_id) and, for a request, its method "
        "and route"
    )
    count: int
    next: str | None = Field(description="pass as after= for the next page; null at the end")


@router.get("/audit", response_model=AuditPage, openapi_extra=needs(Scope.ADMIN, "audit.read"))
async def audit_trail(
    redis: RedisClient,
    actor: Annotated[str | None, Query(max_length=200, description="e.g. key:pacs")] = None,
    action: Annotated[
        str | None, Query(max_length=100, description="e.g. upload, download.original")
    ] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="at or before (ISO 8601)")] = None,
    after: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$", description="the previous page's next"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Who did what, when, from where, and how it ended."""
    if after is not None and not audit.is_entry_id(after):
        raise BadRequest("after is the next of a previous page: two numbers of 64 bits")
    entries, following = await audit.read(
        redis, actor=actor, action=action, since=since, until=until, after=after, limit=limit
    )
    return AuditPage(entries=[e.as_json() for e in entries], count=len(entries), next=following)
