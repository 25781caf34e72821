"""Tag expressions and QIDO-RS query keys from random strings: answers or 400s, nothing else.

- ``api_gateway.tags.parse_tags`` (``GET /uploads/{id}/tags?tag=...``): the tags named and the
  specs naming none, whatever the text; ``ValueError`` only for more than ``MAX_SPECS``.
- ``shared.query_keys.Query.parse`` (QIDO-RS and C-FIND keys), the study index's query it
  becomes (``shared.query._study_query``), and ``matches`` of every accepted key against the
  values the indexes hold: ``BadRequest`` (which names the key, never quotes the value) or an
  answer. An exception in ``matches`` would be a 500 for every search reaching that record.
"""

from __future__ import annotations

from typing import Any

from api_gateway.tags import MAX_SPECS, parse_tag, parse_tags
from hypothesis import example, given, note
from hypothesis import strategies as st
from pydicom.datadict import keyword_dict
from pydicom.tag import BaseTag

from shared.errors import BadRequest
from shared.query import _study_query
from shared.query_keys import ATTRIBUTES, LEVELS, Query, matches
from tests.fuzz.bounds import bounded
from tests.fuzz.conftest import cases

KEYWORDS = sorted(keyword_dict)
HEX = "0123456789abcdefABCDEF"
# digits of other scripts: str.isdigit() says yes to all, int() to only some of them
ODD_DIGITS = "²³¹٠١٢٣٤٥٦٧٨٩०१२३४५६७८९０１２３４５６７８９⁰"
text = st.text(max_size=40) | st.text(ODD_DIGITS + "0123456789-.:*?\\,", max_size=20)

hex4 = st.text(HEX, min_size=4, max_size=4)
tag_specs = st.one_of(
    st.builds(lambda g, e: f"({g},{e})", hex4, hex4),
    st.builds(lambda g, e: f"{g},{e}", hex4, hex4),
    st.builds(lambda g, e: f"{g}{e}", hex4, hex4),
    st.builds(lambda g, e: f"0x{g}{e}", hex4, hex4),
    st.sampled_from(KEYWORDS),
    st.sampled_from(KEYWORDS).map(str.lower),
    text,
).map(lambda s: s if len(s) < 60 else s[:60])


@given(st.lists(tag_specs, max_size=MAX_SPECS + 2))
@cases("tag expressions")
@example(["(0028,0011)", "PatientName", "(2222,2222)", "  Rows ", "0x7FE00010", "6000,3000"])
def test_tag_expressions_are_tags_or_named_invalid(specs: list[str]) -> None:
    with bounded("tag expressions", seconds=2, memory_mb=64, case=specs):
        try:
            tags, invalid = parse_tags(specs)
        except ValueError:
            assert len(specs) > MAX_SPECS
            return
    assert len(specs) <= MAX_SPECS
    assert all(isinstance(tag, BaseTag) for tag in tags)
    assert len(set(tags)) == len(tags)
    stripped = {spec.strip() for spec in specs}
    assert set(invalid) <= stripped
    for spec in invalid:
        assert parse_tag(spec) is None


# --- QIDO-RS -------------------------------------------------------------------------------------

keys = st.one_of(
    st.sampled_from(sorted(ATTRIBUTES)),
    st.sampled_from([a.tag for a in ATTRIBUTES.values()]),
    st.sampled_from(KEYWORDS),
    st.just("includefield"),
    st.text(HEX, min_size=8, max_size=8),
    st.text(max_size=20),
)


