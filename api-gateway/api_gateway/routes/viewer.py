"""The OHIF Viewer at ``/viewer/``: its built files, an ``app-config.js`` of ours, its own CSP.

``make viewer`` (``scripts/fetch_viewer.py``) puts OHIF's dist, prepared to live under
``/viewer/``, in ``VIEWER_DIR``; until then every ``/viewer`` path is a 404 problem that says
so. The dist's own ``app-config.js`` is never served: ``/viewer/app-config.js`` is written here,
one DICOMweb data source on this gateway's ``/dicomweb`` (or ``DICOMWEB_PUBLIC_URL``), followed
by ``static/ohif-signin.js``: OHIF sends the dashboard's credential (this tab's sessionStorage)
as ``Authorization: Bearer``, and goes to the dashboard's sign-in when the gateway answers 401.

OHIF routes in the browser (``/viewer/viewer?StudyInstanceUIDs=...``): a path that is no file
gets ``index.html`` when a page is asked for (``Accept: text/html``, or a last segment without
a dot); a missing asset stays a 404, so a script never gets a page in its place.

Caching: files whose names carry webpack's content hash are immutable for a year, the other
files are revalidated each time (ETag), the page and the config (small, made here) are sent
anew each time. The page's CSP allows
only this origin (and the DICOMweb root's), WebAssembly, workers and ``blob:``; its two inline
scripts by their hashes. It is cross-origin isolated (COOP/COEP): OHIF's AI-assisted
segmentation (onnxruntime-web) runs WebAssembly on several threads only then (SharedArrayBuffer).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from api_gateway.access import needs
from api_gateway.deps import Settings
from api_gateway.settings import GatewaySettings
from shared.errors import ViewerNotInstalled

router = APIRouter(tags=["viewer"])

MOUNT = "/viewer"
INDEX = "index.html"
CONFIG = "app-config.js"
DICOMWEB = "/dicomweb"
SIGN_IN = Path(__file__).resolve().parents[1] / "static" / "ohif-signin.js"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".svg": "image/svg+xml",
}
HASHED = re.compile(r"(?:^|\.)[0-9a-f]{16}\.\w+$")  # 2493.bundle.c4af70e46357151f.js, 0ddf...wasm
IMMUTABLE = "public, max-age=31536000, immutable"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)  # no attributes: inline
ISOLATED = {  # cross-origin isolation; credentialless lets a DICOMweb origin elsewhere serve images
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "credentialless",
}
COMMON = {"X-Content-Type-Options": "nosniff", **ISOLATED}


@router.api_route(
    MOUNT, methods=["GET", "HEAD"], include_in_schema=False, openapi_extra=needs(None)
)
async def viewer_root(request: Request, settings: Settings) -> Response:
    """``/viewer`` is ``/viewer/``: the page's relative URLs resolve below it."""
    _dist(settings)
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{MOUNT}/{query}", status_code=308)


@router.api_route(
    MOUNT + "/{path:path}",
    methods=["GET", "HEAD"],
    include_in_schema=False,
    openapi_extra=needs(None),  # the viewer's files hold no data; it asks the API for them
)
async def viewer_file(path: str, request: Request, settings: Settings) -> Response:
    """A file of the viewer, our ``app-config.js``, or the page for one of OHIF's routes."""
    dist = _dist(settings)
    if path == CONFIG:
        return config_response(settings)
    clean = os.path.normpath(os.path.join(*path.split("/"))) if path.strip("/") else INDEX
    if clean == INDEX:
        return page_response(dist, settings)
    try:
        response = await _files(dist).get_response(clean, request.scope)
    except HTTPException as exc:  # not a file (or outside the dist): a page route, or a 404
        if exc.status_code == 404 and _wants_page(path, request):
            return page_response(dist, settings)
        raise
    name = Path(clean).name
    if response.status_code in (200, 304):
        response.headers["Cache-Control"] = IMMUTABLE if HASHED.search(name) else "no-cache"
    if response.status_code == 200 and (media := TYPES.get(Path(name).suffix)):
        response.headers["Content-Type"] = media
    response.headers.update(COMMON)
    return response


def _dist(settings: GatewaySettings) -> Path:
    """VIEWER_DIR when it holds a viewer, else a 404 problem saying how to get one."""
    if not (settings.viewer_dir / INDEX).is_file():
        raise ViewerNotInstalled("the OHIF viewer is not installed here: run make viewer")
    return settings.viewer_dir


@functools.cache
def _files(dist: Path) -> StaticFiles:
    return StaticFiles(directory=dist)  # never outside dist, ETags, 304s, HEAD


def _wants_page(path: str, request: Request) -> bool:
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return "text/html" in request.headers.get("accept", "") or "." not in last


def page_response(dist: Path, settings: GatewaySettings) -> Response:
    """``index.html`` with the viewer's CSP; small, so read each time it is asked for."""
    page = (dist / INDEX).read_bytes()
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": page_csp(page, dicomweb_origin(settings)),
        "Referrer-Policy": "no-referrer",
        **COMMON,
    }
    return Response(page, media_type=TYPES[".html"], headers=headers)


def page_csp(page: bytes, dicomweb_origin: str) -> str:
    """OHIF's needs, and nothing it does not use: scripts from here (the page's inline ones by
    hash), WebAssembly (its image decoders), workers from here or blob:, inline styles (React),
    images and fetches from here, data: and blob:, and the DICOMweb origin if elsewhere."""
    inline = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(page)
    )
    there = f" {dicomweb_origin}" if dicomweb_origin else ""
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' 'wasm-unsafe-eval' {inline}".rstrip(),
            "worker-src 'self' blob:",
            "style-src 'self' 'unsafe-inline'",
            f"img-src 'self' data: blob:{there}",
            f"connect-src 'self' data: blob:{there}",
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        )
    )


def config_response(settings: GatewaySettings) -> Response:
    """OHIF's configuration, then what makes it send the dashboard's credential."""
    body = f"window.config = {json.dumps(app_config(settings), indent=2)};\n\n{_sign_in()}"
    headers = {"Cache-Control": "no-cache", **COMMON}
    return Response(body, media_type=TYPES[".js"], headers=headers)


@functools.cache
def _sign_in() -> str:
    return SIGN_IN.read_text(encoding="utf-8")


def app_config(settings: GatewaySettings) -> dict[str, Any]:
    """OHIF's configuration (``window.config``): the study list, and one DICOMweb data source
    on this gateway, with what our server offers switched on."""
    root = dicomweb_root(settings)
    return {
        "routerBasename": MOUNT,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomflow",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomflow",
                "configuration": {
                    "friendlyName": "dicomflow",
                    "name": "dicomflow",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": root,
                    "qidoSupportsIncludeField": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "imageRendering": "wadors",
                    # fetched with the Authorization header (thumbnailDirect is an <img src>,
                    # which sends none), at 256 by 256
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }


def dicomweb_root(settings: GatewaySettings) -> str:
    """DICOMWEB_PUBLIC_URL when set, else this origin's ``/dicomweb``."""
    if settings.dicomweb_public_url is not None:
        return str(settings.dicomweb_public_url).rstrip("/")
    return DICOMWEB


def dicomweb_origin(settings: GatewaySettings) -> str:
    """The DICOMweb root's origin when it is not this one's (``""`` when it is)."""
    if settings.dicomweb_public_url is None:
        return ""
    parts = urlsplit(str(settings.dicomweb_public_url))
    return f"{parts.scheme}://{parts.netloc}"
