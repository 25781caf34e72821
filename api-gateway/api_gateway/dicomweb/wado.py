"""WADO-RS (PS3.18 §10.4): retrieve studies, series, instances, their metadata, frames, bulk
data, and rendered and thumbnail images, under ``/dicomweb``.

- Instances (study, series, instance): ``multipart/related; type="application/dicom"``, one part
  per archived ``original.dcm``, streamed from disk chunk by chunk (a whole study is never in
  memory). ``transfer-syntax=*`` or none gives each instance as stored; Explicit VR Little
  Endian (1.2.840.10008.1.2.1) gives a decompressed copy where the pixels can be decoded; any
  other syntax an instance is not stored in is 406 (PS3.18 §8.7.3).
- Metadata (all three levels): ``application/dicom+json``, an array of the archived
  ``metadata.json`` datasets (PS3.18 Annex F), each bulk element's ``BulkDataURI`` made an
  absolute URL of the bulkdata resource below, plus AvailableTransferSyntaxUID (0008,3002).
  A strong ETag from the archived files; ``If-None-Match`` gives 304.
- Frames (``frames/1,3``): multipart/related, one part per frame, each with its
  ``transfer-syntax`` in its Content-Type: native frames as raw little-endian bytes
  (``application/octet-stream``); compressed frames as stored when the Accept header allows
  their syntax (``*``, the UID, or their image media type), else decoded (§8.7.3.5).
- Bulk data: the ``BulkDataURI``s handed out; Pixel Data as its frames.
- Rendered and thumbnail (§10.4.1.1.3): one frame through the display pipeline as JPEG or PNG,
  by Accept; ``window=center,width[,linear|linear-exact|sigmoid]``, ``viewport=width,height``,
  ``quality`` (JPEG, 1-100). A series or study is shown by its first instance (SOP Instance
  UID order), an instance by its first frame. Cached with ``/uploads/{id}/image``'s cache.

Instances are found by UID through the study index (``locate``); an unknown UID is a 404
problem. Deviations and limits are in ``docs/conformance.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import pydicom
import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Settings
from api_gateway.dicomweb import locate, media, pixels
from api_gateway.dicomweb.locate import Instance
from api_gateway.rendering import View, parse_window, rendered
from api_gateway.settings import GatewaySettings
from shared.errors import BadRequest, NotAcceptable

log = structlog.get_logger()

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

CHUNK = 1024 * 1024
DICOM_JSON = "application/dicom+json"
THUMBNAIL = (256, 256)  # a thumbnail's viewport when none is asked for
FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"
MULTIPART: dict[str, Any] = {"content": {"multipart/related": {}}}
IMAGES: dict[str, Any] = {"content": {"image/jpeg": {}, "image/png": {}}}


# ---- instances ----


@router.get(
    STUDY,
    response_class=StreamingResponse,
    responses={200: MULTIPART},
    openapi_extra=needs(Scope.READ, audit="download.original"),
)
async def retrieve_study(
    study: str, request: Request, redis: RedisClient, settings: Settings
) -> StreamingResponse:
    """Every archived instance of a study."""
    found = await locate.instances(redis, settings.archive_path, study)
    return await _instances_response(found, request)


@router.get(
    SERIES,
    response_class=StreamingResponse,
    responses={200: MULTIPART},
    openapi_extra=needs(Scope.READ, audit="download.original"),
)
async def retrieve_series(
    study: str, series: str, request: Request, redis: RedisClient, settings: Settings
) -> StreamingResponse:
    """Every archived instance of a series."""
    found = await locate.instances(redis, settings.archive_path, study, series)
    return await _instances_response(found, request)


@router.get(
    INSTANCE,
    response_class=StreamingResponse,
    responses={200: MULTIPART},
    openapi_extra=needs(Scope.READ, audit="download.original"),
)
async def retrieve_instance(
    study: str, series: str, sop: str, request: Request, redis: RedisClient, settings: Settings
) -> StreamingResponse:
    """One archived instance."""
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _instances_response([found], request)


async def _instances_response(found: list[Instance], request: Request) -> StreamingResponse:
    syntaxes = media.instance_syntaxes(media.parse_accept(request.headers.get("accept")))
    plan: list[tuple[Instance, str | None]] = [(i, None) for i in found]
    if syntaxes[0] != media.ANY:  # a syntax asked for: decide for each before answering
        plan = []
        for instance in found:
            stored = await asyncio.to_thread(pixels.stored_syntax, instance.original)
            chosen = media.instance_syntax(syntaxes, stored)
            if chosen is None:
                raise NotAcceptable(
                    f"instance {instance.sop} is stored as {stored} and cannot be given in "
                    "an asked-for transfer syntax"
                )
            plan.append((instance, chosen))
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _instance_parts(plan, boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


async def _instance_parts(
    plan: list[tuple[Instance, str | None]], boundary: str
) -> AsyncIterator[bytes]:
    for instance, chosen in plan:
        try:
            stored = await asyncio.to_thread(pixels.stored_syntax, instance.original)
            syntax = chosen or stored
            head = f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}"
            yield f"{head}\r\n\r\n".encode()
            if syntax == stored:
                async for chunk in _file_chunks(instance.original):
                    yield chunk
            else:
                yield await asyncio.to_thread(pixels.transcoded, instance.original)
            yield b"\r\n"
        except FileNotFoundError:  # removed while the answer was being sent
            log.warning("wado.instance_gone", upload_id=instance.upload_id)
    yield f"--{boundary}--\r\n".encode()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


# ---- metadata ----


@router.get(
    STUDY + "/metadata",
    responses={200: {"content": {DICOM_JSON: {}}}},
    openapi_extra=needs(Scope.READ),
)
async def study_metadata(
    study: str, request: Request, redis: RedisClient, settings: Settings
) -> Response:
    """The metadata of every archived instance of a study (DICOM JSON)."""
    found = await locate.instances(redis, settings.archive_path, study)
    return await _metadata_response(found, study, request, settings)


@router.get(
    SERIES + "/metadata",
    responses={200: {"content": {DICOM_JSON: {}}}},
    openapi_extra=needs(Scope.READ),
)
async def series_metadata(
    study: str, series: str, request: Request, redis: RedisClient, settings: Settings
) -> Response:
    """The metadata of every archived instance of a series (DICOM JSON)."""
    found = await locate.instances(redis, settings.archive_path, study, series)
    return await _metadata_response(found, study, request, settings)


@router.get(
    INSTANCE + "/metadata",
    responses={200: {"content": {DICOM_JSON: {}}}},
    openapi_extra=needs(Scope.READ),
)
async def instance_metadata(
    study: str, series: str, sop: str, request: Request, redis: RedisClient, settings: Settings
) -> Response:
    """The metadata of one archived instance (DICOM JSON, an array of one)."""
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _metadata_response([found], study, request, settings)


def public_root(request: Request, settings: GatewaySettings) -> str:
    """The DICOMweb root for URLs in answers: DICOMWEB_PUBLIC_URL, else from the request."""
    if settings.dicomweb_public_url is not None:
        return str(settings.dicomweb_public_url).rstrip("/")
    return f"{str(request.base_url).rstrip('/')}/dicomweb"


async def _metadata_response(
    found: list[Instance], study: str, request: Request, settings: GatewaySettings
) -> Response:
    accept = media.parse_accept(request.headers.get("accept"))
    if not any(a.media in (DICOM_JSON, "application/json", "*/*", "application/*") for a in accept):
        raise NotAcceptable("metadata is application/dicom+json")
    base = f"{public_root(request, settings)}/studies/{study}"
    etag = await asyncio.to_thread(_etag, found, base)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return StreamingResponse(_metadata_array(found, base), media_type=DICOM_JSON, headers=headers)


def _etag(found: list[Instance], base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for instance in found:
        try:
            stat = instance.metadata.stat()
            digest.update(f"{instance.upload_id}:{stat.st_mtime_ns}:{stat.st_size};".encode())
        except FileNotFoundError:
            digest.update(f"{instance.upload_id}:-;".encode())
    return f'"{digest.hexdigest()[:32]}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


async def _metadata_array(found: list[Instance], base: str) -> AsyncIterator[bytes]:
    yield b"["
    for n, instance in enumerate(found):
        try:
            dataset = await asyncio.to_thread(_dataset_json, instance, base)
        except FileNotFoundError:
            log.warning("wado.instance_gone", upload_id=instance.upload_id)
            continue
        yield (b"," if n else b"") + dataset
    yield b"]"


def _dataset_json(instance: Instance, base: str) -> bytes:
    """One instance's DICOM JSON from its archived metadata.json, with working BulkDataURIs."""
    described = json.loads(instance.metadata.read_bytes())
    prefix = f"{base}/series/{instance.series}/instances/{instance.sop}/bulkdata/"
    dataset = _with_uris(described.get("dataset", {}), prefix)
    syntax = described.get("file_meta", {}).get("00020010")
    if syntax:  # AvailableTransferSyntaxUID: what a client may ask for as stored
        dataset["00083002"] = {"vr": "UI", "Value": syntax.get("Value", [])}
        dataset = dict(sorted(dataset.items()))
    return json.dumps(dataset, separators=(",", ":")).encode()


