"""``dicomflow upload``: find files, skip what the server has, send the rest, follow, summarise.

Resumable: every file is hashed first and the gateway asked which hashes it already holds
(``POST /uploads/lookup``); those are not sent again, only followed like the rest. Each file is
one multipart request, streamed from disk, ``--concurrency`` at a time. Outcomes:

- ``archived``, ``already_there`` (the server had it), ``duplicate`` (the same instance with
  the same content was archived before): the data is on the server;
- ``rejected`` (with the validator's reasons, or the gateway's refusal), ``failed`` (with the
  last error), ``pending`` (not final when ``--timeout`` ran out), ``accepted`` (sent, with
  ``--no-follow``); ``skipped``: not DICOM, JPEG or PNG, so not sent.

Exit code 0 when every file sent or found is on the server (``accepted`` too with
``--no-follow``); 1 otherwise, or when there was nothing to send. Skipped files do not count.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import httpx

from dicomflow_cli.client import FINAL, Gateway, Problem, problem_of
from dicomflow_cli.files import MEDIA, Item, find
from dicomflow_cli.follow import Follower
from dicomflow_cli.output import Output, Reporter, mb
from shared.files import sha256_of

LOOKUP_CHUNK = 1000
ON_SERVER = frozenset({"archived", "already_there", "duplicate"})
ORDER = (
    "archived",
    "already_there",
    "duplicate",
    "accepted",
    "rejected",
    "failed",
    "pending",
    "skipped",
)


def run(args: argparse.Namespace, gw: Gateway, out: Output) -> int:
    items = find(args.paths, args.recursive)
    for item in items:
        if item.kind is None:
            item.outcome, item.message = "skipped", "not DICOM, JPEG or PNG"
    wanted = [i for i in items if i.kind]
    if not wanted:
        out.note("dicomflow: nothing to upload: no DICOM, JPEG or PNG file found")
        summarise(items, out, gw.url, ok=False)
        return 1
    gw.json("GET", "/health")  # an unreachable gateway stops here, before any work
    out.note(f"hashing {len(wanted)} files ({mb(sum(i.size for i in wanted))})")
    with ThreadPoolExecutor(args.concurrency) as pool:
        for item, digest in zip(wanted, pool.map(lambda i: sha256_of(i.path), wanted), strict=True):
            item.sha256 = digest
    _lookup(gw, wanted, out)
    to_send = [i for i in wanted if not i.known]
    if len(to_send) < len(wanted):
        sent = len(wanted) - len(to_send)
        out.note(f"{sent} of {len(wanted)} files were sent before: not sending them again")
    reporter = out.progress()
    if to_send:
        _send_all(gw, to_send, args.label, args.concurrency, reporter)
    success = ON_SERVER
    if args.no_follow:
        _look_once(gw, [i for i in wanted if i.known], args.concurrency)
        for item in wanted:
            if item.upload_id and item.outcome == "pending":
                item.outcome = "accepted"  # sent (now or before), still on its way
        success = ON_SERVER | {"accepted"}
    else:
        _follow(gw, wanted, args, reporter)
    ok = all(i.outcome in success for i in wanted)
    summarise(items, out, gw.url, ok)
    return 0 if ok else 1


def _lookup(gw: Gateway, items: list[Item], out: Output) -> None:
    hashes = sorted({i.sha256 for i in items if i.sha256})
    known: dict[str, str] = {}
    for start in range(0, len(hashes), LOOKUP_CHUNK):
        try:
            answer = gw.json(
                "POST", "/uploads/lookup", json={"sha256": hashes[start : start + LOOKUP_CHUNK]}
            )
        except Problem as exc:
            out.note(f"dicomflow: the gateway cannot say which files it has ({exc}); sending all")
            return
        known.update(answer.get("known") or {})
    for item in items:
        if item.sha256 in known:
            item.upload_id, item.known = str(known[item.sha256]), True


class _Counted:
    """A file as httpx reads it for a multipart body, telling the progress what was read."""

    def __init__(self, f: IO[bytes], reporter: Reporter) -> None:
        self.f, self.reporter, self.count = f, reporter, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.count += len(chunk)
        self.reporter.sent(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def fileno(self) -> int:
        return self.f.fileno()


def _send_all(
    gw: Gateway, items: list[Item], label: str | None, concurrency: int, reporter: Reporter
) -> None:
    reporter.upload_started(len(items), sum(i.size for i in items))
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: _send(gw, i, label, reporter), items))
    finally:
        reporter.upload_ended()


def _send(gw: Gateway, item: Item, label: str | None, reporter: Reporter) -> None:
    assert item.kind is not None
    try:
        with item.path.open("rb") as f:
            body = _Counted(f, reporter)
            try:
                response = gw.http.post(
                    "/upload",
                    files={"file": (item.name, body, MEDIA[item.kind])},  # type: ignore[dict-item]
                    data={"label": label} if label else None,
                    timeout=httpx.Timeout(300.0, connect=5.0, pool=None),
                )
            finally:
                reporter.sent(max(item.size - body.count, 0))  # the bar ends whole either way
    except (httpx.HTTPError, OSError) as exc:
        item.outcome, item.message = "failed", f"not sent: {str(exc) or type(exc).__name__}"
        reporter.file_sent()
        return
    reporter.file_sent()
    if response.status_code == 202:
        answer = response.json()
        accepted = (answer.get("uploads") or [answer])[0]
        item.upload_id = str(accepted.get("upload_id") or accepted["study_id"])
        item.status = "accepted"
        if item.kind == "dicom" and accepted.get("sha256") not in (None, item.sha256):
            item.message = "the server received other bytes: did the file change meanwhile?"
        return
    problem = problem_of(response)
    refused = (problem.body.get("files") or [{}])[0]
    if response.status_code < 500 and refused.get("reason"):
        item.outcome = "rejected"
        item.message = f"refused ({refused['reason']}): {refused.get('message') or problem.detail}"
    else:
        item.outcome, item.message = "failed", str(problem)


def _follow(gw: Gateway, items: list[Item], args: argparse.Namespace, reporter: Reporter) -> None:
    ids = {i.upload_id for i in items if i.upload_id and i.outcome == "pending"}

    def changed(states: dict[str, str]) -> None:
        counts = Counter(states.values())
        reporter.followed(sum(counts[s] for s in FINAL), counts)

    reporter.follow_started(len(ids))
    try:
        answers = Follower(gw, changed, workers=args.concurrency).follow(
            ids, args.timeout, args.label
        )
    finally:
        reporter.follow_ended()
    for item in items:
        if item.upload_id in ids:
            settle(item, answers.get(item.upload_id), args.timeout)


def _look_once(gw: Gateway, items: list[Item], concurrency: int) -> None:
    """Settle files sent before from their status now, without waiting (``--no-follow``)."""

    def look(item: Item) -> None:
        with contextlib.suppress(Problem):  # left pending: reported as accepted
            answer = gw.status(str(item.upload_id))
            if answer.get("status") in FINAL:
                settle(item, answer, 0)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(look, items))


def settle(item: Item, answer: dict[str, Any] | None, timeout: float) -> None:
    """An item's outcome from the last status answer of its upload."""
    if answer is None:
        item.outcome, item.message = "pending", f"no status could be read in {timeout:g}s"
        return
    details = answer.get("details") or {}
    item.status, item.details = answer.get("status"), details
    if item.status == "archived":
        item.outcome = (
            "already_there"
            if item.known
            else "duplicate"
            if details.get("duplicate_of")
            else "archived"
        )
        if item.outcome == "duplicate":
            item.message = f"the same instance was archived as {details['duplicate_of']}"
    elif item.status == "rejected":
        reasons = details.get("reasons") or []
        item.outcome = "rejected"
        item.message = "; ".join(f"{r.get('code')}: {r.get('message')}" for r in reasons) or None
    elif item.status == "failed":
        item.outcome, item.message = "failed", details.get("error")
    else:
        item.outcome, item.message = "pending", f"still {item.status} after {timeout:g}s"


def summarise(items: list[Item], out: Output, url: str, ok: bool) -> None:
    """The counts per outcome and every file not plainly on the server, or all as JSON."""
    counts = Counter(i.outcome for i in items)
    if out.as_json:
        out.json(
            {
                "gateway": url,
                "ok": ok,
                "counts": {k: counts[k] for k in ORDER if counts[k]},
                "files": [i.as_json() for i in items],
            }
        )
        return
    out.table(["outcome", "files"], [(k, counts[k]) for k in ORDER if counts[k]], "Summary")
    noted = [i for i in items if i.outcome not in ("archived", "already_there", "accepted")]
    if noted:
        out.line()
        rows = [(i.name, i.outcome, i.upload_id or "", i.message or "") for i in noted]
        out.table(["file", "outcome", "upload id", "why"], rows)
