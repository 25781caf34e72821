"""The OHIF viewer's routes on a dist of a few files: what each path answers, with which type,
caching and policy headers; never a file outside the dist; a clear 404 before `make viewer`.
The real viewer in a browser is tests/e2e/test_viewer.py."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_gateway.routes import viewer
from api_gateway.settings import GatewaySettings
from fastapi import FastAPI

from shared import problems

PAGE = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/viewer/"</script>'
    '<script src="/viewer/app-config.js"></script>'
    '<script defer src="/viewer/app.bundle.0f6159c501addfe9.js"></script></head>'
    '<body><div id="root"></div></body></html>'
)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A viewer of a few files, beside a file that must never be served."""
    (tmp_path / "secret.txt").write_text("not for the browser")
    folder = tmp_path / "ohif"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(PAGE)
    (folder / "app-config.js").write_text("window.config = {shipped: true};")
    (folder / "app.bundle.0f6159c501addfe9.js").write_text("console.log('app');")
    (folder / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "a34f9d1faa5f3315.woff2").write_bytes(b"wOF2")
    (folder / "app.bundle.css").write_text("body{}")
    (folder / "manifest.json").write_text("{}")
    (folder / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    return folder


def client_for(settings: GatewaySettings) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.settings = settings
    problems.install(app)
    app.include_router(viewer.router)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.fixture
async def client(dist: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(GatewaySettings(VIEWER_DIR=dist)) as c:
        yield c


async def test_each_file_goes_with_its_type_and_hashed_names_are_kept_for_a_year(
    client: httpx.AsyncClient,
) -> None:
    expected = {
        "/viewer/app.bundle.0f6159c501addfe9.js": ("text/javascript; charset=utf-8", True),
        "/viewer/0ddf166f7a343eda.wasm": ("application/wasm", True),
        "/viewer/a34f9d1faa5f3315.woff2": ("font/woff2", True),
        "/viewer/app.bundle.css": ("text/css; charset=utf-8", False),
        "/viewer/manifest.json": ("application/json", False),
        "/viewer/assets/favicon.ico": (None, False),
    }
    for path, (media, immutable) in expected.items():
        answer = await client.get(path)
        assert answer.status_code == 200, path
        if media:
            assert answer.headers["content-type"] == media, path
        cache = viewer.IMMUTABLE if immutable else "no-cache"
        assert answer.headers["cache-control"] == cache, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        again = await client.get(path, headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304, path
    head = await client.head("/viewer/0ddf166f7a343eda.wasm")
    assert head.status_code == 200
    assert head.headers["content-length"] == "8"


async def test_the_page_comes_for_its_own_routes_with_its_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/viewer/")
    assert page.status_code == 200
    assert page.text == PAGE
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert page.headers["cross-origin-embedder-policy"] == "credentialless"
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'"
    # the one inline script, by its hash; WebAssembly; no eval, no inline script otherwise
    inline = base64.b64encode(hashlib.sha256(b'window.PUBLIC_URL="/viewer/"').digest()).decode()
    assert csp["script-src"] == f"'self' 'wasm-unsafe-eval' 'sha256-{inline}'"
    assert csp["worker-src"] == "'self' blob:"
    assert csp["connect-src"] == "'self' data: blob:"
    assert csp["object-src"] == "'none'"
    # OHIF's routes are pages; so is anything a browser navigates to
    for path in ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/viewer/dicomflow", "/viewer/"):
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert answer.text == PAGE, path
    navigated = await client.get("/viewer/a/1.2.840.113", headers={"Accept": "text/html"})
    assert navigated.text == PAGE
    bare = await client.get("/viewer?StudyInstanceUIDs=1.2.3")
    assert bare.status_code == 308
    assert bare.headers["location"] == "/viewer/?StudyInstanceUIDs=1.2.3"


async def test_a_missing_asset_is_a_404_not_the_page(client: httpx.AsyncClient) -> None:
    for path in ("/viewer/nothing.js", "/viewer/assets/missing.png", "/viewer/1234.bundle.css"):
        answer = await client.get(path, headers={"Accept": "*/*"})
        assert answer.status_code == 404, path
        assert answer.headers["content-type"] == "application/problem+json"


async def test_no_path_leaves_the_viewer_folder(client: httpx.AsyncClient) -> None:
    for path in (
        "/viewer/../secret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/%2e%2e/%2e%2e/secret.txt",
        "/viewer/..%2fsecret.txt",
        "/viewer/%2fetc%2fpasswd",
        "/viewer//etc/passwd",
        "/viewer/assets/..%5c..%5csecret.txt",
    ):
        answer = await client.get(path, headers={"Accept": "*/*"})
        assert "not for the browser" not in answer.text, path
        assert "root:" not in answer.text, path
        assert answer.status_code in (404, 200), path
        if answer.status_code == 200:  # a page route: the page, nothing else
            assert answer.text == PAGE, path


async def test_app_config_is_ours_pointing_at_this_gateways_dicomweb(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/viewer/app-config.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.headers["cache-control"] == "no-cache"
    assert "shipped" not in answer.text
    config = _config(answer.text)
    assert config["routerBasename"] == "/viewer"
    assert config["showStudyList"] is True
    (source,) = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == settings["wadoUriRoot"] == "/dicomweb"
    assert settings["imageRendering"] == "wadors"
    assert settings["supportsFuzzyMatching"] is settings["supportsWildcard"] is True
    assert settings["enableStudyLazyLoad"] is True
    assert "omitQuotationForMultipartRequest" not in settings
    # then OHIF is made to send the dashboard's credential: read from sessionStorage, as a
    # header (tests/e2e/test_dashboard_signin.py runs it)
    sign_in = answer.text.partition(";\n")[2]
    assert "sessionStorage" in sign_in
    assert "getAuthorizationHeader" in sign_in
    assert "localStorage" not in sign_in


async def test_dicomweb_public_url_is_the_viewers_root_and_allowed_by_its_policy(
    dist: Path,
) -> None:
    settings = GatewaySettings(VIEWER_DIR=dist, DICOMWEB_PUBLIC_URL="https://pacs.example.org/dw/")
    async with client_for(settings) as client:
        config = _config((await client.get("/viewer/app-config.js")).text)
        page = await client.get("/viewer/")
    source = config["dataSources"][0]["configuration"]
    assert source["qidoRoot"] == source["wadoRoot"] == "https://pacs.example.org/dw"
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self' data: blob: https://pacs.example.org;" in csp
    assert "img-src 'self' data: blob: https://pacs.example.org;" in csp


async def test_without_the_viewer_every_path_says_to_run_make_viewer(tmp_path: Path) -> None:
    async with client_for(GatewaySettings(VIEWER_DIR=tmp_path / "absent")) as client:
        for path in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/problem+json"
            body = answer.json()
            assert body["type"] == "/problems/viewer-not-installed"
            assert "make viewer" in body["detail"]
        head = await client.head("/viewer/")
        assert head.status_code == 404


def _config(script: str) -> dict[str, object]:
    """The configuration's data: the first statement, before the sign-in script."""
    prefix = "window.config = "
    assert script.startswith(prefix)
    data, separator, _ = script.removeprefix(prefix).partition(";\n")
    assert separator
    config: dict[str, object] = json.loads(data)
    return config
