"""QIDO-RS, PS3.18 §10.6: search for studies, series and instances, from the indexes.

Resources (§10.6.1): ``/dicomweb/studies``, ``/series``, ``/instances``,
``/studies/{study}/series``, ``/studies/{study}/instances`` and
``/studies/{study}/series/{series}/instances``. Query keys as keywords or tags
(``PatientName``, ``00100010``), ``includefield`` (repeated, comma-separated, ``all``),
``limit``/``offset`` and ``fuzzymatching`` (accepted; matching stays literal, and a Warning
says so). Every answer is ``application/dicom+json``: 200 with an array, ``[]`` when nothing
matches (RFC 9110 and CP-2473 rather than the 204 of older PS3.18 text: both empty). When more
results match than this page holds, a ``Warning: 299`` header says so and a client paging with
``offset`` sees the end as a short or empty page. A bad key or value is a 400 problem naming
the key, never quoting the value. The matching itself is ``shared.query.find``'s, the one
query function of ``/studies``, QIDO-RS and C-FIND.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Settings
from api_gateway.dicomweb.wado import public_root
from api_gateway.settings import GatewaySettings
from shared import query_keys
from shared.bus import REDIS_DOWN
from shared.errors import BadRequest, NotAcceptable, ServiceUnavailable
from shared.query import find

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

MEDIA_TYPE = "application/dicom+json"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PAGING = {"limit", "offset", "fuzzymatching"}
_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "The matches as DICOM JSON (an empty array when none match)"},
    400: {"description": "A query key or value is not valid (application/problem+json)"},
    406: {"description": "The Accept header allows no DICOM JSON (XML is not offered)"},
    503: {"description": "Redis, which holds the indexes, does not answer"},
}
_ACCEPTED = {"application/dicom+json", "application/json", "application/*", "*/*"}


class DicomJSON(JSONResponse):
    """What every resource here answers: the DICOM JSON model (PS3.18 Annex F)."""

    media_type = MEDIA_TYPE


Limit = Annotated[int, Query(description=f"1 or more; at most {query_keys.MAX_LIMIT} are returned")]
Offset = Annotated[int, Query(description="results to skip")]
Fuzzy = Annotated[bool, Query(description="accepted; matching stays literal")]


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int
    fuzzymatching: bool


async def paging(limit: Limit = 100, offset: Offset = 0, fuzzymatching: Fuzzy = False) -> Paging:
    """The parameters every QIDO-RS resource takes besides its query keys."""
    return Paging(limit, offset, fuzzymatching)


Page = Annotated[Paging, Depends(paging)]


async def _answer(
    redis: RedisClient,
    request: Request,
    settings: GatewaySettings,
    level: query_keys.Level,
    page: Paging,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    for name, uid in (("study", study), ("series", series)):
        if uid is not None and (len(uid) > 64 or not UID.match(uid)):
            raise BadRequest(f"the {name} in the path is not a UID: digits and dots, up to 64")
    accept = request.headers.get("accept", "")
    ranges = {r.split(";")[0].strip().lower() for r in accept.split(",") if r.strip()}
    if ranges and not ranges & _ACCEPTED:
        raise NotAcceptable("QIDO-RS answers application/dicom+json only")
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in _PAGING]
    query = query_keys.Query.parse(
        level, params, study_uid=study, series_uid=series, limit=page.limit, offset=page.offset
    )
    try:
        result = await find(redis, query)
    except REDIS_DOWN:
        raise ServiceUnavailable("the index cannot be read now: Redis does not answer") from None
    service = public_root(request, settings)
    warnings = []
    if query.offset + len(result.datasets) < result.total:
        warnings.append(
            f'299 {service}: "The number of results exceeded the maximum supported by the '
            f'server. Additional results can be requested."'
        )
    if page.fuzzymatching:
        warnings.append(
            f'299 {service}: "The fuzzymatching parameter is not supported. '
            f'Only literal matching has been performed."'
        )
    if query.ignored:
        keys = ", ".join(k[:64] for k in query.ignored)
        warnings.append(
            f'299 {service}: "The following attributes are not supported for matching: {keys}"'
        )
    for dataset in result.datasets:
        dataset["00081190"] = {"vr": "UR", "Value": [_retrieve_url(service, level, dataset)]}
    headers = {"X-Total-Count": str(result.total)}
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return JSONResponse(result.datasets, headers=headers, media_type=MEDIA_TYPE)


_PATH = (
    ("study", "studies", "0020000D"),
    ("series", "series", "0020000E"),
    ("instance", "instances", "00080018"),
)


def _retrieve_url(service: str, level: query_keys.Level, dataset: dict[str, Any]) -> str:
    """The WADO-RS URL of one result (RetrieveURL, PS3.18 Table 10.6.3-3/4/5)."""
    path = [service]
    for name, resource, tag in _PATH:
        path += [resource, dataset[tag]["Value"][0]]
        if name == level:
            break
    return "/".join(path)


@router.get(
    "/studies", responses=_RESPONSES, response_class=DicomJSON, openapi_extra=needs(Scope.READ)
)
async def search_for_studies(
    redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForStudies: the studies matching every key."""
    return await _answer(redis, request, settings, "study", page)


@router.get(
    "/series", responses=_RESPONSES, response_class=DicomJSON, openapi_extra=needs(Scope.READ)
)
async def search_for_series(
    redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForSeries, in every study."""
    return await _answer(redis, request, settings, "series", page)


@router.get(
    "/instances", responses=_RESPONSES, response_class=DicomJSON, openapi_extra=needs(Scope.READ)
)
async def search_for_instances(
    redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForInstances, in every study."""
    return await _answer(redis, request, settings, "instance", page)


@router.get(
    "/studies/{study}/series",
    responses=_RESPONSES,
    response_class=DicomJSON,
    openapi_extra=needs(Scope.READ),
)
async def search_for_study_series(
    study: str, redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForSeries of one study."""
    return await _answer(redis, request, settings, "series", page, study)


@router.get(
    "/studies/{study}/instances",
    responses=_RESPONSES,
    response_class=DicomJSON,
    openapi_extra=needs(Scope.READ),
)
async def search_for_study_instances(
    study: str, redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForInstances of one study."""
    return await _answer(redis, request, settings, "instance", page, study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    responses=_RESPONSES,
    response_class=DicomJSON,
    openapi_extra=needs(Scope.READ),
)
async def search_for_series_instances(
    study: str, series: str, redis: RedisClient, request: Request, settings: Settings, page: Page
) -> Response:
    """SearchForInstances of one series."""
    return await _answer(redis, request, settings, "instance", page, study, series)
