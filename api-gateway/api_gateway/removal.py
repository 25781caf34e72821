"""Deleting an upload, the one implementation behind ``DELETE /uploads/{id}`` and the seeds'.

A finished upload's local files go at once (its archive folder with renderings and the
de-identified copy, a leftover upload file, its claim on its SOP Instance UID), then its record
and everything that lists it (``JobStore.forget``: label, user, batch, hash and search
entries). With ``cloud``, the uploader first removes the copies on the cloud targets that hold
them; the record is forgotten once they are gone, so the answer is ``deleting`` (202) then.
A job still in the pipeline cannot be deleted: its stages would write to it again.
"""

from __future__ import annotations

import shutil
from typing import Literal, cast
from uuid import UUID

from pydantic import BaseModel, Field

from api_gateway.settings import GatewaySettings
from shared import redis_names as names
from shared.bus import add_event
from shared.errors import JobStateConflict
from shared.events import CopiesDeletionRequested
from shared.jobs import FINAL, JobStatus, JobStore


class Removed(BaseModel):
    upload_id: UUID
    status: Literal["deleted", "deleting"] = "deleted"
    removed: list[str] = Field(description="what is gone: files, the record, index entries")
    cloud: list[str] = Field(default_factory=list, description="targets whose copies go")


async def remove(
    store: JobStore, settings: GatewaySettings, upload_id: UUID, job: JobStatus, cloud: bool
) -> Removed:
    """Remove a finished upload; with ``cloud``, its copies on cloud targets as well."""
    if job.status not in FINAL:
        raise JobStateConflict(
            f"the job is {job.status}; wait until it is archived, rejected or failed"
        )
    removed = await _remove_local(store, settings, upload_id, job)
    targets = job.details.get("targets", []) if cloud else []
    copies = [t["target"] for t in targets if t["ok"] and t["target"] != "local"]
    if copies:
        event = CopiesDeletionRequested(upload_id=upload_id, ids=job.dicom_ids(), targets=copies)
        async with store.redis.pipeline(transaction=True) as pipe:
            await store.queue_deletion_request(pipe, event)
            add_event(pipe, event)
            await pipe.execute()
        return Removed(upload_id=upload_id, status="deleting", removed=removed, cloud=copies)
    return Removed(upload_id=upload_id, removed=[*removed, *await store.forget(upload_id)])


async def _remove_local(
    store: JobStore, settings: GatewaySettings, upload_id: UUID, job: JobStatus
) -> list[str]:
    """The job's archive folder and upload file, and its claim on its SOP Instance UID."""
    redis = store.redis
    removed: list[str] = []
    folder = settings.archive_path / str(upload_id)
    if folder.is_dir():
        shutil.rmtree(folder)
        removed.append(str(folder))
    upload = settings.uploads_path / f"{upload_id}.dcm"
    if upload.exists():
        upload.unlink()
        removed.append(str(upload))
    sop = job.details.get("sop_instance_uid")
    if sop and job.details.get("duplicate_of") is None:
        holder = cast(str | None, await redis.get(names.instance_key(sop)))
        if holder and holder.split(" ")[0] == str(upload_id):
            await redis.delete(names.instance_key(sop))
            removed.append("duplicate-detection entry")
    return removed
