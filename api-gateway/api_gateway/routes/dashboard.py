"""The web dashboard: ``GET /`` (the page to browsers, a JSON welcome to others) and ``/ui/``.

The page is plain HTML, CSS and ES modules from ``static/``: no build step, nothing fetched
from anywhere but this gateway (its Content-Security-Policy says so to the browser too), and the
OpenID Connect issuer's origin when the dashboard signs people in there (``OIDC_CLIENT_ID``:
its discovery document and token endpoint; the sign-in page itself is a navigation).
Assets are served with ``Cache-Control: no-cache``: their names carry no version, so a browser
keeps them but asks each time whether they changed (ETag / Last-Modified, a 304 when not).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydicom.datadict import DicomDictionary, RepeatersDictionary
from starlette.staticfiles import StaticFiles

from api_gateway.access import needs
from api_gateway.deps import Settings
from api_gateway.settings import GatewaySettings

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parents[1] / "static"

WELCOME = "dicomflow gateway: upload DICOM files and follow each one through the pipeline"
ENDPOINTS = {
    "sign-in": "GET /auth/config",
    "upload": "POST /upload",
    "status": "GET /status/{study_id}",
    "events": "GET /events?upload_id={id},{id}",
    "uploads": "GET /uploads?limit=100&state=",
    "studies": "GET /studies?patient_name=&modality=&study_date_from=",
    "image": "GET /uploads/{study_id}/image?frame=1&window=40,400&size=512&format=png",
    "metadata": "GET /uploads/{study_id}/metadata",
    "original": "GET /uploads/{study_id}/original",
    "retry": "POST /jobs/{study_id}/retry",
    "system": "GET /system",
    "health": "GET /health",
    "ready": "GET /ready",
    "metrics": "GET /metrics",
    "docs": "GET /docs",
}

# The page talks to this origin only (and the issuer's, to sign in there); images may also be
# blob: (those fetched with a credential) or data: (the icon).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'{issuer}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
}

DICTIONARY = "dictionary.json"
_assets = StaticFiles(directory=STATIC, check_dir=False)


def page_csp(settings: GatewaySettings) -> str:
    """The page's policy: this origin only, and the issuer's when it signs people in there."""
    origin = settings.oidc_issuer_origin
    return CSP.format(issuer=f" {origin}" if origin else "")


def page_headers(settings: GatewaySettings) -> dict[str, str]:
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": page_csp(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Vary": "Accept",
    }


@router.get(
    "/",
    response_model=None,
    responses={200: {"content": {"text/html": {}, "application/json": {}}}},
    openapi_extra=needs(None),
)
async def root(
    request: Request, response: Response, settings: Settings
) -> Response | dict[str, Any]:
    """The dashboard to a browser (``Accept`` names text/html); to anything else, a welcome
    that says where the API is. (The issuer sends a browser back here after a sign-in, with
    ``?code=...&state=...`` for the page to finish it.)"""
    response.headers["Vary"] = "Accept"
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(
            STATIC / "index.html", media_type=ASSET_TYPES[".html"], headers=page_headers(settings)
        )
    return {"service": "api-gateway", "message": WELCOME, "endpoints": ENDPOINTS, "dashboard": "/"}


def dictionary(request: Request) -> Response:
    """Every tag's keyword from pydicom's data dictionary, for the viewer's tag table:
    ``{"tags": {"00100010": "PatientName", ...}, "repeaters": {"60xx3000": "OverlayData"}}``."""
    plain, packed = _dictionary()
    headers = {"Cache-Control": "max-age=86400", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type="application/json", headers=headers)
    return Response(plain, media_type="application/json", headers=headers)


@functools.cache
def _dictionary() -> tuple[bytes, bytes]:
    """The keyword map as JSON (190 kB), and gzipped (45 kB); built once."""
    tags = {f"{tag:08X}": entry[4] for tag, entry in DicomDictionary.items() if entry[4]}
    repeaters = {mask.upper().replace("X", "x"): e[4] for mask, e in RepeatersDictionary.items()}
    body = json.dumps({"tags": tags, "repeaters": repeaters}, separators=(",", ":")).encode()
    return body, gzip.compress(body, mtime=0)


@router.api_route(
    "/ui/{path:path}", methods=["GET", "HEAD"], include_in_schema=False, openapi_extra=needs(None)
)
async def asset(path: str, request: Request, settings: Settings) -> Response:
    """A file of the dashboard: ``/ui/app.js``, ``/ui/app.css``, ...; ``/ui/`` is the page;
    ``/ui/dictionary.json`` is made from pydicom's dictionary (one route: no two overlap)."""
    if path == DICTIONARY and request.method == "GET":
        return dictionary(request)
    clean = os.path.normpath(os.path.join(*path.split("/"))) if path.strip("/") else "index.html"
    response = await _assets.get_response(clean, request.scope)  # 404 outside static/
    media = ASSET_TYPES.get(Path(clean).suffix)
    if media and response.status_code == 200:
        response.headers["Content-Type"] = media
    response.headers.update(page_headers(settings) if clean == "index.html" else ASSET_HEADERS)
    return response