def _with_uris(dataset: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The dataset with each fragment-only BulkDataURI (``#7FE00010``) made absolute."""
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("#"):
            element = {**element, "BulkDataURI": prefix + uri[1:]}
        elif element.get("vr") == "SQ" and element.get("Value"):
            items = [_with_uris(item, prefix) for item in element["Value"]]
            element = {**element, "Value": items}
        out[tag] = element
    return out


# ---- frames and bulk data ----


@router.get(
    INSTANCE + "/frames/{frames}",
    response_class=Response,
    responses={200: MULTIPART},
    openapi_extra=needs(Scope.READ),
)
async def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    redis: RedisClient,
    settings: Settings,
) -> Response:
    """Frames of an instance, in the order asked (``1,3``), one part each."""
    numbers = pixels.parse_frame_list(frames)
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _frames_response(found, numbers, request)


@router.get(
    INSTANCE + "/bulkdata/{tag_path:path}",
    response_class=Response,
    responses={200: MULTIPART},
    openapi_extra=needs(Scope.READ),
)
async def retrieve_bulkdata(
    study: str,
    series: str,
    sop: str,
    tag_path: str,
    request: Request,
    redis: RedisClient,
    settings: Settings,
) -> Response:
    """The value of one bulk data element, as its metadata's BulkDataURI names it."""
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    is_pixels, value = await asyncio.to_thread(pixels.bulk_value, found.original, tag_path)
    if is_pixels:
        frames = await asyncio.to_thread(_all_frames, found.original)
        return await _frames_response(found, frames, request)
    accept = media.parse_accept(request.headers.get("accept"))
    if not any(
        (a.part if a.media.startswith("multipart/") else a.media) in (None, "*/*", media.OCTET)
        for a in accept
    ):
        raise NotAcceptable("bulk data is application/octet-stream")
    assert isinstance(value, bytes)
    return _multipart([value], media.OCTET, media.OCTET, location=str(request.url))


def _all_frames(path: Path) -> list[int]:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return list(range(1, pixels.number_of_frames(header) + 1))


async def _frames_response(found: Instance, numbers: list[int], request: Request) -> Response:
    stored = await asyncio.to_thread(pixels.stored_syntax, found.original)
    coding = media.frame_coding(media.parse_accept(request.headers.get("accept")), stored)
    data = await asyncio.to_thread(pixels.read_frames, found.original, numbers, coding.decode)
    if coding.single and len(data) == 1:  # a bare media type asked for: one frame, one body
        return Response(data[0], media_type=coding.content_type)
    return _multipart(data, coding.content_type, coding.content_type.split(";")[0])


def _multipart(
    parts: list[bytes], content_type: str, part_type: str, location: str | None = None
) -> Response:
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if location:  # PS3.18 10.4.3.3.5: a bulk data part names the BulkDataURI it answers
        head += f"Content-Location: {location}\r\n"
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"{head}\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(
        b"".join(chunks),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


# ---- rendered and thumbnail ----

Window = Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid]")]
Viewport = Annotated[str | None, Query(description="width,height in pixels")]
Quality = Annotated[int | None, Query(ge=1, le=100, description="JPEG quality")]


