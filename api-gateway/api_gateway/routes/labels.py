"""Study labels: the labels in use, and the files filed under one by name."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel
from redis.asyncio import Redis

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Store
from shared import catalog
from shared.errors import LabelNotFound, UploadNotFound

router = APIRouter(tags=["uploads"])


class LabelCount(BaseModel):
    label: str
    count: int


class Labels(BaseModel):
    labels: list[LabelCount]
    count: int


class LabelledFile(BaseModel):
    name: str
    upload_id: UUID
    status: str | None


class LabelFiles(BaseModel):
    label: str
    files: list[LabelledFile]
    count: int


@router.get("/labels", response_model=Labels, openapi_extra=needs(Scope.READ))
async def labels(redis: RedisClient) -> Labels:
    """Every study label in use, with how many files it holds."""
    found = await catalog.labels(redis)
    items = [LabelCount(label=k, count=n) for k, n in found.items()]
    return Labels(labels=items, count=len(items))


@router.get("/labels/{label:path}", response_model=LabelFiles, openapi_extra=needs(Scope.READ))
async def label_files(label: str, store: Store) -> LabelFiles:
    """The files filed under a label, by name, each with its upload id and state."""
    files = await catalog.label_files(store.redis, label)
    if not files:
        raise LabelNotFound("no files are filed under that label")
    jobs = await store.read_many(list(files.values()))
    items = [
        LabelledFile(name=name, upload_id=u, status=j.status if j else None)
        for (name, u), j in zip(files.items(), jobs, strict=True)
    ]
    return LabelFiles(label=label, files=items, count=len(items))


async def labelled_upload(redis: Redis, label: str, name: str) -> str:
    """The upload id of a file filed under a label, or a 404."""
    files = await catalog.label_files(redis, label)
    if name not in files:
        raise UploadNotFound("file not found", error="file not found", success=False)
    return str(files[name])
