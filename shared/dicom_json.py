"""DICOM JSON (PS3.18 Annex F) elements built from the indexes' plain string values."""

from __future__ import annotations

from typing import Any

NUMBER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "FL", "FD", "DS"})


def element(vr: str, values: list[str] | str | None) -> dict[str, Any]:
    """``{"vr": vr, "Value": [...]}``, with PN values as ``{"Alphabetic": ...}`` and numbers as
    numbers; no ``Value`` when there is none (an empty attribute, as Annex F writes it)."""
    items = [values] if isinstance(values, str) else list(values or [])
    items = [v for v in items if v != ""]
    if not items:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in items]}
    if vr in NUMBER_VRS:
        return {"vr": vr, "Value": [_number(v) for v in items]}
    return {"vr": vr, "Value": items}


def _number(value: str) -> int | float | str:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