def _format(request: Request) -> Literal["png", "jpeg"]:
    accepted = media.rendered_format(media.parse_accept(request.headers.get("accept")))
    return "png" if accepted == "png" else "jpeg"


async def rendering(
    request: Request, window: Window = None, viewport: Viewport = None, quality: Quality = None
) -> View:
    """How a rendered resource is asked for (PS3.18 §8.3.5.1): its window, viewport and quality
    from the query, its format from Accept; the frame is the resource's."""
    center_width, function = _window(window)
    return View(
        window=center_width,
        function=function,
        viewport=_viewport(viewport),
        format=_format(request),
        quality=quality or 90,
    )


async def thumbnail(request: Request, viewport: Viewport = None) -> View:
    """How a thumbnail is asked for: its viewport (THUMBNAIL when none is), its format."""
    return View(viewport=_viewport(viewport) or THUMBNAIL, format=_format(request))


Rendered = Annotated[View, Depends(rendering)]
Thumbnail = Annotated[View, Depends(thumbnail)]


@router.get(
    STUDY + "/rendered",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def study_rendered(
    study: str,
    redis: RedisClient,
    settings: Settings,
    how: Rendered,
) -> FileResponse:
    """The study's first instance, rendered."""
    found = await locate.instances(redis, settings.archive_path, study)
    return await _rendered(found[0], 1, how)


@router.get(
    STUDY + "/thumbnail",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def study_thumbnail(
    study: str, redis: RedisClient, settings: Settings, how: Thumbnail
) -> FileResponse:
    """A small image of the study's first instance."""
    found = await locate.instances(redis, settings.archive_path, study)
    return await _rendered(found[0], 1, how)


@router.get(
    SERIES + "/rendered",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def series_rendered(
    study: str,
    series: str,
    redis: RedisClient,
    settings: Settings,
    how: Rendered,
) -> FileResponse:
    """The series' first instance, rendered."""
    found = await locate.instances(redis, settings.archive_path, study, series)
    return await _rendered(found[0], 1, how)


@router.get(
    SERIES + "/thumbnail",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def series_thumbnail(
    study: str,
    series: str,
    redis: RedisClient,
    settings: Settings,
    how: Thumbnail,
) -> FileResponse:
    """A small image of the series' first instance."""
    found = await locate.instances(redis, settings.archive_path, study, series)
    return await _rendered(found[0], 1, how)


@router.get(
    INSTANCE + "/rendered",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def instance_rendered(
    study: str,
    series: str,
    sop: str,
    redis: RedisClient,
    settings: Settings,
    how: Rendered,
) -> FileResponse:
    """The instance's first frame, rendered."""
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _rendered(found, 1, how)


@router.get(
    INSTANCE + "/thumbnail",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def instance_thumbnail(
    study: str,
    series: str,
    sop: str,
    redis: RedisClient,
    settings: Settings,
    how: Thumbnail,
) -> FileResponse:
    """A small image of the instance's first frame."""
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _rendered(found, 1, how)


@router.get(
    INSTANCE + "/frames/{frames}/rendered",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def frame_rendered(
    study: str,
    series: str,
    sop: str,
    frames: str,
    redis: RedisClient,
    settings: Settings,
    how: Rendered,
) -> FileResponse:
    """One frame, rendered."""
    frame = _one_frame(frames)
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _rendered(found, frame, how)


@router.get(
    INSTANCE + "/frames/{frames}/thumbnail",
    response_class=FileResponse,
    responses={200: IMAGES},
    openapi_extra=needs(Scope.READ),
)
async def frame_thumbnail(
    study: str,
    series: str,
    sop: str,
    frames: str,
    redis: RedisClient,
    settings: Settings,
    how: Thumbnail,
) -> FileResponse:
    """A small image of one frame."""
    frame = _one_frame(frames)
    found = await locate.instance(redis, settings.archive_path, study, series, sop)
    return await _rendered(found, frame, how)


def _one_frame(frames: str) -> int:
    numbers = pixels.parse_frame_list(frames)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame is one frame number")
    return numbers[0]


async def _rendered(found: Instance, frame: int, how: View) -> FileResponse:
    view = replace(how, frame=frame)
    path = await rendered(found.folder, view)  # 400 for a frame the instance does not have
    return FileResponse(path, media_type=view.media_type)


def _window(text: str | None) -> tuple[tuple[float, float] | None, str | None]:
    if text is None:
        return None, None
    pieces = text.split(",")
    function = None
    if len(pieces) == 3:
        function = FUNCTIONS.get(pieces[2].strip().lower())
        if function is None:
            raise BadRequest("the window function is linear, linear-exact or sigmoid")
        pieces = pieces[:2]
    return parse_window(",".join(pieces)), function


def _viewport(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    pieces = text.split(",")
    if len(pieces) != 2:
        raise BadRequest("viewport is width,height (cropping with sx,sy,sw,sh is not supported)")
    try:
        width, height = (int(p) for p in pieces)
    except ValueError:
        raise BadRequest("viewport is width,height in whole pixels") from None
    if not (1 <= width <= 4096 and 1 <= height <= 4096):
        raise BadRequest("viewport sides are 1-4096 pixels")
    return width, height
