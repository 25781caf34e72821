"""QIDO-RS with a real client: dicomweb-client against the gateway served over a socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient
from redis.asyncio import Redis

from tests.integration.test_qido import MR_IMAGE, index, study_uid

pytestmark = pytest.mark.timeout(60)


async def test_dicomweb_client_searches_every_level_and_pages_to_the_end(
    served_gateway: str, redis: Redis
) -> None:
    uploads = await index(redis)
    client = DICOMwebClient(url=f"{served_gateway}/dicomweb")

    def search() -> dict[str, Any]:  # the client blocks: run it beside the served gateway
        return {
            "studies": client.search_for_studies(get_remaining=True, limit=3),
            "smith": client.search_for_studies(
                search_filters={"PatientName": "smith*", "StudyDate": "20210101-"}
            ),
            "series": client.search_for_series(
                search_filters={"Modality": "MR"}, get_remaining=True, limit=5
            ),
            "study_series": client.search_for_series(study_uid(1, 0)),
            "instances": client.search_for_instances(get_remaining=True, limit=7),
            "mr": client.search_for_instances(
                study_uid(2, 1),
                search_filters={"SOPClassUID": MR_IMAGE},
                fields=["PatientName"],
            ),
            "none": client.search_for_studies(search_filters={"PatientID": "NOBODY"}),
        }

    found = await asyncio.to_thread(search)
    assert len(found["studies"]) == 8
    assert {s["0020000D"]["Value"][0] for s in found["smith"]} == {
        study_uid(0, 1),
        study_uid(1, 1),
    }
    assert len(found["series"]) == 8
    assert [s["00200011"]["Value"][0] for s in found["study_series"]] == [1, 2]
    assert len(found["instances"]) == len(uploads)
    assert len({i["00080018"]["Value"][0] for i in found["instances"]}) == len(uploads)
    assert len(found["mr"]) == 2
    assert found["mr"][0]["00100010"]["Value"] == [{"Alphabetic": "Doe^Ann"}]
    assert found["none"] == []
