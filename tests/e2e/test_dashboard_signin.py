"""The dashboard and the OHIF viewer with access control on (issue 12), in a real browser
(Debian's chromium, driven by Playwright) against the whole pipeline: signing in with an API
key (a wrong one refused, a read-only one refused what it may not do, a revoked one asked to
sign in again), the live feed read with fetch() and a credential, signing in at an OpenID
Connect issuer with PKCE (a tiny one this test serves: testbed.oidc_provider, real redirects
and signatures), and OHIF sending the dashboard's credential, or sending the browser to sign in
without one. Screenshots are kept under ``test-artifacts/signin/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pydicom
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from testbed.oidc_provider import KID, OidcProvider
from testbed.system import System, start_system, stop_system
from tests.e2e.test_viewer import (
    INSTANCE,
    NO_TOUR,
    SLICES,
    SPREAD,
    WAIT_MS,
    ct_series,
    ohif,
    wait_until,
)
from tests.support import ct_slice, pydicom_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

__all__ = ["ohif"]  # the OHIF dist fixture, shared with test_viewer.py

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "signin"
CLIENT_ID, AUDIENCE = "dicomflow-dashboard", "dicomflow"
STORED = "dicomflow.credential"  # the dashboard's sessionStorage key (static/session.js)
# a CSP violation in any page is reported on its console, where the watcher below reads it
REPORT_CSP = (
    "document.addEventListener('securitypolicyviolation', e => console.error("
    "`CSP violation: ${e.violatedDirective} ${e.blockedURI}`))"
)


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    running = OidcProvider(client_id=CLIENT_ID, audience=AUDIENCE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def system(
    ohif: Path, provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The pipeline with access control on, OIDC sign-in at ``provider``, OHIF served; its
    client sends the first admin key, made beside Redis as the README says."""
    running = start_system(
        tmp_path_factory.mktemp("system"),
        ACCESS_CONTROL="on",
        VIEWER_DIR=str(ohif),
        OIDC_ISSUER=provider.issuer,
        OIDC_AUDIENCE=AUDIENCE,
        OIDC_CLIENT_ID=CLIENT_ID,
        OIDC_SCOPES="openid dicomflow.read dicomflow.write",
    )
    provider.redirect_uris.add(f"{running.url()}/")  # the dashboard, registered at the issuer
    made = subprocess.run(
        [sys.executable, "-m", "api_gateway", "keys", "create", "e2e-admin", "--scope", "admin"],
        env={**os.environ, "REDIS_URL": running.redis.url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    running.api_key = json.loads(made.stdout)["key"]
    yield running
    stop_system(running)


def new_key(system: System, name: str, scope: str) -> tuple[str, str]:
    """(id, secret) of a new key, made by the admin through the gateway."""
    with system.client() as c:
        made = c.post("/keys", json={"name": name, "scopes": [scope]})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


@pytest.fixture(scope="module")
def reader(system: System) -> str:
    return new_key(system, "e2e-reader", "read")[1]


@pytest.fixture(scope="module")
def archived(system: System, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One upload, archived before any page is opened: the Jobs view has something to list."""
    path = tmp_path_factory.mktemp("first") / "first.dcm"
    path.write_bytes(ct_slice(0, rows=64, columns=64, seed=3, patient_name="Signin^First"))
    (upload_id,) = system.upload(path)
    assert system.wait_final([upload_id])[upload_id]["status"] == "archived"
    return upload_id


@pytest.fixture(scope="module")
def ct_study(system: System, tmp_path_factory: pytest.TempPathFactory) -> str:
    """test_viewer's synthetic CT series and MR_small, archived; the CT's StudyInstanceUID."""
    paths = ct_series(tmp_path_factory.mktemp("ct"))
    done = system.wait_final(system.upload(*paths, pydicom_file("MR_small.dcm")))
    assert {answer["status"] for answer in done.values()} == {"archived"}, done
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH: `apt-get install chromium` to run the sign-in test")
    # WebGL without a GPU for OHIF: ANGLE on SwiftShader (as test_viewer.py)
    args = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader"]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=[*args, "--enable-unsafe-swiftshader"]
        )
        yield launched
        launched.close()


@dataclass
class Seen:
    """What the browser did: requests (to check their headers and where they went), answers'
    statuses by path, uncaught errors and CSP violations."""

    requests: list[Request] = field(default_factory=list)
    statuses: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def elsewhere(self, *origins: str) -> list[str]:
        return [
            r.url
            for r in self.requests
            if not r.url.startswith(origins) and urlsplit(r.url).scheme not in ("data", "blob")
        ]

    def to(self, path: str) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path.startswith(path)]


def open_context(browser: Browser, system: System) -> tuple[BrowserContext, Seen]:
    context = browser.new_context(base_url=system.url(), viewport={"width": 1440, "height": 900})
    context.set_default_timeout(20_000)
    context.add_init_script(REPORT_CSP)
    seen = Seen()
    context.on("request", lambda r: seen.requests.append(r))
    context.on("response", lambda r: seen.statuses.append((r.status, urlsplit(r.url).path)))

    def page(p: Page) -> None:
        p.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
        p.on(
            "console",
            lambda m: seen.errors.append(m.text) if m.text.startswith("CSP violation") else None,
        )

    context.on("page", page)
    return context, seen


def sign_in(page: Page, key: str) -> None:
    expect(page.locator("#view-signin")).to_be_visible()
    page.fill("#signin-key-input", key)
    page.click("#signin-key button[type=submit]")


def stored(page: Page) -> dict[str, str] | None:
    value = page.evaluate(f"sessionStorage.getItem('{STORED}')")
    return json.loads(value) if value else None


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_api_key_signs_in_uploads_follows_live_and_signs_out(
    system: System, browser: Browser, archived: str, tmp_path: Path
) -> None:
    admin = system.api_key
    assert admin
    context, seen = open_context(browser, system)
    page = context.new_page()

    # First the sign-in view, and nothing else: the gateway asks for a credential.
    page.goto("/")
    expect(page.locator("#view-signin")).to_be_visible()
    expect(page.locator("#nav-tabs")).to_be_hidden()
    expect(page.locator("#view-upload")).to_be_hidden()
    shot(page, "1-sign-in")

    # A wrong key is refused, and said so.
    sign_in(page, "dfk_000000000000_not-a-key")
    expect(page.locator("#signin-notice")).to_have_text(
        "This key is not valid: unknown, revoked or mistyped."
    )
    expect(page.locator("#view-signin")).to_be_visible()
    assert stored(page) is None
    shot(page, "2-wrong-key")

    # The right one: the views, and who is signed in.
    sign_in(page, admin)
    expect(page.locator("#view-upload")).to_be_visible()
    expect(page.locator("#session-who")).to_have_text("e2e-admin")
    expect(page.locator("#session-scopes")).to_have_text("admin")
    assert stored(page) == {
        "kind": "key",
        "token": admin,
        "who": "e2e-admin",
        "actor": "key:e2e-admin",
        "scopes": ["read", "write", "admin"],
    }
    assert "dfk_" not in page.evaluate("JSON.stringify(localStorage)")

    # Jobs, followed live. The first answer of /events is made to end at once, as a stream
    # cut by the network is: the feed comes back after the `retry` it was given, resuming
    # from its id with Last-Event-ID (the gateway then sends what came since).
    cut: list[str] = []

    def first_stream_ends(route: Route) -> None:
        if cut:
            route.continue_()
            return
        cut.append(route.request.url)
        body = "retry: 300\nid: 1-0\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/events*", first_stream_ends)
    page.click('[data-tab="jobs"]')
    row = page.locator(f'#jobs-rows tr[data-upload-id="{archived}"]')
    expect(row).to_have_attribute("data-state", "archived")
    expect(page.locator("#jobs-feed")).to_have_attribute("data-state", "live")
    feeds = seen.to("/events")
    assert len(feeds) >= 2, [r.url for r in feeds]
    for request in feeds:
        headers = request.all_headers()
        assert headers["authorization"] == f"Bearer {admin}"
        assert "dfk_" not in request.url
        assert "key" not in request.url
    assert "last-event-id" not in feeds[0].all_headers()
    assert feeds[1].all_headers()["last-event-id"] == "1-0"
    # an upload made elsewhere shows up in the list by the feed alone
    other = tmp_path / "elsewhere.dcm"
    other.write_bytes(ct_slice(1, rows=64, columns=64, seed=4, patient_name="Signin^Elsewhere"))
    (elsewhere,) = system.upload(other)
    expect(page.locator(f'#jobs-rows tr[data-upload-id="{elsewhere}"]')).to_have_attribute(
        "data-state", "archived", timeout=60_000
    )
    shot(page, "3-jobs")

    # Upload from the page: the file goes up with the key and reaches archived live.
    mine = tmp_path / "signed-in.dcm"
    mine.write_bytes(ct_slice(2, rows=96, columns=96, seed=5, patient_name="Signin^Upload"))
    page.click('[data-tab="upload"]')
    page.set_input_files("#pick-files", str(mine))
    page.click("#upload-start")
    done = page.locator('#upload-rows tr[data-state="archived"]')
    expect(done).to_have_count(1, timeout=60_000)
    upload_id = done.get_attribute("data-upload-id")
    assert upload_id
    (sent,) = [r for r in seen.requests if r.method == "POST" and r.url.endswith("/upload")]
    assert sent.all_headers()["authorization"] == f"Bearer {admin}"
    shot(page, "4-uploaded")

    # Its image, fetched with the key (an <img> cannot send it) and shown from memory; its
    # original, downloaded the same way.
    done.locator("a", has_text="View").click()
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-img');"
        " return i.src.startsWith('blob:') && i.complete && i.naturalWidth === 96 }"
    )
    with page.expect_download() as saving:
        page.click("#viewer-original")
    download = saving.value
    assert download.suggested_filename == f"{upload_id}.dcm"
    assert Path(download.path()).read_bytes() == mine.read_bytes()
    shot(page, "5-viewer")

    # Sign out: the sign-in view again, nothing kept.
    page.click("#signout")
    expect(page.locator("#view-signin")).to_be_visible()
    expect(page.locator("#session")).to_be_hidden()
    assert stored(page) is None
    images = [r for r in seen.to("/uploads/") if "/image" in r.url or "/original" in r.url]
    assert images
    assert all(r.all_headers().get("authorization") == f"Bearer {admin}" for r in images)
    context.close()
    assert not seen.errors, seen.errors
    assert not seen.elsewhere(system.url()), seen.elsewhere(system.url())


def test_a_read_only_key_reads_may_not_write_and_once_revoked_signs_in_again(
    system: System, browser: Browser, archived: str, tmp_path: Path
) -> None:
    key_id, key = new_key(system, "e2e-read-only", "read")
    context, seen = open_context(browser, system)
    page = context.new_page()
    page.goto("/#/jobs")
    sign_in(page, key)
    expect(page.locator("#session-scopes")).to_have_text("read")
    expect(page.locator(f'#jobs-rows tr[data-upload-id="{archived}"]')).to_be_visible()

    # Uploading is refused in place, saying what this key may not do.
    path = tmp_path / "refused.dcm"
    path.write_bytes(ct_slice(0, rows=32, columns=32, seed=6, patient_name="Signin^Refused"))
    page.click('[data-tab="upload"]')
    page.set_input_files("#pick-files", str(path))
    page.click("#upload-start")
    refused = page.locator('#upload-rows tr[data-state="refused"]')
    expect(refused).to_contain_text("this key may not upload files (this needs the write scope)")
    expect(page.locator("#view-signin")).to_be_hidden()
    page.click('[data-tab="health"]')
    expect(page.locator("#health-notice")).to_contain_text(
        "This key may not see the system's health"
    )
    shot(page, "6-read-only")

    # Revoked meanwhile: the next request is refused, and the sign-in view comes back.
    with system.client() as c:
        assert c.delete(f"/keys/{key_id}").status_code == 200
    page.click('[data-tab="jobs"]')
    expect(page.locator("#view-signin")).to_be_visible()
    expect(page.locator("#signin-notice")).to_contain_text("expired or was revoked")
    assert stored(page) is None
    context.close()
    assert not seen.errors, seen.errors
    assert (403, "/upload") in seen.statuses
    assert (403, "/system") in seen.statuses


def test_signing_in_at_the_openid_connect_issuer_with_pkce(
    system: System, browser: Browser, provider: OidcProvider, archived: str
) -> None:
    context, seen = open_context(browser, system)
    page = context.new_page()
    page.goto("/#/jobs")
    button = page.locator("#signin-oidc-button")
    expect(button).to_have_text(f"Sign in with {urlsplit(provider.issuer).netloc}")
    before = len(provider.issued)
    button.click()

    # To the issuer and back at once (it asks nobody), the code exchanged for a token.
    expect(page.locator("#session-who")).to_have_text("alice")
    expect(page.locator(f'#jobs-rows tr[data-upload-id="{archived}"]')).to_be_visible()
    assert page.url == f"{system.url()}/#/jobs"  # no code left in the address or the history
    assert len(provider.issued) == before + 1
    assert provider.issued[-1]["scope"] == "openid dicomflow.read dicomflow.write"
    assert not provider.refused, provider.refused
    (asked,) = [r for r in seen.requests if r.url.startswith(f"{provider.issuer}/authorize")]
    query = {k: v[0] for k, v in parse_qs(urlsplit(asked.url).query).items()}
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == f"{system.url()}/"
    assert query["client_id"] == CLIENT_ID
    assert "code_verifier" not in query
    credential = stored(page)
    assert credential is not None
    assert credential["kind"] == "oidc"
    assert credential["actor"] == "oidc:alice-subject"
    assert jwt.decode(credential["token"], options={"verify_signature": False})["aud"] == AUDIENCE
    shot(page, "7-oidc")

    # The token expires: the gateway's 401 brings the sign-in back, and the issuer signs in
    # again (a real token of its key, expired; the gateway's own check refuses it).
    now = int(time.time())
    claims = {**provider.issued[-1], "iat": now - 600, "exp": now - 300}
    expired = jwt.encode(claims, provider.key, algorithm="RS256", headers={"kid": KID})
    page.evaluate(
        "([key, token]) => { const c = JSON.parse(sessionStorage.getItem(key));"
        " sessionStorage.setItem(key, JSON.stringify({...c, token})) }",
        [STORED, expired],
    )
    page.click("#jobs-refresh")
    expect(page.locator("#view-signin")).to_be_visible()
    page.click("#signin-oidc-button")
    expect(page.locator("#session-who")).to_have_text("alice")
    expect(page.locator(f'#jobs-rows tr[data-upload-id="{archived}"]')).to_be_visible()
    context.close()
    assert not seen.errors, seen.errors
    assert not seen.elsewhere(system.url(), provider.issuer)
    token_posts = [r for r in seen.requests if r.url == f"{provider.issuer}/token"]
    assert [r.method for r in token_posts] == ["POST", "POST"]


def test_ohif_opened_from_the_dashboard_sends_its_credential(
    system: System, browser: Browser, reader: str, ct_study: str
) -> None:
    context, seen = open_context(browser, system)
    context.add_init_script(NO_TOUR)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto("/#/studies")
    sign_in(page, reader)
    link = page.locator(".study", has_text="Viewer, Test").get_by_role("link", name="Open in OHIF")
    expect(link).to_have_attribute("href", f"/viewer/viewer?StudyInstanceUIDs={ct_study}")
    with context.expect_page() as opened:
        link.click()
    viewer = opened.value
    expect(viewer.locator(INSTANCE)).to_contain_text(f"(1/{SLICES})", timeout=WAIT_MS)
    wait_until(viewer, f"() => ({SPREAD})() > 20")
    shot(viewer, "8-ohif-drawn")
    # its study list too, in the same tab (the credential is this tab's)
    viewer.goto("/viewer/")
    expect(viewer.locator("tbody tr", has_text="Viewer, Test")).to_have_count(1, timeout=WAIT_MS)
    shot(viewer, "9-ohif-study-list")
    assert "dfk_" not in viewer.evaluate("JSON.stringify(localStorage)")
    dicomweb = seen.to("/dicomweb/")
    assert dicomweb
    bare = [r.url for r in dicomweb if r.all_headers().get("authorization") != f"Bearer {reader}"]
    assert not bare, bare
    context.close()
    assert not [s for s in seen.statuses if s[0] >= 400], seen.statuses
    assert not seen.errors, seen.errors
    assert not seen.elsewhere(system.url())


def test_ohif_without_a_credential_shows_nothing_and_sends_the_browser_to_sign_in(
    system: System, browser: Browser, reader: str, ct_study: str
) -> None:
    context, seen = open_context(browser, system)
    context.add_init_script(NO_TOUR)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"/viewer/viewer?StudyInstanceUIDs={ct_study}")
    expect(page.locator("#view-signin")).to_be_visible(timeout=WAIT_MS)
    assert urlsplit(page.url).path == "/"
    refused = [path for status, path in seen.statuses if path.startswith("/dicomweb/")]
    assert refused
    assert all(status == 401 for status, path in seen.statuses if path.startswith("/dicomweb"))
    shot(page, "10-ohif-asks-to-sign-in")

    # Signed in there, the browser goes back to the study it asked for.
    sign_in(page, reader)
    page.wait_for_url(f"**/viewer/viewer?StudyInstanceUIDs={ct_study}")
    expect(page.locator(INSTANCE)).to_contain_text(f"(1/{SLICES})", timeout=WAIT_MS)
    wait_until(page, f"() => ({SPREAD})() > 20")
    context.close()
    assert not seen.errors, seen.errors


def test_the_feed_reads_event_streams_as_eventsource_does(system: System, browser: Browser) -> None:
    """sse.js against the standard's rules, in the browser: line ends of each kind, split
    anywhere, comments, ids (an id alone moves the cursor), retry, a field without a value,
    an id with NUL ignored, an event not closed by a blank line dropped."""
    context, _ = open_context(browser, system)
    page = context.new_page()
    page.goto("/")
    stream = (
        "\ufeffretry: 2000\n\nid: 1-0\n\n: ping\n\nid: 2-0\nevent: status\n"
        'data: {"a":1}\r\n\r\ndata: x\rdata:y\r\rid: 3\u0000x\nevent: gap\ndata\n\n'
        "event: status\ndata: never closed"
    )
    parsed = page.evaluate(
        """async (text) => {
          const { EventStreamParser } = await import('/ui/sse.js');
          const events = [];
          const parser = new EventStreamParser((e) => events.push(e));
          for (let i = 0; i < text.length; i += 3) parser.push(text.slice(i, i + 3));
          parser.end();
          return { events, lastEventId: parser.lastEventId, retry: parser.retry };
        }""",
        stream,
    )
    context.close()
    assert parsed == {
        "events": [
            {"type": "status", "data": '{"a":1}', "lastEventId": "2-0"},
            {"type": "message", "data": "x\ny", "lastEventId": "2-0"},
            {"type": "gap", "data": "", "lastEventId": "2-0"},
        ],
        "lastEventId": "2-0",
        "retry": 2000,
    }
