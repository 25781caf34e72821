"""The order in which the gateway mounts its routers does not matter: no two routes answer the
same request, and every probe request reaches the same handler whatever the order.

The app is built as ``__main__`` builds it (``create_app`` does no I/O); the dependencies that
would reach Redis are replaced by one that answers 418, so no handler touches the network.
"""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from api_gateway import app as gateway_app
from api_gateway import deps
from api_gateway.settings import GatewaySettings
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.types import Receive, Scope, Send

from shared.errors import AppError

UUID = "7c0e8a1e-5a8b-4a53-9a38-3b1e6f0d2c11"

WADO = "/dicomweb/studies/1.2/series/1.3/instances/1.4"  # a WADO-RS instance

# (method, path, the handler that must answer it: module suffix and function name)
PROBES: list[tuple[str, str, str]] = [
    ("POST", "/upload", "routes.upload.upload"),
    ("POST", "/upload/batch", "compat.upload_service.upload_batch"),
    ("GET", "/upload/batch/b-1/status", "compat.upload_service.batch_status"),
    ("GET", "/upload/batch/b-1/files", "compat.upload_service.batch_files"),
    ("GET", f"/upload/{UUID}/details", "compat.upload_service.details"),
    ("GET", "/upload/batch/details", "compat.upload_service.details"),  # an id, not a batch
    ("GET", f"/upload/{UUID}/preprocessed-dicom", "compat.upload_service.preprocessed"),
    ("POST", "/save-upload", "compat.upload_service.save_upload"),
    ("GET", "/user/u-1/uploads", "compat.upload_service.user_uploads"),
    ("GET", "/user/u-1/batches", "compat.upload_service.user_batches"),
    ("GET", "/uploads", "routes.uploads.list_uploads"),
    ("POST", "/uploads/lookup", "routes.uploads.lookup"),
    ("GET", "/uploads/lookup", "routes.uploads.get_upload"),  # GET: "lookup" is an id
    ("GET", f"/uploads/{UUID}", "routes.uploads.get_upload"),
    ("DELETE", f"/uploads/{UUID}", "routes.uploads.delete_upload"),
    ("GET", f"/uploads/{UUID}/original", "routes.uploads.original"),
    ("GET", f"/uploads/{UUID}/image", "routes.uploads.image"),
    ("GET", f"/uploads/{UUID}/metadata", "routes.uploads.metadata"),
    ("GET", f"/uploads/{UUID}/tags", "routes.uploads.tags"),
    ("GET", f"/uploads/{UUID}/deidentified", "routes.uploads.deidentified"),
    ("GET", f"/uploads/{UUID}/download-url", "routes.cloud.download_url"),
    ("POST", "/batches", "routes.batches.create"),
    ("GET", "/batches/b-1", "routes.batches.status"),
    ("GET", "/batches/b-1/files", "routes.batches.batch_files"),
    ("GET", "/labels", "routes.labels.labels"),
    ("GET", "/labels/a/b", "routes.labels.label_files"),
    ("GET", "/users/u-1/uploads", "routes.users.user_uploads"),
    ("PUT", f"/users/u-1/uploads/{UUID}", "routes.users.save_upload"),
    ("GET", "/users/u-1/batches", "routes.users.list_user_batches"),
    ("GET", "/stats", "routes.stats.stats"),
    ("GET", "/jobs/audit.csv", "routes.jobs.audit"),
    ("POST", f"/jobs/{UUID}/retry", "routes.jobs.retry"),
    ("GET", "/audit", "routes.audit_trail.audit_trail"),
    ("POST", "/keys", "routes.keys.create_key"),
    ("GET", "/keys", "routes.keys.list_keys"),
    ("DELETE", "/keys/k-1", "routes.keys.revoke_key"),
    ("GET", "/studies", "routes.studies.list_studies"),
    ("GET", "/studies/1.2.3", "routes.studies.one_study"),
    ("GET", "/events", "routes.events.events"),
    ("GET", "/system", "routes.system.system"),
    ("POST", "/dicom/presign", "routes.cloud.presign"),
    ("POST", "/dicom/upload", "routes.cloud.seed_upload"),
    ("POST", "/dicom/retrieve", "routes.cloud.retrieve"),
    ("GET", f"/dicom/status/{UUID}", "compat.cloud_jobs.status"),
    ("DELETE", "/dicom/delete", "compat.cloud_jobs.delete"),
    ("POST", "/dicom-image", "compat.dicom_file_service.store"),
    ("GET", f"/dicom-image/{UUID}", "compat.dicom_file_service.get_file"),
    ("GET", f"/dicom-image/{UUID}/png", "compat.dicom_file_service.get_png"),
    ("GET", "/files", "compat.study_folders.studies"),
    ("GET", "/files/s-1", "compat.study_folders.study_files"),
    ("GET", "/files/s-1/a/b.dcm/tag", "compat.study_folders.file_tags"),
    ("GET", "/files/s-1/png/tag", "compat.study_folders.file_tags"),  # a file named png
    ("GET", "/files/s-1/tag/png", "compat.study_folders.file_png"),  # a file named tag
    ("GET", f"/status/{UUID}", "shared.status_api.get_status"),
    ("GET", "/dicomweb/studies/1.2", "dicomweb.wado.retrieve_study"),
    ("GET", "/dicomweb/studies/1.2/metadata", "dicomweb.wado.study_metadata"),
    ("GET", "/dicomweb/studies/1.2/rendered", "dicomweb.wado.study_rendered"),
    ("GET", "/dicomweb/studies/1.2/thumbnail", "dicomweb.wado.study_thumbnail"),
    ("GET", "/dicomweb/studies/1.2/series/1.3", "dicomweb.wado.retrieve_series"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/metadata", "dicomweb.wado.series_metadata"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/rendered", "dicomweb.wado.series_rendered"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/thumbnail", "dicomweb.wado.series_thumbnail"),
    ("GET", WADO, "dicomweb.wado.retrieve_instance"),
    ("GET", WADO + "/metadata", "dicomweb.wado.instance_metadata"),
    ("GET", WADO + "/rendered", "dicomweb.wado.instance_rendered"),
    ("GET", WADO + "/thumbnail", "dicomweb.wado.instance_thumbnail"),
    ("GET", WADO + "/frames/1,3", "dicomweb.wado.retrieve_frames"),
    ("GET", WADO + "/frames/1/rendered", "dicomweb.wado.frame_rendered"),
    ("GET", WADO + "/frames/1/thumbnail", "dicomweb.wado.frame_thumbnail"),
    ("GET", WADO + "/bulkdata/7FE00010", "dicomweb.wado.retrieve_bulkdata"),
    ("GET", WADO + "/bulkdata/00880200/0/7FE00010", "dicomweb.wado.retrieve_bulkdata"),
    ("GET", "/", "routes.dashboard.root"),
    ("GET", "/ui/app.js", "routes.dashboard.asset"),
    ("GET", "/ui/dictionary.json", "routes.dashboard.asset"),
    ("GET", "/viewer", "routes.viewer.viewer_root"),
    ("GET", "/viewer/", "routes.viewer.viewer_file"),
    ("GET", "/viewer/viewer", "routes.viewer.viewer_file"),
    ("GET", "/viewer/app-config.js", "routes.viewer.viewer_file"),
    ("GET", "/health", "shared.service.health"),
    ("GET", "/ready", "shared.service.ready"),
    ("GET", "/metrics", "shared.service.metrics"),
]


class Probed(AppError):
    """What a replaced dependency raises: the request reached a handler that needs Redis."""

    status, code = 418, "probed"


def _probed() -> None:
    raise Probed()


def build(order: list[int] | None = None) -> FastAPI:
    """The gateway's app, its routers mounted in ``order`` (indexes into ``ROUTERS``)."""
    routers = gateway_app.ROUTERS
    mounted = routers if order is None else tuple(routers[i] for i in order)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_app, "ROUTERS", mounted)
        app = gateway_app.create_app(GatewaySettings(REDIS_URL="redis://127.0.0.1:1/0"))
    for dependency in (deps.get_store, deps.get_settings, deps.get_redis, deps.get_feed):
        app.dependency_overrides[dependency] = _probed
    return app


