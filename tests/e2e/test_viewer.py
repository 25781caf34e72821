"""The OHIF Viewer the gateway serves at /viewer/, in a real browser (Debian's chromium, driven by
Playwright), against the whole pipeline and its DICOMweb server: the study list shows what was
uploaded, a CT series is drawn and changes as it scrolls, the dashboard links to it. OHIF is
fetched as ``make viewer`` fetches it when this machine has none yet (npm is needed for that).
Screenshots and the drawn slices are kept under ``test-artifacts/viewer/``.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
from api_gateway.settings import OHIF_VERSION
from PIL import Image
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)
from pydicom.uid import generate_uid

from testbed.system import System, log_records, start_system, stop_system
from tests.support import pydicom_file, write_ct_series

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "viewer"
SLICES = 20
WAIT_MS = 30_000  # for OHIF to start (a 17 MB bundle) and draw, on a busy 2-core machine
CANVAS = "canvas.cornerstone-canvas"
INSTANCE = '[data-cy="viewport-overlay-bottom-right"] [title="Instance Number"]'
# The spread (standard deviation) of the red channel over every 7th pixel of the viewport's
# canvas: 0 while nothing is drawn, tens of grey levels once a slice is.
SPREAD = f"""() => {{
  const canvas = document.querySelector('{CANVAS}');
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, squares = 0, n = 0;
  for (let i = 0; i < data.length; i += 4 * 7) {{ sum += data[i]; squares += data[i] ** 2; n++; }}
  return Math.sqrt(squares / n - (sum / n) ** 2);
}}"""
# OHIF's guided tour of the viewer, shown once per browser, marked as shown (every frame runs
# this; one without storage of its own, such as a sandboxed one, may not write it)
NO_TOUR = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])) } catch {}"
DRAWN = f"() => document.querySelector('{CANVAS}').toDataURL('image/png')"


@pytest.fixture(scope="module")
def ohif() -> Path:
    """OHIF's dist, prepared for /viewer/: fetched by the script ``make viewer`` runs if absent."""
    dist = ROOT / ".cache" / "ohif" / OHIF_VERSION
    if not (dist / "index.html").is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: it fetches the OHIF viewer (make viewer)")
        script = ROOT / "scripts" / "fetch_viewer.py"
        subprocess.run([sys.executable, str(script)], check=True, timeout=600)
    return dist


