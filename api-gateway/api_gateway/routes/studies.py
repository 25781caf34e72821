"""Study search over HTTP: ``GET /studies`` (filtered, sorted, paged) and ``GET /studies/{uid}``.

Both read the study index that the status service keeps (``shared.study_index``) through
``shared.study_search``, never the files.
A filter that is not valid is a 400 naming the parameter and never quoting its value, since
values may be patient data.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import ValidationError

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient
from shared.errors import BadRequest, StudyNotFound
from shared.study_search import SORT_KEYS, StudyPage, StudyQuery, StudyRecord, get_study, search

router = APIRouter(tags=["studies"])

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def study_query(params: dict[str, Any]) -> StudyQuery:
    """The query the parameters describe, or a 400 that names each bad parameter only."""
    try:
        return StudyQuery.model_validate(params)
    except ValidationError as exc:  # its messages name no value; its inputs are left out
        problems: list[tuple[str | None, str]] = [
            (str(e["loc"][0]) if e["loc"] else None, e["msg"].removeprefix("Value error, "))
            for e in exc.errors(include_input=False, include_url=False)
        ]
        detail = "; ".join(
            f"the {param} parameter is not valid: {msg}" if param else msg
            for param, msg in problems
        )
        invalid = [{"param": param, "msg": msg} for param, msg in problems]
        raise BadRequest(detail, invalidParams=invalid) from None


@router.get(
    "/studies",
    response_model=StudyPage,
    responses={400: {"description": "A filter, the paging or the sort is not valid"}},
    openapi_extra=needs(Scope.READ),
)
async def list_studies(
    redis: RedisClient,
    patient_name: Annotated[
        str | None, Query(description="DICOM wildcards * and ?, any case: SMITH*, *ANN*")
    ] = None,
    patient_id: Annotated[str | None, Query(description="exact, any case; * and ? allowed")] = None,
    modality: Annotated[
        list[str] | None, Query(description="repeat it or CT,MR: studies with any of them")
    ] = None,
    study_date: Annotated[
        str | None, Query(description="20200101, 20200101-20201231, 20200101- or -20201231")
    ] = None,
    study_date_from: Annotated[str | None, Query(description="YYYYMMDD, inclusive")] = None,
    study_date_to: Annotated[str | None, Query(description="YYYYMMDD, inclusive")] = None,
    institution: Annotated[str | None, Query(description="exact, any case; * and ?")] = None,
    accession_number: Annotated[str | None, Query(description="exact, any case; * and ?")] = None,
    study_uid: Annotated[list[str] | None, Query(description="repeat it for several")] = None,
    limit: Annotated[int, Query(description="1 to 1000")] = 100,
    offset: Annotated[int, Query(description="studies to skip")] = 0,
    sort: Annotated[
        str, Query(description=f"{', '.join(SORT_KEYS)}; - first for descending")
    ] = "-study_date",
) -> StudyPage:
    """Studies matching every filter given, from the index: one page, and the total."""
    query = study_query(
        {
            "patient_name": patient_name,
            "patient_id": patient_id,
            "modality": modality,
            "study_date": study_date,
            "study_date_from": study_date_from,
            "study_date_to": study_date_to,
            "institution": institution,
            "accession_number": accession_number,
            "study_uid": study_uid,
            "limit": limit,
            "offset": offset,
            "sort": sort,
        }
    )
    return await search(redis, query)


@router.get(
    "/studies/{study_uid}",
    response_model=StudyRecord,
    responses={404: {"description": "No indexed upload holds this study"}},
    openapi_extra=needs(Scope.READ),
)
async def one_study(study_uid: str, redis: RedisClient) -> StudyRecord:
    """One study: its attributes, modalities, counts and the uploads that hold it."""
    if len(study_uid) > 64 or not UID.match(study_uid):
        raise StudyNotFound("that is not a Study Instance UID: digits and dots, up to 64")
    record = await get_study(redis, study_uid)
    if record is None:
        raise StudyNotFound(f"no archived upload holds study {study_uid}")
    return record
