"""``make viewer``'s preparation of OHIF's dist for /viewer/, on a dist of a few lines shaped as
OHIF 3.13's: every root-relative URL moves under /viewer/, nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import fetch_viewer

PAGE = (
    '<head><script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><meta name="msapplication-TileImage" '
    'content="/assets/mstile-144x144.png"><script src="/app-config.js"></script>'
    '<a href="//cdn.example.org/x.js"></a><a href="https://ohif.org/">'
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    '<script defer src="/app.bundle.0f6159c501addfe9.js"></script></head>'
)
RUNTIME = '(() => {\n__webpack_require__.p = "/";\n})();\nfetch("/not/a/public/path");\n'


def test_the_public_path_moves_under_the_mount(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "app.bundle.0f6159c501addfe9.js").write_text(RUNTIME)
    (tmp_path / "2493.bundle.c4af70e46357151f.js").write_text("var a = 1;")
    (tmp_path / "app.bundle.css").write_text("src:url(/a34f.woff2) url(//x/y.woff2)")

    fetch_viewer.prepare(tmp_path, "/viewer/")

    assert (tmp_path / "index.html").read_text() == (
        '<head><script>console.time("scriptToView"),window.PUBLIC_URL="/viewer/"</script>'
        '<link rel="manifest" href="/viewer/manifest.json"><meta '
        'name="msapplication-TileImage" content="/viewer/assets/mstile-144x144.png">'
        '<script src="/viewer/app-config.js"></script>'
        '<a href="//cdn.example.org/x.js"></a><a href="https://ohif.org/">'
        "<script>function browserImportFunction(n){return import(n)}"
        'window.PUBLIC_URL="/viewer/"</script>'
        '<script defer src="/viewer/app.bundle.0f6159c501addfe9.js"></script></head>'
    )
    assert (tmp_path / "app.bundle.0f6159c501addfe9.js").read_text() == RUNTIME.replace(
        '__webpack_require__.p = "/"', '__webpack_require__.p = "/viewer/"'
    )
    assert (tmp_path / "2493.bundle.c4af70e46357151f.js").read_text() == "var a = 1;"
    assert (tmp_path / "app.bundle.css").read_text() == (
        "src:url(/viewer/a34f.woff2) url(//x/y.woff2)"
    )


def test_a_dist_built_otherwise_is_refused_not_half_prepared(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<script>window.PUBLIC_URL="/ohif/"</script>')
    (tmp_path / "app.bundle.js").write_text('__webpack_require__.p = "/ohif/";')
    with pytest.raises(SystemExit, match="public path"):
        fetch_viewer.prepare(tmp_path, "/viewer/")
    assert (tmp_path / "index.html").read_text() == '<script>window.PUBLIC_URL="/ohif/"</script>'
