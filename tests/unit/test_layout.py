"""Where code lives: ``shared/`` holds only what two or more services use, and no service
imports another. Read from the sources' import statements, so a move that breaks the rule fails
here rather than in a newcomer's head."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "api_gateway": ROOT / "api-gateway" / "api_gateway",
    "validator_service": ROOT / "validator-service" / "validator_service",
    "descriptor_service": ROOT / "descriptor-service" / "descriptor_service",
    "uploader_service": ROOT / "uploader-service" / "uploader_service",
    "status_service": ROOT / "status-service" / "status_service",
    "dimse_service": ROOT / "dimse-service" / "dimse_service",
}
SHARED = ROOT / "shared"
# shared modules waiting for their second service, and which one (module -> service); drop an
# entry once that service imports it (``test_no_stale_awaiting`` fails until then). The query
# modules (QIDO-RS and C-FIND) and the intake (HTTP and C-STORE) have their two services now.
AWAITING: dict[str, str] = {}


def imported(folder: Path) -> set[str]:
    """Every module name the Python files under ``folder`` import (absolute imports)."""
    return set().union(*(imported_file(path) for path in folder.rglob("*.py")))


def imported_file(path: Path) -> set[str]:
    """Every module name one Python file imports, with ``from m import x`` also as ``m.x``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def shared_modules() -> set[str]:
    return {p.stem for p in SHARED.glob("*.py") if p.stem != "__init__"}


@cache
def shared_used_by(module: str) -> frozenset[str]:
    """The shared modules ``shared.<module>`` imports, itself included, transitively."""
    direct = {
        name.split(".")[1]
        for name in imported_file(SHARED / f"{module}.py")
        if name.startswith("shared.") and name.split(".")[1] in shared_modules()
    }
    found = {module}
    for other in direct - found:
        found |= shared_used_by(other)
    return frozenset(found)


def shared_of(service: str) -> set[str]:
    """The shared modules a service runs, directly or through other shared modules."""
    direct = {
        name.split(".")[1]
        for name in imported(SERVICES[service])
        if name.startswith("shared.") and name.split(".")[1] in shared_modules()
    }
    return set().union(*(shared_used_by(m) for m in direct)) if direct else set()


def test_no_service_imports_another() -> None:
    crossing = {
        (service, name)
        for service, folder in SERVICES.items()
        for name in imported(folder)
        if name.split(".")[0] in SERVICES and name.split(".")[0] != service
    }
    assert not crossing, f"a service imports another: {sorted(crossing)}"


def test_shared_holds_only_what_two_services_use() -> None:
    users = {
        module: sorted(s for s in SERVICES if module in shared_of(s)) for module in shared_modules()
    }
    alone = {
        module: who
        for module, who in users.items()
        if len(who) < 2 and not (module in AWAITING and who)
    }
    assert not alone, f"shared modules used by fewer than two services (move them): {alone}"


def test_no_stale_awaiting() -> None:
    """An allowance whose module now has its second service (or was moved away) is stale."""
    stale = {
        module: service
        for module, service in AWAITING.items()
        if module not in shared_modules()
        or len([s for s in SERVICES if module in shared_of(s)]) >= 2
        or module in shared_of(service)
    }
    assert not stale, f"AWAITING entries no longer needed (remove them): {stale}"
