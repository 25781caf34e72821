"""The ``dicomflow`` command line against the whole pipeline, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.system import ROOT, System, start_system, stop_system
from tests.support import ct_slice, free_port, write_ct_series

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

COMMANDS = ("upload", "status", "search", "get", "keys")


def cli(
    system: System | None, *args: str, url: str | None = None, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dicomflow_cli`` as a separate process (the cli folder on its path until the
    project installs it)."""
    path = [str(ROOT / "cli"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env["DICOMFLOW_URL"] = url or (system.url() if system else "http://127.0.0.1:9")
    env.pop("DICOMFLOW_API_KEY", None)
    if api_key:
        env["DICOMFLOW_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-m", "dicomflow_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 files in nested folders: 44 CT slices in three series, a byte-identical copy of
    one, three bad DICOM files and two that are not DICOM at all."""
    root = tmp_path_factory.mktemp("cli") / "scans"
    small = {"rows": 64, "columns": 64}
    first = write_ct_series(root / "p1" / "series1", 20, seed=1, **small)
    write_ct_series(root / "p1" / "series2", 14, seed=2, **small)
    write_ct_series(root / "p2", 10, seed=3, **small)
    (root / "p2" / "copy").mkdir()
    (root / "p2" / "copy" / "again.dcm").write_bytes(first[0].read_bytes())
    bad = root / "bad"
    bad.mkdir()
    whole = ct_slice(0, seed=4, **small)  # type: ignore[arg-type]
    (bad / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (bad / "header-cut.dcm").write_bytes(whole[:200])
    (bad / "text.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"this is a text file\n" * 20)
    (root / "notes.txt").write_text("not a scan\n")
    (root / "p2" / "empty.dcm").write_bytes(b"")
    assert sum(1 for p in root.rglob("*") if p.is_file()) == 50
    return root


@pytest.fixture(scope="module")
def first_run(system: System, tree: Path) -> dict[str, Any]:
    done = cli(system, "upload", str(tree), "--recursive", "--json", "--concurrency", "6")
    assert done.returncode == 1, done.stderr  # the bad files
    return {"summary": _json(done), "stderr": done.stderr}


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in summary["files"]}


def test_upload_reports_every_file_and_fails_for_the_bad_ones(
    first_run: dict[str, Any], tree: Path
) -> None:
    summary = first_run["summary"]
    files = _by_name(summary)
    assert len(files) == 50
    assert summary["ok"] is False
    assert summary["counts"] == {"archived": 44, "duplicate": 1, "rejected": 3, "skipped": 2}
    for name in ("scans/bad/truncated.dcm", "scans/bad/header-cut.dcm", "scans/bad/text.dcm"):
        assert files[name]["outcome"] == "rejected", files[name]
        assert files[name]["message"], files[name]  # the validator's reasons, in one line
        assert files[name]["reasons"] or "refused" in files[name]["message"]
    for name in ("scans/notes.txt", "scans/p2/empty.dcm"):
        assert files[name]["outcome"] == "skipped"
        assert files[name]["upload_id"] is None
    pair = [files["scans/p1/series1/ct_1_0000.dcm"], files["scans/p2/copy/again.dcm"]]
    assert sorted(f["outcome"] for f in pair) == ["archived", "duplicate"]
    duplicate = next(f for f in pair if f["outcome"] == "duplicate")
    original = next(f for f in pair if f["outcome"] == "archived")
    assert duplicate["duplicate_of"] == original["upload_id"]
    archived = [f for f in files.values() if f["outcome"] == "archived"]
    assert all(f["status"] == "archived" and f["upload_id"] for f in archived)
    assert len({f["upload_id"] for f in archived}) == 44


def test_a_second_run_sends_nothing_again(
    system: System, tree: Path, first_run: dict[str, Any]
) -> None:
    done = cli(system, "upload", str(tree), "-r", "--json")
    assert done.returncode == 1  # the rejected files are still rejected
    summary = _json(done)
    assert summary["counts"] == {"already_there": 45, "rejected": 3, "skipped": 2}
    assert "48 of 48 files were sent before" in done.stderr
    before, after = _by_name(first_run["summary"]), _by_name(summary)
    pair = ("scans/p1/series1/ct_1_0000.dcm", "scans/p2/copy/again.dcm")  # one hash, two ids
    for name, was in before.items():
        if was["outcome"] in ("archived", "rejected") and name not in pair:
            assert after[name]["upload_id"] == was["upload_id"], name
        if was["upload_id"]:
            assert after[name]["already_there"] is True, name
    assert {after[n]["upload_id"] for n in pair} < {before[n]["upload_id"] for n in pair}
    unfollowed = cli(system, "upload", str(tree), "-r", "--json", "--no-follow")
    assert unfollowed.returncode == 1  # what was sent before is looked at once, not waited for
    assert _json(unfollowed)["counts"] == summary["counts"]


def test_a_clean_folder_exits_0_and_prints_a_table(system: System, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "clean", 3, seed=11, rows=32, columns=32)
    done = cli(system, "upload", str(tmp_path / "clean"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "archived" in done.stdout
    assert "3/3 files" in done.stderr  # progress lines when not on a terminal


def test_an_image_is_sent_and_archived_as_dicom(system: System, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (48, 32), 128).save(tmp_path / "photo.png")
    done = cli(system, "upload", str(tmp_path / "photo.png"), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (only,) = _json(done)["files"]
    assert (only["kind"], only["outcome"]) == ("png", "archived")
    again = cli(system, "upload", str(tmp_path / "photo.png"), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    (same,) = _json(again)["files"]
    assert same["already_there"] is True  # found by the image's own hash: not sent twice
    assert same["upload_id"] == only["upload_id"]


def test_status_shows_a_job_and_watch_follows_it_to_the_end(
    system: System, first_run: dict[str, Any], tmp_path: Path
) -> None:
    files = _by_name(first_run["summary"])
    archived = files["scans/p2/ct_3_0000.dcm"]["upload_id"]
    shown = cli(system, "status", archived)
    assert shown.returncode == 0
    assert "archived" in shown.stdout
    answer = _json(cli(system, "status", archived, "--json"))
    assert answer["status"] == "archived"
    rejected = _json(cli(system, "status", files["scans/bad/text.dcm"]["upload_id"], "--json"))
    assert rejected["status"] == "rejected"
    assert rejected["details"]["reasons"]
    write_ct_series(tmp_path / "w", 1, seed=12, rows=32, columns=32)
    sent = _json(cli(system, "upload", str(tmp_path / "w"), "--no-follow", "--json"))
    assert sent["counts"] == {"accepted": 1}
    watched = cli(system, "status", sent["files"][0]["upload_id"], "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    assert _json(watched)["status"] == "archived"
    unknown = cli(system, "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0
    assert "HTTP 404" in unknown.stderr


def test_get_saves_the_png_and_the_original(
    system: System, first_run: dict[str, Any], tree: Path, tmp_path: Path
) -> None:
    files = _by_name(first_run["summary"])
    upload_id = files["scans/p1/series2/ct_2_0003.dcm"]["upload_id"]
    png = tmp_path / "slice.png"
    assert cli(system, "get", upload_id, "--png", "-o", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask()  # as any file the user writes
    original = tmp_path / "slice.dcm"
    done = cli(system, "get", upload_id, "--original", "-o", str(original), "--json")
    assert done.returncode == 0, done.stderr
    assert original.read_bytes() == (tree / "p1" / "series2" / "ct_2_0003.dcm").read_bytes()
    assert _json(done)["bytes"] == original.stat().st_size
    deidentified = tmp_path / "deid.dcm"
    done = cli(system, "get", upload_id, "--deidentified", "-o", str(deidentified))
    assert done.returncode == 0, done.stderr  # needs GET /uploads/{id}/deidentified
    assert deidentified.read_bytes()[128:132] == b"DICM"
    refused = cli(
        system,
        "get",
        files["scans/bad/text.dcm"]["upload_id"],
        "--png",
        "-o",
        str(tmp_path / "no.png"),
    )
    assert refused.returncode == 1
    assert "HTTP 409" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "no.png").exists()


def test_search_lists_the_studies(system: System, first_run: dict[str, Any]) -> None:
    done = cli(system, "search", "--modality", "CT", "--limit", "50", "--json")
    assert done.returncode == 0, done.stderr  # needs GET /studies
    answer = _json(done)
    assert answer["total"] >= 3
    assert Counter(len(s["upload_ids"]) for s in answer["studies"])[20] >= 1
    table = cli(system, "search", "--patient-name", "SYNTHETIC*")
    assert table.returncode == 0
    assert "study uid" in table.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    done = cli(None, command, "--help")
    assert done.returncode == 0
    assert f"usage: dicomflow {command}" in done.stdout
    assert "--json" in done.stdout


def test_usage_errors_and_an_unreachable_gateway_exit_2(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "a.dcm").write_bytes(ct_slice(0, rows=16, columns=16))
    for args in (
        ["upload", str(tmp_path / "a.dcm")],
        ["status", "00000000-0000-0000-0000-000000000000"],
        ["search"],
        ["get", "00000000-0000-0000-0000-000000000000", "--png", "-o", str(tmp_path / "x.png")],
    ):
        done = cli(None, *args, url=nowhere)
        assert done.returncode == 2, args
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert "cannot reach the gateway" in done.stderr
    assert cli(None, "get", "x", "-o", "y").returncode == 2  # --png, --original or ...
    missing = cli(None, "upload", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The pipeline with access control on, and no key yet."""
    running = start_system(tmp_path_factory.mktemp("guarded"), ACCESS_CONTROL="on")
    yield running
    stop_system(running)


def test_with_access_control_on_the_cli_sends_its_key(guarded: System, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": guarded.redis.url}
    first = subprocess.run(
        [sys.executable, "-m", "api_gateway", "keys", "create", "ops", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    admin = json.loads(first.stdout)["key"]
    made = cli(guarded, "keys", "create", "ct-1", "--scope", "write", "--json", api_key=admin)
    assert made.returncode == 0, made.stderr
    scanner = _json(made)
    assert scanner["scopes"] == ["write"]
    listed = cli(guarded, "keys", "list", api_key=admin)
    assert "ct-1" in listed.stdout
    assert scanner["key"] not in listed.stdout

    scan = tmp_path / "a.dcm"
    scan.write_bytes(ct_slice(0, rows=32, columns=32, seed=9))
    anonymous = cli(guarded, "upload", str(scan))
    assert anonymous.returncode == 1
    assert "401" in anonymous.stderr
    assert "credential" in anonymous.stderr
    sent = cli(guarded, "upload", str(scan), "--no-follow", "--json", api_key=scanner["key"])
    assert sent.returncode == 0, sent.stderr
    [upload_id] = [f["upload_id"] for f in _json(sent)["files"]]
    cannot_read = cli(guarded, "status", upload_id, api_key=scanner["key"])
    assert cannot_read.returncode == 1
    assert "403" in cannot_read.stderr
    watched = cli(guarded, "status", upload_id, "--watch", "--timeout", "60", api_key=admin)
    assert watched.returncode == 0, watched.stderr
    assert cli(guarded, "keys", "revoke", scanner["id"], api_key=admin).returncode == 0
    revoked = cli(guarded, "upload", str(scan), "--no-follow", api_key=scanner["key"])
    assert revoked.returncode == 1
    assert "401" in revoked.stderr
