"""``make viewer``: the OHIF Viewer from npm, made ready for the gateway to serve at /viewer/.

``npm pack @ohif/app@<OHIF_VERSION>`` downloads the package's tarball alone (about 50 MB, no
dependencies; npm checks its integrity); the built viewer in its ``package/dist/`` goes to
``.cache/ohif/<version>/``, the gateway's default ``VIEWER_DIR``. A version already there is
left as it is, so running it again costs nothing.

OHIF publishes its dist built for a site's root: webpack's public path ``"/"`` is compiled into
the bundles that load other chunks, workers and WebAssembly, and ``index.html`` names every
asset from ``/`` and sets ``window.PUBLIC_URL = "/"``. OHIF's own way to serve it under a path
is to build it again with ``PUBLIC_URL``; this script does the same to the built files instead:
that one assignment in each bundle, the root-relative URLs and ``PUBLIC_URL`` in
``index.html``, and the stylesheets' ``url(/...)`` (a font) are rewritten to ``/viewer/``.
Nothing else changes (the dist's ``app-config.js`` is never served: the gateway writes its own).

Only npm's registry is needed; without npm this says how to get it and exits with status 2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from api_gateway.routes.viewer import MOUNT
from api_gateway.settings import OHIF_VERSION

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = "@ohif/app"
DIST = "package/dist/"
PUBLIC_PATH = b'__webpack_require__.p = "/";'  # webpack's runtime, in each bundle that loads
PUBLIC_URL = 'window.PUBLIC_URL="/"'  # index.html sets it twice
ROOT_URL = re.compile(r'\b(href|src|content)="/(?!/)')  # an attribute naming a path from "/"
CSS_URL = re.compile(rb"url\(/(?!/)")  # a stylesheet's url(/a34f9d1faa5f3315.woff2)


def main() -> int:
    dest = ROOT / ".cache" / "ohif" / OHIF_VERSION
    if (dest / "index.html").is_file():
        print(f"[viewer] OHIF {OHIF_VERSION} is already in {dest}", file=sys.stderr)
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print(
            "[viewer] npm is not installed: it fetches the OHIF viewer from the npm registry. "
            "Install Node.js with npm (Debian: apt-get install npm), then run make viewer again.",
            file=sys.stderr,
        )
        return 2
    dest.parent.mkdir(parents=True, exist_ok=True)
    # built beside its destination and renamed into place: a dest that exists is complete
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{OHIF_VERSION}-") as work:
        staging = Path(work) / "dist"
        tarball = pack(npm, Path(work))
        extract(tarball, staging)
        prepare(staging, MOUNT.rstrip("/") + "/")
        try:
            staging.rename(dest)
        except OSError:
            if not (dest / "index.html").is_file():  # not another run finishing first
                raise
    print(f"[viewer] OHIF {OHIF_VERSION} is in {dest}, ready for {MOUNT}/", file=sys.stderr)
    return 0


def pack(npm: str, folder: Path) -> Path:
    """The package's tarball, downloaded by ``npm pack`` into folder."""
    spec = f"{PACKAGE}@{OHIF_VERSION}"
    print(f"[viewer] npm pack {spec} (about 50 MB)", file=sys.stderr)
    done = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"[viewer] npm pack {spec} failed:\n{done.stderr.strip()[-2000:]}")
    return folder / json.loads(done.stdout)[0]["filename"]


def extract(tarball: Path, staging: Path) -> None:
    """The files under ``package/dist/`` into staging, with the tar ``data`` filter (nothing
    outside staging, no links out, no special files)."""
    with tarfile.open(tarball) as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith(DIST) and member.name != DIST:
                member.name = member.name.removeprefix(DIST)
                members.append(member)
        if not members:
            raise SystemExit(f"[viewer] {tarball.name} has no {DIST}: not a built OHIF app")
        tar.extractall(staging, members=members, filter="data")


def prepare(dist: Path, base: str) -> None:
    """Make a dist built for "/" load everything from ``base`` (``/viewer/``); a dist that
    does not set its public path as OHIF 3.13 does is refused before anything changes."""
    index = dist / "index.html"
    page = index.read_text(encoding="utf-8")
    bundles = [script for script in sorted(dist.glob("*.js")) if PUBLIC_PATH in script.read_bytes()]
    if not bundles or PUBLIC_URL not in page:
        raise SystemExit(
            f"[viewer] this OHIF dist does not set its public path as 3.13 does ({PUBLIC_URL!r} "
            f"in index.html, {PUBLIC_PATH.decode()!r} in a bundle): scripts/fetch_viewer.py "
            "needs updating for it"
        )
    ours = PUBLIC_PATH.replace(b'"/"', f'"{base}"'.encode())
    for script in bundles:
        script.write_bytes(script.read_bytes().replace(PUBLIC_PATH, ours))
    for sheet in sorted(dist.glob("*.css")):
        sheet.write_bytes(CSS_URL.sub(f"url({base}".encode(), sheet.read_bytes()))
    page = page.replace(PUBLIC_URL, f'window.PUBLIC_URL="{base}"')
    index.write_text(ROOT_URL.sub(rf'\1="{base}', page), encoding="utf-8")
    print(f"[viewer] {base} set in index.html, CSS and {len(bundles)} bundles", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
