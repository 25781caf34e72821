"""The query keys of QIDO-RS and C-FIND: reading them and matching one value (PS3.4 C.2.2.2)."""

from __future__ import annotations

import pytest

from shared.errors import BadRequest
from shared.query_keys import ATTRIBUTES, Query, attribute, matches


def match(keyword: str, wanted: str, value: str | None) -> bool:
    return matches(ATTRIBUTES[keyword], wanted, value)


def test_keys_are_keywords_or_tags_and_unknown_attributes_are_set_aside() -> None:
    assert attribute("PatientName") is attribute("00100010") is ATTRIBUTES["PatientName"]
    assert attribute("0020000d") is ATTRIBUTES["StudyInstanceUID"]
    assert attribute("PatientWeight") is None  # DICOM knows it; the indexes do not
    for bad in ("NotAKeyword", "FFFF0001"):
        with pytest.raises(BadRequest):
            attribute(bad)


def test_a_query_reads_its_keys_includefields_and_paging() -> None:
    query = Query.parse(
        "series",
        [
            ("PatientName", " SMITH* "),
            ("0008103E", "AX*"),
            ("includefield", "StudyDate,00100020"),
            ("includefield", "all"),
            ("PatientWeight", "70"),
            ("NumberOfSeriesRelatedInstances", "3"),
        ],
        limit=10,
        offset=20,
    )
    assert query.keys == {"PatientName": "SMITH*", "SeriesDescription": "AX*"}
    assert query.include == {"StudyDate", "PatientID"}
    assert query.include_all
    assert query.ignored == ["PatientWeight", "NumberOfSeriesRelatedInstances"]
    assert (query.limit, query.offset) == (10, 20)


@pytest.mark.parametrize(
    ("level", "params", "limit", "offset"),
    [
        ("study", [("SOPInstanceUID", "1.2")], 100, 0),  # below the level
        ("study", [("StudyDate", "2020")], 100, 0),
        ("study", [("StudyTime", "2460")], 100, 0),
        ("study", [("StudyInstanceUID", "1.2.x")], 100, 0),
        # found by fuzzing: digits of other scripts, which str.isdigit takes and int refuses
        # (a ValueError, so a 500)
        ("study", [("StudyTime", "²²")], 100, 0),
        ("study", [("StudyTime", "12³")], 100, 0),
        ("study", [("StudyInstanceUID", "1.²")], 100, 0),
        ("study", [("StudyDate", "٢٠٢٠٠١٠١")], 100, 0),
        ("study", [], 0, 0),
        ("study", [], 10, -1),
        # found by schemathesis: Redis refused a LIMIT offset past 64 bits, and that was a 500
        ("study", [], 10, 114908686333989561040896),
    ],
)
def test_bad_keys_values_and_paging_are_refused(
    level: str, params: list[tuple[str, str]], limit: int, offset: int
) -> None:
    with pytest.raises(BadRequest) as raised:
        Query.parse(level, params, limit=limit, offset=offset)  # type: ignore[arg-type]
    for _, value in params:
        assert len(value) < 4 or value not in str(raised.value)


def test_single_values_wildcards_and_case() -> None:
    assert match("PatientName", "smith^jane", "SMITH^JANE^^")
    assert match("PatientName", "SM?TH*", "Smith^Jane")
    assert not match("PatientName", "SMITH", "SMITHSON^JOHN")
    assert match("PatientID", "pid-1", "PID-1")
    assert match("SeriesDescription", "*ax*", "T1 AXIAL")
    assert match("Modality", "CT", "CT")
    assert not match("Modality", "CT", "MR")
    assert match("InstanceNumber", "7", "7")
    assert not match("InstanceNumber", "7", "17")


def test_universal_matching_matches_a_missing_value_too() -> None:
    for wanted in ("", "*", "**"):
        assert match("PatientName", wanted, None)
        assert match("StudyDate", wanted, None)
    assert not match("PatientName", "A*", None)


def test_uid_lists() -> None:
    assert match("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.4")
    assert match("SOPInstanceUID", "1.2.3,1.2.4", "1.2.3")
    assert not match("SOPInstanceUID", "1.2.3,1.2.4", "1.2.34")


def test_date_and_time_ranges() -> None:
    assert match("StudyDate", "20200101-20201231", "20200615")
    assert match("StudyDate", "20200615-", "20200615")
    assert match("StudyDate", "-20200615", "20200615")
    assert not match("StudyDate", "20200616-", "20200615")
    assert match("StudyDate", "20200615", "20200615")
    assert not match("StudyDate", "20200615", "20200616")
    assert not match("StudyDate", "20200101-", None)
    assert match("StudyTime", "0800-0900", "083015.5")
    assert not match("StudyTime", "0800-0830", "083015")
    assert match("StudyTime", "0830", "083015")  # a single time at its own precision
    assert not match("StudyTime", "0831", "083015")


def test_numbers_in_other_scripts_never_match_and_never_fail() -> None:
    """Found by fuzzing: ``SeriesNumber=²`` reached ``int("²")`` on every stored series."""
    number = ATTRIBUTES["SeriesNumber"]
    assert not matches(number, "²", "2")
    assert not matches(number, "0²", "2")
    assert matches(number, "007", "7")


def test_modalities_in_study_match_any_of_a_list() -> None:
    assert match("ModalitiesInStudy", "MR\\US", "CT,MR")
    assert match("ModalitiesInStudy", "ct", "CT,MR")
    assert not match("ModalitiesInStudy", "US", "CT,MR")


def test_a_limit_above_the_maximum_is_lowered_to_it() -> None:
    assert Query.parse("study", [], limit=5000).limit == 1000
