"""STOW-RS, the Studies Store transaction (DICOM PS3.18 §10.5), through the gateway's one intake.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a
``multipart/related; type="application/dicom"`` body (boundary quoted or not, Content-Length or
chunked). Each part is streamed to ``UPLOADS_PATH`` by the upload route's sinks (never a whole
part in memory), read for its UIDs, and becomes one upload job through ``intake.queue``, like
``POST /upload`` (same MAX_FILE_SIZE, status and feed; source ``stow``).

The answer is PS3.18's Store Instances Response Module (Annex I) in ``application/dicom+json``.
It waits, up to STOW_VALIDATION_TIMEOUT_S, for each instance's validation, so that an instance
the validator rejects is reported in FailedSOPSequence, never as stored. An instance still
unvalidated at the timeout is listed in ReferencedSOPSequence with WarningReason 0xB0F0
(``VALIDATION_PENDING``) and the answer is 202. Every item carries the instance's upload id in
the private attribute (0009,1001) of private creator ``dicomflow`` (block (0009,0010)), for
``GET /status/{upload_id}``, and (0009,1002) a readable reason when there is one.

Status codes (PS3.18 Table 10.5.3-1): 200 every instance stored; 202 some stored, with
failures or warnings for others; 409 none stored; 400 a malformed body (no or wrong boundary,
a body cut short); 408 a body that stops coming (HTTP_BODY_READ_TIMEOUT_S, HTTP_BODY_MIN_RATE:
``api_gateway.body_deadline``, as for every route); 415 a Content-Type other than
``multipart/related; type="application/dicom"``. A request that fails as a whole leaves nothing
written.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from python_multipart.multipart import parse_options_header

from api_gateway import http_intake
from api_gateway.access import Scope, needs
from api_gateway.deps import Feed, Settings, Store, caller_of
from api_gateway.dicomweb.wado import public_root
from api_gateway.receive import MultipartReceiver, ReceivedFile, Sink
from shared import intake, metrics
from shared.errors import AppError, BadRequest, UnsupportedMediaType
from shared.files import is_small, run_blocking
from shared.jobs import JobStatus
from shared.status_api import wait_all

log = structlog.get_logger()
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

MEDIA_TYPE = "application/dicom+json"
PART_TYPE = b"application/dicom"

# Failure Reason (0008,1197) values, PS3.18 Table I.2-2, and ours in its ranges
OUT_OF_RESOURCES = 0xA700  # over MAX_FILE_SIZE
DOES_NOT_MATCH_SOP_CLASS = 0xA900  # the validator rejected the instance
CANNOT_UNDERSTAND = 0xC000  # not DICOM, or pydicom cannot read it
STUDY_UID_MISMATCH = 0xC409  # implementation-specific (Cxxx): not the study of the URL
PROCESSING_FAILURE = 0x0110  # the pipeline gave up on the job (failed)
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# the validator's rejection codes that are not "does not match its SOP Class" (0xA900)
_FAILURE_OF_CODE = {
    "unsupported-transfer-syntax": TRANSFER_SYNTAX_NOT_SUPPORTED,
    "not-dicom": CANNOT_UNDERSTAND,
    "empty-file": CANNOT_UNDERSTAND,
    "missing-file-meta": CANNOT_UNDERSTAND,
    "bad-file-meta": CANNOT_UNDERSTAND,
    "too-deep": CANNOT_UNDERSTAND,
    "too-many-elements": OUT_OF_RESOURCES,
    "too-large": OUT_OF_RESOURCES,
    "too-large-decoded": OUT_OF_RESOURCES,
}
# Warning Reason (0008,1196), implementation-specific (Bxxx): accepted, not yet validated
VALIDATION_PENDING = 0xB0F0

PRIVATE_CREATOR = "dicomflow"
PRIVATE_GROUP = 0x0009
UPLOAD_ID_ELEMENT = 0x01  # (0009,1001) LO: the instance's upload id
REASON_ELEMENT = 0x02  # (0009,1002) LT: why it failed or what the warning means

SETTLED = frozenset({"validated", "rejected"})  # or past them: described, archived, failed


class StowReceiver(MultipartReceiver):
    """The upload route's streaming receiver, taking every part of a multipart/related body
    as a file (its parts have no Content-Disposition); a part whose Content-Type is not
    application/dicom is kept aside as not understood."""

    def __init__(self, boundary: bytes, folder: Path, max_file_size: int, fsync: bool):
        super().__init__(boundary, folder, max_file_size, fsync)
        self.parts = 0
        self.wrong_type: set[UUID] = set()

    def _headers_finished(self) -> None:
        self.parts += 1
        media, _ = parse_options_header(self._headers.get(b"content-type", PART_TYPE))
        self._field = b"file"
        self._sink = Sink(self.folder, self.max_file_size, f"part {self.parts}")
        if media != PART_TYPE:
            self.wrong_type.add(self._sink.upload_id)


@dataclass
class Instance:
    """One part of the request and what became of it."""

    name: str  # "part 3"
    upload_id: UUID | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_class_uid: str | None = None
    sop_uid: str | None = None
    failure: int | None = None
    warning: int | None = None
    reason: str | None = None
    file: ReceivedFile | None = None


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type."""
    media, options = parse_options_header(content_type or "")
    if media != b"multipart/related":
        got = media.decode(errors="replace") or "none"
        raise UnsupportedMediaType(
            f'send multipart/related; type="application/dicom" (got Content-Type {got})'
        )
    kind = options.get(b"type", b"").strip(b'"').lower()
    if kind != PART_TYPE:
        got = kind.decode(errors="replace") or "none"
        raise UnsupportedMediaType(
            f'the multipart/related type must be "application/dicom" ({got})'
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary")
    return boundary


def _read_uids(instance: Instance) -> None:
    """The instance's UIDs from its file, or its failure; blocking, for a thread."""
    assert instance.file is not None
    try:
        ds = dcmread(
            instance.file.path,
            stop_before_pixels=True,
            specific_tags=[
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPClassUID",
                "SOPInstanceUID",
            ],
        )
        instance.study_uid = str(ds.StudyInstanceUID)
        instance.series_uid = str(ds.SeriesInstanceUID)
        instance.sop_class_uid = str(ds.SOPClassUID)
        instance.sop_uid = str(ds.SOPInstanceUID)
    except Exception as exc:  # pydicom raises many kinds of error on a malformed file
        instance.failure = CANNOT_UNDERSTAND
        instance.reason = f"not a readable DICOM instance ({type(exc).__name__})"


async def _screen(
    receiver: StowReceiver, files: list[ReceivedFile], study: str | None
) -> list[Instance]:
    instances: list[Instance] = []
    for f in files:
        instance = Instance(f.filename or "", upload_id=f.upload_id, file=f)
        if f.upload_id in receiver.wrong_type:
            instance.failure = CANNOT_UNDERSTAND
            instance.reason = "the part's Content-Type is not application/dicom"
        elif f.head[128:132] != b"DICM":
            instance.failure = CANNOT_UNDERSTAND
            instance.reason = "the part is not DICOM (no 'DICM' after its 128-byte preamble)"
        else:
            await run_blocking(functools.partial(_read_uids, instance), inline=is_small(f.size))
            if instance.failure is None and study is not None and instance.study_uid != study:
                instance.failure = STUDY_UID_MISMATCH
                instance.reason = f"the instance is of study {instance.study_uid}, not of the URL's"
        if instance.failure is not None:
            f.path.unlink(missing_ok=True)
            instance.file = None
        instances.append(instance)
    for refused in receiver.refused:  # over MAX_FILE_SIZE, dropped as it came
        instances.append(
            Instance(refused.name or "", failure=OUT_OF_RESOURCES, reason=refused.message)
        )
    return instances


async def _follow(kept: list[Instance], store: Store, feed: Feed, seconds: float) -> None:
    """Wait, up to ``seconds`` in all, for each queued instance's validation, and say what
    became of it (one watcher of the feed for the whole request)."""
    ids = [i.upload_id for i in kept if i.upload_id is not None]
    try:
        outcome = await wait_all(store, feed, ids, SETTLED, seconds)
    except AppError as exc:  # Redis stopped answering: they were stored and queued all the same
        for instance in kept:
            instance.warning = VALIDATION_PENDING
            instance.reason = f"accepted; its validation could not be followed ({exc})"
        return
    for instance in kept:
        assert instance.upload_id is not None
        job, timed_out = outcome[instance.upload_id]
        if job is None:  # deleted meanwhile
            instance.warning = VALIDATION_PENDING
            instance.reason = "accepted; its job was deleted before its validation was seen"
        else:
            _settle(instance, job, timed_out)


def _settle(instance: Instance, job: JobStatus, timed_out: bool) -> None:
    """What the pipeline did with a queued instance, as the answer will say it."""
    if job.status == "rejected":
        reasons = job.details.get("reasons") or [{}]
        code = reasons[0].get("code")
        instance.failure = _FAILURE_OF_CODE.get(code, DOES_NOT_MATCH_SOP_CLASS)
        instance.reason = "; ".join(r.get("message", "") for r in reasons) or "rejected"
    elif job.status == "failed":
        instance.failure = PROCESSING_FAILURE
        instance.reason = "the pipeline gave up on this instance"
    elif timed_out and job.status in ("accepted", "validating"):
        instance.warning = VALIDATION_PENDING
        instance.reason = "accepted; validation still pending: follow GET /status/{upload id}"


def _element(vr: str, value: str | int | list[dict[str, Any]] | None) -> dict[str, Any]:
    """One attribute in the DICOM JSON model (PS3.18 F.2.2): an empty one has no Value."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return f"{tag:08X}"


# the attributes of PS3.18 Table I.2-1 (Store Instances Response Module), as DICOM JSON keys
_RETRIEVE_URL, _REFERENCED, _FAILED = (
    _tag(k) for k in ("RetrieveURL", "ReferencedSOPSequence", "FailedSOPSequence")
)
_SOP_CLASS, _SOP_INSTANCE, _FAILURE, _WARNING = (
    _tag(k)
    for k in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID", "FailureReason", "WarningReason")
)
_CREATOR = f"{PRIVATE_GROUP:04X}0010"  # the private block (gggg,10xx) of PRIVATE_CREATOR
_UPLOAD_ID = f"{PRIVATE_GROUP:04X}10{UPLOAD_ID_ELEMENT:02X}"
_REASON = f"{PRIVATE_GROUP:04X}10{REASON_ELEMENT:02X}"


def _item(instance: Instance, base: str) -> dict[str, Any]:
    """An item of ReferencedSOPSequence or FailedSOPSequence, its attributes in tag order (the
    DICOM JSON model written directly: a few fixed attributes, 25 items a request)."""
    item = {
        _SOP_CLASS: _element("UI", instance.sop_class_uid),
        _SOP_INSTANCE: _element("UI", instance.sop_uid),
    }
    if instance.failure is not None:
        item[_FAILURE] = _element("US", instance.failure)
    else:
        item[_RETRIEVE_URL] = _element(
            "UR",
            f"{base}/studies/{instance.study_uid}/series/{instance.series_uid}"
            f"/instances/{instance.sop_uid}",
        )
        if instance.warning is not None:
            item[_WARNING] = _element("US", instance.warning)
    item[_CREATOR] = _element("LO", PRIVATE_CREATOR)
    if instance.upload_id is not None and instance.file is not None:
        item[_UPLOAD_ID] = _element("LO", str(instance.upload_id))
    if instance.reason:
        item[_REASON] = _element("LT", f"{instance.name}: {instance.reason}")
    return dict(sorted(item.items()))


def store_response(instances: list[Instance], base: str, study: str | None) -> tuple[int, dict]:
    """PS3.18 Annex I's module as DICOM JSON, and the status code of Table 10.5.3-1."""
    stored = [i for i in instances if i.failure is None]
    failed = [i for i in instances if i.failure is not None]
    studies = {i.study_uid for i in stored}
    one = study or (studies.pop() if len(studies) == 1 else None)
    body = {_RETRIEVE_URL: _element("UR", f"{base}/studies/{one}" if one else "")}
    if stored:
        body[_REFERENCED] = _element("SQ", [_item(i, base) for i in stored])
    if failed:
        body[_FAILED] = _element("SQ", [_item(i, base) for i in failed])
    if not stored:
        status = 409
    elif failed or any(i.warning is not None for i in stored):
        status = 202
    else:
        status = 200
    return status, dict(sorted(body.items()))


def _abort(receiver: StowReceiver | None, files: list[ReceivedFile]) -> None:
    if receiver is not None:
        receiver.abort()
    for f in files:
        f.path.unlink(missing_ok=True)


async def store_instances(
    request: Request, settings: Settings, store: Store, feed: Feed, study: str | None
) -> JSONResponse:
    boundary = boundary_of(request.headers.get("content-type"))
    receiver: StowReceiver | None = None
    files: list[ReceivedFile] = []
    with http_intake.undone_on_failure(lambda: _abort(receiver, files)):
        receiver = StowReceiver(
            boundary, settings.uploads_path, settings.max_file_size, settings.fsync_uploads
        )
        async for chunk in request.stream():  # one that stops coming: body_deadline, 408
            receiver.feed(chunk)
        files = await receiver.finish()
        if not files and not receiver.refused:
            raise BadRequest("the multipart/related body has no part")
        instances = await _screen(receiver, files, study)
        kept = [i for i in instances if i.file is not None]
        user_id = request.headers.get("x-user-id")
        files_kept = [i.file for i in kept if i.file is not None]
        events = [http_intake.received_file(f, "stow", user_id=user_id) for f in files_kept]
        await intake.queue(store, events, by=caller_of(request))
    for i in instances:
        metrics.UPLOADS.labels("accepted" if i.file is not None else "stow-failed").inc()
    await _follow(kept, store, feed, settings.stow_validation_timeout_s)
    status, body = store_response(instances, public_root(request, settings), study)
    log.info(
        "stow.stored",
        instances=len(instances),
        failed=sum(i.failure is not None for i in instances),
        pending=sum(i.warning is not None for i in instances),
        status=status,
    )
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


_RESPONSES: dict[int | str, dict] = {
    200: {"description": "Every instance stored (validated)", "content": {MEDIA_TYPE: {}}},
    202: {"description": "Some stored; failures or warnings (validation pending) for others"},
    400: {"description": "A malformed body: no or a wrong boundary, a part cut short"},
    408: {"description": "The body stopped coming (HTTP_BODY_READ_TIMEOUT_S); nothing kept"},
    409: {"description": "No instance stored; FailedSOPSequence says why for each"},
    415: {"description": 'Not multipart/related; type="application/dicom"'},
}
_OPENAPI = {  # the body FastAPI cannot see (the handler streams it), and the scope needed
    **needs(Scope.WRITE),
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    },
}


@router.post("/studies", responses=_RESPONSES, openapi_extra=_OPENAPI)
async def store_studies(
    request: Request, settings: Settings, store: Store, feed: Feed
) -> JSONResponse:
    """STOW-RS (PS3.18 §10.5): store the instances of any studies, one upload job each."""
    return await store_instances(request, settings, store, feed, None)


@router.post("/studies/{study}", responses=_RESPONSES, openapi_extra=_OPENAPI)
async def store_study(
    request: Request,
    settings: Settings,
    store: Store,
    feed: Feed,
    study: Annotated[str, PathParam(max_length=64)],
) -> JSONResponse:
    """STOW-RS (PS3.18 §10.5) into one study: an instance of another study fails (0xC409)."""
    return await store_instances(request, settings, store, feed, study)