def orders() -> Iterator[tuple[str, list[int] | None]]:
    n = len(gateway_app.ROUTERS)
    yield "as written", None
    yield "reversed", list(reversed(range(n)))
    for seed in (1, 2, 3):
        shuffled = list(range(n))
        random.Random(seed).shuffle(shuffled)
        yield f"shuffled {seed}", shuffled


def handler_name(endpoint: object) -> str:
    module = getattr(endpoint, "__module__", "").removeprefix("api_gateway.")
    return f"{module}.{getattr(endpoint, '__name__', '?')}"


async def answers(app: FastAPI) -> dict[tuple[str, str], tuple[str, int]]:
    """Which handler answered each probe, and with which status."""
    reached: dict[str, object] = {}

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        reached["endpoint"] = scope.get("endpoint")  # set by the router on the same scope

    out = {}
    transport = httpx.ASGITransport(app=recording, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for method, path, _ in PROBES:
            reached.clear()
            response = await client.request(method, path)
            out[(method, path)] = (handler_name(reached.get("endpoint")), response.status_code)
    return out


async def test_every_probe_reaches_its_handler_whatever_the_order_of_the_routers() -> None:
    expected = {(method, path): handler for method, path, handler in PROBES}
    first = await answers(build())
    assert {k: name for k, (name, _) in first.items()} == expected
    for label, order in orders():
        assert await answers(build(order)) == first, f"routers mounted {label}"


# --- no two routes overlap -------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One ``/``-separated piece of a route's path: a literal, a parameter matching one
    segment (with its pattern), or a ``:path`` parameter matching any number of them."""

    literal: str | None = None
    pattern: str | None = None
    rest: bool = False

    def meets(self, other: Segment) -> bool:
        if self.literal is not None and other.literal is not None:
            return self.literal == other.literal
        if self.literal is not None:
            return re.fullmatch(other.pattern or "[^/]+", self.literal) is not None
        if other.literal is not None:
            return re.fullmatch(self.pattern or "[^/]+", other.literal) is not None
        return True  # two parameters: some value fits both


PATTERNS = {"str": "[^/]+", "int": "[0-9]+", "float": r"[0-9]+(\.[0-9]+)?", "uuid": "[0-9a-f-]+"}


def segments(path: str) -> list[Segment]:
    out = []
    for piece in path.strip("/").split("/") if path.strip("/") else []:
        param = re.fullmatch(r"\{(\w+)(?::(\w+))?\}", piece)
        if param is None:
            out.append(Segment(literal=piece))
        elif param[2] == "path":
            out.append(Segment(rest=True))
        else:
            out.append(Segment(pattern=PATTERNS[param[2] or "str"]))
    return out


def overlap(a: list[Segment], b: list[Segment]) -> bool:
    """Whether some path matches both segment lists (a ``:path`` parameter takes one segment
    or more, the first perhaps empty: ``/labels/{label:path}`` is not ``/labels``)."""
    if a and a[0].rest:
        return bool(b) and (overlap(a[1:], b[1:]) or overlap(a, b[1:]))
    if b and b[0].rest:
        return overlap(b, a)
    if not a or not b:
        return not a and not b
    return a[0].meets(b[0]) and overlap(a[1:], b[1:])


def test_the_overlap_check_sees_overlaps() -> None:
    assert overlap(segments("/upload/{id}"), segments("/upload/batch"))
    assert overlap(segments("/ui/{path:path}"), segments("/ui/dictionary.json"))
    assert overlap(segments("/files/{s}/{f:path}/tag"), segments("/files/x/a/b/tag"))
    assert not overlap(segments("/files/{s}/{f:path}/tag"), segments("/files/{s}/{f:path}/png"))
    assert not overlap(segments("/upload/{id}/details"), segments("/upload/batch/{id}/files"))
    assert not overlap(segments("/upload/{id:int}"), segments("/upload/batch"))
    assert not overlap(segments("/labels"), segments("/labels/{label:path}"))
    assert not overlap(segments("/files/{s}/{f:path}/tag"), segments("/files/x/tag"))


def test_no_two_routes_answer_the_same_request() -> None:
    routes = [(frozenset(c.methods or ()), c.path) for c in iter_route_contexts(build().routes)]
    clashes = [
        (sorted(ma & mb), a, b)
        for i, (ma, a) in enumerate(routes)
        for mb, b in routes[i + 1 :]
        if ma & mb and overlap(segments(a), segments(b))
    ]
    assert clashes == []


def test_every_dependency_is_a_coroutine() -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread handoff on every
    request for what is a lookup. The gateway's dependencies are ``async def``."""
    app = build()
    plain: set[str] = set()
    for context in iter_route_contexts(app.routes):
        stack = list(getattr(getattr(context.route, "dependant", None), "dependencies", []))
        while stack:
            dependant = stack.pop()
            stack.extend(dependant.dependencies)
            if dependant.call is not None and not inspect.iscoroutinefunction(dependant.call):
                plain.add(handler_name(dependant.call))
    assert not plain, f"dependencies run in a thread on every request: {sorted(plain)}"
