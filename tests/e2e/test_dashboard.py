"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against the
whole pipeline: upload two files, watch them reach ``archived`` live, open one in the viewer,
search it among the studies, read the Health view. Screenshots of each view are kept under
``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from api_gateway.routes import dashboard
from api_gateway.settings import GatewaySettings
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from shared import redis_names as names
from testbed.system import System
from tests.support import ct_slice

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"


async def test_root_is_a_json_welcome_to_api_clients_and_the_page_to_browsers() -> None:
    """No pipeline needed: the dashboard's routes alone."""
    app = FastAPI()
    app.state.settings = GatewaySettings()
    app.include_router(dashboard.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        welcome = await client.get("/", headers={"Accept": "application/json"})
        bare = await client.get("/", headers={"Accept": "*/*"})
        page = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*"})
        script = await client.get("/ui/app.js")
        etag = {"If-None-Match": script.headers["etag"]}
        again = await client.get("/ui/app.js", headers=etag)
        outside = await client.get("/ui/%2e%2e/dashboard.py")
        missing = await client.get("/ui/nothing.js")
    assert welcome.status_code == 200
    body = welcome.json()
    assert body["service"] == "api-gateway"
    assert body["dashboard"] == "/"
    assert body["message"]
    assert body["endpoints"]["upload"] == "POST /upload"
    assert bare.json() == body
    assert welcome.headers["vary"] == "Accept"
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self';" in page.headers["content-security-policy"]
    assert '<script type="module" src="/ui/app.js">' in page.text
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache"
    assert again.status_code == 304
    assert outside.status_code == 404
    assert missing.status_code == 404


def test_system_reports_every_service_ready_queues_and_counts(system: System) -> None:
    ids = system.upload(_dicom_files(system.uploads.parent / "system-check", 1, "Health^Check")[0])
    system.wait_final(ids)
    with system.client() as c:
        answer = c.get("/system")
    assert answer.status_code == 200
    body = answer.json()
    services = {s["name"]: s for s in body["services"]}
    assert set(services) == {
        "api-gateway",
        "validator-service",
        "descriptor-service",
        "status-service",
        "uploader-service",
        "dimse-service",
    }
    assert all(s["ready"] for s in services.values()), services
    assert services["validator-service"]["url"] == system.url("validator")
    assert services["validator-service"]["checks"]["redis"] == "ok"
    queues = {(q["stream"], q["group"]) for q in body["queues"]}
    assert (names.FILE_RECEIVED, names.GROUP_VALIDATOR) in queues
    assert (names.FILE_DESCRIBED, names.GROUP_UPLOADER) in queues
    assert body["counts"]["by_state"].get("archived", 0) >= 1
    assert all(n > 0 for n in body["counts"]["by_state"].values())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH: `apt-get install chromium` to run the dashboard test")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _dicom_files(folder: Path, count: int, patient: str = "Dashboard^Tester") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = f"2.25.{uuid.uuid4().int}"
    paths = []
    for i in range(count):
        path = folder / f"dashboard_{i}.dcm"
        data = ct_slice(i, rows=192, columns=192, study_uid=study, seed=5, patient_name=patient)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_uploads_follows_shows_searches_and_reports(
    system: System, browser: Browser, tmp_path: Path
) -> None:
    files = _dicom_files(tmp_path, 2)
    context = browser.new_context(base_url=system.url(), viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    ours = system.url()
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(ours) or urlsplit(r.url).scheme in ("data", "blob")
            else elsewhere.append(r.url)
        ),
    )
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))

    # Upload: choose two files, send them, watch both reach archived without a reload.
    page.goto("/")
    expect(page.locator('[data-tab="upload"]')).to_have_attribute("aria-current", "page")
    page.evaluate("window.notReloaded = true")
    page.fill("#upload-label", f"dashboard-{uuid.uuid4().hex[:8]}")
    page.set_input_files("#pick-files", [str(p) for p in files])
    expect(page.locator("#upload-rows tr")).to_have_count(2)
    expect(page.locator("#upload-start")).to_have_text("Upload 2 files")
    page.click("#upload-start")
    archived = page.locator('#upload-rows tr[data-state="archived"]')
    expect(archived).to_have_count(2, timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    ids = [archived.nth(i).get_attribute("data-upload-id") for i in range(2)]
    assert all(ids), ids
    for upload_id in ids:
        assert system.status(str(upload_id))["status"] == "archived"
    _shot(page, "1-upload")

    # Jobs: both listed as archived, each with a way into the viewer.
    page.click('[data-tab="jobs"]')
    for upload_id in ids:
        row = page.locator(f'#jobs-rows tr[data-upload-id="{upload_id}"]')
        expect(row).to_have_attribute("data-state", "archived")
        expect(row.locator("a", has_text="View")).to_have_attribute("href", f"#/view/{upload_id}")
        expect(row.locator("td.timings strong")).not_to_be_empty()
    _shot(page, "2-jobs")

    # Viewer: the image loads, the tags are listed, the filter keeps what matches.
    page.locator(f'#jobs-rows tr[data-upload-id="{ids[0]}"] a', has_text="View").click()
    expect(page.locator("#viewer")).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-img');"
        " return i.complete && i.naturalWidth > 0 }"
    )
    assert page.evaluate("document.getElementById('viewer-img').naturalWidth") == 192
    expect(page.locator("#viewer-title")).to_contain_text("Dashboard, Tester")
    rows = page.locator("#tags-rows tr:not([hidden])")
    expect(rows.first).to_be_visible()
    everything = rows.count()
    assert everything > 20
    page.fill("#tags-filter", "patientname")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("(0010,0010)")
    expect(rows.first).to_contain_text("Dashboard^Tester")
    page.fill("#tags-filter", "0028,0010")
    expect(rows.first).to_contain_text("192")
    page.fill("#tags-filter", "")
    expect(rows).to_have_count(everything)
    page.click('#viewer-presets button:has-text("Lung")')
    expect(page.locator("#viewer-img")).to_have_attribute(
        "src", "/uploads/" + str(ids[0]) + "/image?frame=1&window=-600%2C1500&size=1024&format=png"
    )
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-img');"
        " return i.complete && i.naturalWidth > 0 && !i.classList.contains('stale') }"
    )
    expect(page.locator("#viewer-original")).to_have_attribute(
        "href", f"/uploads/{ids[0]}/original"
    )
    _shot(page, "3-viewer")

    # Studies: the two files are one study; its previews load.
    page.click('[data-tab="studies"]')
    page.fill('#studies-form [name="patient_name"]', "dashboard*")
    page.click('#studies-form button[type="submit"]')
    card = page.locator(".study", has_text="Dashboard, Tester")
    expect(card).to_have_count(1, timeout=30_000)
    expect(card.locator(".thumb img")).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.study .thumb img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    _shot(page, "4-studies")

    # Health: six services ready (dimse-service too), and the jobs counted.
    page.click('[data-tab="health"]')
    expect(page.locator('#health-services .service[data-ready="true"]')).to_have_count(6)
    expect(page.locator("#health-queue-rows tr").first).to_be_visible()
    _shot(page, "5-health")

    context.close()
    assert not crashes, crashes
    assert not elsewhere, f"requests left {ours}: {elsewhere}"
