"""How the checks report: Reasons to reject or warn, the early stop, and how tags are named."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag

from shared.events import Reason


def _reason(code: str, message: str) -> Reason:
    return Reason(code=code, message=message)


class _Stop(Exception):
    """Raised inside the checks when later checks would only report consequences."""

    def __init__(self, *reasons: Reason) -> None:
        super().__init__()
        self.reasons = list(reasons)


@dataclass
class _Findings:
    """What the checks found so far: reasons to reject the file, and warnings."""

    reasons: list[Reason] = field(default_factory=list)
    warnings: list[Reason] = field(default_factory=list)

    def reject(self, code: str, message: str) -> None:
        self.reasons.append(_reason(code, message))

    def warn(self, code: str, message: str) -> None:
        self.warnings.append(_reason(code, message))


def _label(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{text} {keyword}" if keyword else text


def _exception_name(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    return name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"
