"""``GET /stats``: totals over every upload, kept as jobs move (``shared.catalog``)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient
from shared import catalog

router = APIRouter(tags=["uploads"])


class Stats(BaseModel):
    total_uploads: int
    unique_users: int
    latest_upload: str | None
    earliest_upload: str | None
    by_state: dict[str, int]
    by_modality: dict[str, int]


@router.get("/stats", response_model=Stats, openapi_extra=needs(Scope.READ))
async def stats(redis: RedisClient) -> Stats:
    """Totals (seed 002's four, and counts by state and by modality), kept as jobs move."""
    return Stats(**await catalog.stats(redis))
