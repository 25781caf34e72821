"""C-FIND SCP, Study Root Query/Retrieve Information Model - FIND (PS3.4 C.4.1, C.6.2).

Levels STUDY, SERIES and IMAGE, answered by the same query function as QIDO-RS
(``shared.query.find``) on the service's event loop. The identifier's attributes with a value
are matching keys (PS3.4 C.2.2.2: single value, UID lists, wildcards, ranges), the empty ones
are return keys; each match goes back with the identifier's attributes only (C.4.1.1.3.2), as
a pending status 0xFF00, and a C-CANCEL stops the answers (0xFE00).

Failure statuses: 0xA900 identifier does not match SOP class (no or an unknown
QueryRetrieveLevel, a key of a lower level); 0xC000 unable to process (a malformed key value);
0xA700 out of resources (the indexes, in Redis, are unreachable).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from shared.errors import BadRequest
from shared.query import find
from shared.query_keys import MAX_LIMIT, Level, Query

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from dimse_service.server import Bridge

log = structlog.get_logger()

PENDING = 0xFF00
CANCELLED = 0xFE00
SUCCESS = 0x0000
NOT_MATCHING = 0xA900
UNABLE = 0xC000
OUT_OF_RESOURCES = 0xA700

LEVELS: dict[str, Level] = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def to_query(identifier: Dataset, offset: int = 0) -> Query:
    """The query an identifier asks: a ``BadRequest`` if it is not one we can answer."""
    level = LEVELS.get(str(identifier.get("QueryRetrieveLevel", "")).strip().upper())
    if level is None:
        raise LookupError("QueryRetrieveLevel is missing or not STUDY, SERIES or IMAGE")
    params: list[tuple[str, str]] = []
    returned: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_KEYS or element.VR == "SQ":
            continue
        value = _text(element.value)
        if value:
            params.append((keyword, value))
        else:
            returned.append(keyword)
    if returned:
        params.append(("includefield", ",".join(returned)))
    return Query.parse(level, params, limit=MAX_LIMIT, offset=offset)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def answer(identifier: Dataset, found: dict[str, Any]) -> Dataset:
    """One match as the identifier asked: its attributes only, each with the match's value."""
    full = Dataset.from_json(found)
    ds = Dataset()
    ds.QueryRetrieveLevel = identifier.QueryRetrieveLevel
    if "SpecificCharacterSet" in identifier or "SpecificCharacterSet" in full:
        ds.SpecificCharacterSet = full.get("SpecificCharacterSet", "ISO_IR 192")
    for element in identifier:
        if element.keyword in _NOT_KEYS or element.tag.is_private:
            continue
        if element.tag in full:
            ds[element.tag] = full[element.tag]
        else:
            ds.add_new(element.tag, element.VR, None)
    return ds


def handle_find(event: Event, bridge: Bridge) -> Iterator[tuple[int, Dataset | None]]:
    """EVT_C_FIND, in pynetdicom's association thread."""
    identifier = event.identifier
    offset = 0
    while True:
        try:
            query = to_query(identifier, offset)
            result = bridge.call(find(bridge.redis, query))
        except LookupError as exc:
            log.info("dimse.find.refused", reason=str(exc))
            yield NOT_MATCHING, None
            return
        except BadRequest as exc:
            log.info("dimse.find.refused", reason=str(exc))
            yield UNABLE, None
            return
        except Exception as exc:
            log.warning("dimse.find.failed", error=type(exc).__name__)
            yield OUT_OF_RESOURCES, None
            return
        for found in result.datasets:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield PENDING, answer(identifier, found)
        offset += len(result.datasets)
        if not result.datasets or offset >= result.total:
            return