@pytest.fixture(scope="module")
def system(ohif: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"), VIEWER_DIR=str(ohif))
    yield running
    stop_system(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH: `apt-get install chromium` to run the viewer test")
    # WebGL without a GPU: ANGLE on SwiftShader, the software rasterizer chromium ships
    args = [
        "--no-sandbox",
        "--use-gl=angle",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def ct_study(system: System, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A synthetic CT series of SLICES slices and pydicom's MR_small, archived; the CT's
    StudyInstanceUID."""
    paths = ct_series(tmp_path_factory.mktemp("ct"))
    done = system.wait_final(system.upload(*paths, pydicom_file("MR_small.dcm")))
    assert {answer["status"] for answer in done.values()} == {"archived"}, done
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def ct_series(folder: Path) -> list[Path]:
    """testbed's synthetic CT slices, 128 by 128, with what OHIF reads to stack them (orientation,
    spacing, frame of reference), and a bright block 5 pixels further right on each slice, so
    no two slices look alike."""
    paths = write_ct_series(
        folder, SLICES, seed=7, rows=128, columns=128, patient_name="Viewer^Test"
    )
    frame = generate_uid()
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.FrameOfReferenceUID = [1, 1], 1, frame
        ds.StudyDescription, ds.SeriesDescription = "OHIF check", "Synthetic CT"
        pixels = ds.pixel_array.copy()
        pixels[10:30, 8 + 5 * i : 20 + 5 * i] = 2000
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
    return paths


@dataclass
class Watched:
    """What the browser saw go wrong: answers of 400 or more, requests to another origin,
    failed requests, uncaught errors, CSP violations."""

    errors: list[str]
    elsewhere: list[str]


def watch(context: BrowserContext, origin: str) -> Watched:
    seen = Watched([], [])
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => console.error("
        "`CSP violation: ${e.violatedDirective} ${e.blockedURI}`))"
    )

    def response(r: Response) -> None:
        if r.status >= 400:
            seen.errors.append(f"{r.status} {r.url}")

    def request(r: Request) -> None:
        if not r.url.startswith(origin) and urlsplit(r.url).scheme not in ("data", "blob"):
            seen.elsewhere.append(r.url)

    def failed(r: Request) -> None:
        # Aborted is the client's doing: a navigation, a request OHIF cancels (and chromium
        # reports every fetch() HEAD so, answered or not); the answers are checked above.
        if r.failure != "net::ERR_ABORTED":
            seen.errors.append(f"failed: {r.url} {r.failure}")

    def page(p: Page) -> None:
        p.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
        p.on(
            "console",
            lambda m: seen.errors.append(m.text) if m.text.startswith("CSP violation") else None,
        )
        p.on("requestfailed", failed)

    context.on("response", response)
    context.on("request", request)
    context.on("page", page)
    return seen


def wait_until(page: Page, predicate: str, arg: object = None, seconds: float = 30) -> None:
    """Poll a JavaScript predicate until it holds. Playwright's wait_for_function polls with
    eval() in the page, which OHIF's CSP rightly refuses; page.evaluate is not the page's."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s: {predicate}")
        page.wait_for_timeout(100)


def drawn(page: Page) -> str:
    """The viewport's canvas as drawn, a PNG data: URL."""
    url: str = page.evaluate(DRAWN)
    return url


def grey(url: str) -> np.ndarray:
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def save(page: Page, name: str, pixels: np.ndarray | None = None) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if pixels is not None:
        Image.fromarray(pixels.astype(np.uint8)).save(ARTIFACTS / f"{name}-canvas.png")


def open_page(browser: Browser, system: System) -> tuple[BrowserContext, Page, Watched]:
    """A fresh browser context on the gateway, OHIF's tour off, every answer watched."""
    context = browser.new_context(base_url=system.url(), viewport={"width": 1440, "height": 900})
    context.add_init_script(NO_TOUR)
    seen = watch(context, system.url())
    context.set_default_timeout(WAIT_MS)
    return context, context.new_page(), seen


def test_ohif_lists_the_studies_draws_the_ct_and_scrolls_through_it(
    system: System, browser: Browser, ct_study: str
) -> None:
    context, page, seen = open_page(browser, system)

    # The study list: one row per study, with the patient, date, modality and instance count.
    page.goto("/viewer/")
    ct_row = page.locator("tbody tr", has_text="Viewer, Test")
    mr_row = page.locator("tbody tr", has_text="CompressedSamples, MR1")
    expect(ct_row).to_have_count(1, timeout=WAIT_MS)
    expect(mr_row).to_have_count(1, timeout=WAIT_MS)
    headers = page.locator("thead th").all_inner_texts()
    assert headers[:5] == ["Patient", "Study Date", "Modalities", "Description", "Accession"]
    # the sixth column, headed by an icon, counts the instances
    assert ct_row.locator("td").all_inner_texts()[:6] == [
        "Viewer, Test",
        "01-Jan-2026",
        "CT",
        "OHIF check",
        "",
        str(SLICES),
    ]
    assert mr_row.locator("td").all_inner_texts()[:6] == [
        "CompressedSamples, MR1",
        "26-Aug-2004 06:50 PM",  # with its StudyTime, 185059
        "MR",
        "No Description",
        "",
        "1",
    ]
    page.get_by_role("button", name="Confirm and hide").click()  # "for investigational use"
    save(page, "1-study-list")

    # Open the CT study as a user does: select its row, launch the basic viewer.
    ct_row.click()
    launch = page.get_by_role("button", name="Basic Viewer")
    if page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')"):
        launch.click()
        page.wait_for_url(f"**/viewer/viewer?StudyInstanceUIDs={ct_study}")
    else:  # no WebGL even on SwiftShader: cornerstone3D draws on the CPU when asked to
        expect(launch).to_be_visible()
        page.goto(f"/viewer/viewer?StudyInstanceUIDs={ct_study}&viewportRendering=cpu")
        notice = page.get_by_role("dialog", name="OHIF Fell Back to CPU Rendering")
        expect(notice).to_be_visible(timeout=WAIT_MS)
        page.keyboard.press("Escape")
        expect(notice).to_be_hidden()
    overlay = page.locator(INSTANCE)
    expect(overlay).to_contain_text(f"(1/{SLICES})", timeout=WAIT_MS)
    wait_until(page, f"() => ({SPREAD})() > 20")
    first_drawn = drawn(page)
    first = grey(first_drawn)
    save(page, "2-ct-first-slice", first)
    assert first.std() > 20, "the viewport is (nearly) uniform: no slice drawn"
    assert len(np.unique(first)) > 16

    # Scroll one slice down with the wheel over the viewport: another slice, drawn differently.
    box = page.locator(CANVAS).bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 120)
    expect(overlay).to_contain_text(f"(2/{SLICES})", timeout=WAIT_MS)
    wait_until(page, f"(first) => ({DRAWN})() !== first", first_drawn)
    second = grey(drawn(page))
    save(page, "3-ct-second-slice", second)
    changed = np.abs(second - first) > 8
    assert changed.mean() > 0.005, f"only {changed.mean():.2%} of the viewport changed"
    assert second.std() > 20

    context.close()
    assert not seen.errors, seen.errors  # every answer OHIF got was below 400
    assert not seen.elsewhere, f"requests left {system.url()}: {seen.elsewhere}"
    crashed = [  # the gateway logs no requests, but every 500 it answers as request.crashed
        r
        for r in log_records(system.log.read_text(errors="replace"))
        if r.get("service") == "api-gateway" and r.get("level") in ("error", "critical")
    ]
    assert not crashed, crashed


def test_the_dashboard_opens_a_study_in_ohif(
    system: System, browser: Browser, ct_study: str
) -> None:
    context, page, seen = open_page(browser, system)
    page.goto("/#/studies")
    card = page.locator(".study", has_text="Viewer, Test")
    link = card.get_by_role("link", name="Open in OHIF")
    expect(link).to_have_attribute("href", f"/viewer/viewer?StudyInstanceUIDs={ct_study}")
    wait_until(
        page,
        "() => [...document.querySelectorAll('.study .thumb img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
    )
    save(page, "4-dashboard-studies")
    with context.expect_page() as opened:
        link.click()
    viewer = opened.value
    expect(viewer.locator(INSTANCE)).to_contain_text(f"(1/{SLICES})", timeout=WAIT_MS)
    wait_until(viewer, f"() => ({SPREAD})() > 20")
    context.close()
    assert not seen.errors, seen.errors
    assert not seen.elsewhere, seen.elsewhere
