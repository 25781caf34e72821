"""An archived upload's files: the original (with ranges), images on demand, header tags.

``GET /uploads/{id}/original`` serves ``original.dcm`` as ``application/dicom`` with its length
and byte ranges. ``GET /uploads/{id}/image`` renders any frame through the descriptor's display
pipeline (``shared.render``), with an optional window and a bounded size, as PNG or JPEG;
each rendering is kept on disk beside the archive, so asking again costs a file read.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pydicom
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from PIL import Image

from api_gateway.tags import Unreadable, parse_tags, read_tags
from shared.errors import BadRequest, JobStateConflict, NotRenderable
from shared.files import write_atomic
from shared.render import RenderError, encode_png, to_display
from shared.status_api import job_of

router = APIRouter(tags=["files"])

WINDOW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")
MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


async def archive_folder(request: Request, study_id: str) -> Path:
    """The archive folder of an upload that has one."""
    upload_id, job = await job_of(request, study_id)
    folder = Path(job.details["archive_path"]) if "archive_path" in job.details else None
    if folder is None or not (folder / "original.dcm").is_file():
        raise JobStateConflict(f"upload {upload_id} is {job.status}: it has no archived file")
    return folder


@router.get(
    "/uploads/{study_id}/original",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}, 206: {"description": "A range"}},
)
async def original(study_id: str, request: Request) -> FileResponse:
    """The original DICOM file, byte-identical to the upload; ``Range`` requests work."""
    folder = await archive_folder(request, study_id)
    return FileResponse(
        folder / "original.dcm", media_type="application/dicom", filename=f"{study_id}.dcm"
    )


@router.get(
    "/uploads/{study_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}},
)
async def image(
    study_id: str,
    request: Request,
    frame: Annotated[int, Query(ge=1, le=100_000, description="1 for the first frame")] = 1,
    window: Annotated[str | None, Query(description="center,width, e.g. 40,400")] = None,
    size: Annotated[int | None, Query(ge=16, le=4096, description="longest side, px")] = None,
    format: Annotated[Literal["png", "jpeg"], Query()] = "png",
) -> FileResponse:
    """One frame through the display pipeline: modality LUT, then ``window`` if given, else
    the file's first window or VOI LUT, else min-max; MONOCHROME1 inverted; colour as RGB.
    ``size`` fits the image in a square viewport of that side, never enlarging it."""
    center_width = _window(window)
    folder = await archive_folder(request, study_id)
    shown = f"{center_width[0]:g}_{center_width[1]:g}" if center_width else "file"
    name = f"{frame}_{shown}_{size or 'full'}.{format}"  # one file per parameter set
    cached = folder / "renders" / name
    if not cached.is_file():
        await asyncio.to_thread(_render, folder / "original.dcm", cached, frame, center_width,
                                size, format)  # fmt: skip
    return FileResponse(cached, media_type=MEDIA[format])


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    match = WINDOW.match(text)
    if not match or float(match[2]) < 1:
        raise BadRequest("window must be center,width with a width of at least 1, e.g. 40,400")
    return float(match[1]), float(match[2])


def _render(
    source: Path,
    dest: Path,
    frame: int,
    window: tuple[float, float] | None,
    size: int | None,
    format: str,
) -> None:
    ds = pydicom.dcmread(source)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frame > frames:
        raise BadRequest(f"frame {frame} asked for; the instance has {frames}")
    try:
        pixels = to_display(ds, frame - 1, window)
    except RenderError as exc:
        raise NotRenderable(str(exc)) from None
    picture = Image.fromarray(pixels)
    if size is not None:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    if format == "jpeg":
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=90)
        image = out.getvalue()
    else:
        image = encode_png(np.asarray(picture))
    dest.parent.mkdir(exist_ok=True)
    write_atomic(dest, image, durable=False)


@router.get(
    "/uploads/{study_id}/metadata",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}}},
)
async def metadata(study_id: str, request: Request) -> FileResponse:
    """The archived ``metadata.json``: every attribute as the DICOM JSON model, plus a summary
    (see descriptor_service.metadata for its shape)."""
    folder = await archive_folder(request, study_id)
    return FileResponse(folder / "metadata.json", media_type="application/json")


@router.get("/uploads/{study_id}/tags")
async def tags(
    study_id: str,
    request: Request,
    tag: Annotated[
        list[str] | None, Query(description="(0010,0010), 00100010 or PatientName")
    ] = None,
) -> dict[str, object]:
    """The attributes named by ``tag`` (repeatable), read from the header without pixel data:
    each with tag, keyword, name, VR, VM, value and whether the file has it."""
    if not tag:
        raise BadRequest("the tag query parameter is missing: e.g. ?tag=(0028,0010)&tag=Rows")
    try:
        wanted, invalid = parse_tags(tag)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if invalid:
        raise BadRequest(f"{len(invalid)} tag(s) are not DICOM tags", invalidTags=invalid)
    folder = await archive_folder(request, study_id)
    try:
        answers = await asyncio.to_thread(read_tags, folder / "original.dcm", wanted)
    except Unreadable as exc:
        raise NotRenderable(str(exc)) from None
    return {"study_id": study_id, "tags": answers}