def values_for(key: str) -> st.SearchStrategy[str]:
    """Values a client might send: well-formed for the key's VR, near misses, and noise."""
    attr = ATTRIBUTES.get(key)
    vr = attr.vr if attr else None
    shaped: list[st.SearchStrategy[str]] = [text, st.sampled_from(["", "*", "?", "\\", ",", "-"])]
    if vr == "DA":
        day = st.dates().map(lambda d: d.strftime("%Y%m%d"))
        shaped += [day, st.builds(lambda a, b: f"{a}-{b}", day | st.just(""), day | st.just(""))]
    elif vr == "TM":
        clock = st.times().map(lambda t: t.strftime("%H%M%S.%f"))
        shaped += [clock, st.builds(lambda a, b: f"{a}-{b}", clock, clock)]
    elif vr == "UI":
        shaped += [st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,4}){0,6}([\\,][0-9.]{1,9}){0,2}\Z")]
    elif vr in ("IS", "US"):
        shaped += [st.integers(-(2**40), 2**40).map(str)]
    elif key == "includefield":
        shaped += [st.lists(st.sampled_from([*ATTRIBUTES, "all", "00100010"])).map(",".join)]
    return st.one_of(shaped)


params = st.lists(keys.flatmap(lambda k: st.tuples(st.just(k), values_for(k))), max_size=6)


def stored(vr: str) -> st.SearchStrategy[str | None]:
    """What the indexes hold for an attribute (status_service.indexes writes these forms)."""
    forms: list[st.SearchStrategy[str | None]] = [st.none(), st.just(""), st.text(max_size=20)]
    if vr == "DA":
        forms.append(st.dates().map(lambda d: d.strftime("%Y%m%d")))
    elif vr == "TM":
        forms.append(st.times().map(lambda t: t.strftime("%H%M%S.%f")))
    elif vr in ("IS", "US"):
        forms.append(st.integers(-(2**31), 2**31).map(str))
    elif vr == "UI":
        forms.append(st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,4}){0,6}\Z"))
    elif vr == "CS":
        forms.append(st.sampled_from(["CT", "MR", "CT,MR", "OT"]))
    return st.one_of(forms)


@given(st.sampled_from(LEVELS), params, st.integers(-5, 5000), st.integers(-5, 10**9))
@cases("QIDO query keys")
@example("study", [("StudyTime", "²²")], 100, 0)
@example("series", [("SeriesNumber", "٣")], 100, 0)
def test_query_keys_are_a_query_or_a_bad_request(
    level: Any, pairs: list[tuple[str, str]], limit: int, offset: int
) -> None:
    with bounded("QIDO query keys", seconds=2, memory_mb=64, case=(level, pairs)):
        try:
            query = Query.parse(level, pairs, limit=limit, offset=offset)
            if query.level == "study" or any(ATTRIBUTES[k].level == "study" for k in query.keys):
                _study_query(query)
                _study_query(query, paged=True)
        except BadRequest as exc:
            said = str(exc)
        else:
            said = None
    if said is not None:  # a 400 names the key (at most 64 characters), never the value
        note(said)
        names = [k for k, _ in pairs] + [v for k, v in pairs if k == "includefield"]
        values = [v for k, v in pairs if k != "includefield" and len(v) >= 3]
        quoted = [v for v in values if v in said and not any(v in name for name in names)]
        assert not quoted, said
        return
    assert 1 <= query.limit <= 1000
    assert query.offset >= 0
    assert set(query.keys) <= set(ATTRIBUTES)


@st.composite
def accepted_keys(draw: st.DrawFn) -> tuple[Query, dict[str, str | None]]:
    """A query that parsed, and a record (one value per attribute) to match it against."""
    level = draw(st.sampled_from(LEVELS))
    pairs = draw(params.filter(bool))
    try:
        query = Query.parse(level, pairs)
    except BadRequest:
        query = Query("instance")
    record = {k: draw(stored(a.vr)) for k, a in ATTRIBUTES.items() if k in query.keys}
    return query, record


@given(accepted_keys())
@cases("QIDO matching")
@example((Query("series", keys={"SeriesNumber": "²"}), {"SeriesNumber": "2"}))
@example((Query("study", keys={"StudyTime": "1200"}), {"StudyTime": "²²"}))
def test_every_accepted_key_matches_any_stored_value_without_error(
    case: tuple[Query, dict[str, str | None]],
) -> None:
    query, record = case
    with bounded("QIDO matching", seconds=2, memory_mb=64, case=case):
        for keyword, wanted in query.keys.items():
            assert isinstance(matches(ATTRIBUTES[keyword], wanted, record.get(keyword)), bool)
