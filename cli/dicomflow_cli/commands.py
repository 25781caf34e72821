"""``dicomflow status``, ``search``, ``get`` and ``keys``: one request each (``status --watch``:
many)."""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import quote
from uuid import UUID

from dicomflow_cli.client import FINAL, Gateway
from dicomflow_cli.follow import Follower
from dicomflow_cli.output import Output

SEARCH_PARAMS = {
    "patient_name": "patient_name",
    "patient_id": "patient_id",
    "modality": "modality",
    "date_from": "study_date_from",
    "date_to": "study_date_to",
    "institution": "institution",
    "accession": "accession_number",
    "limit": "limit",
    "offset": "offset",
    "sort": "sort",
}
GET_PATHS = {
    "png": "/uploads/{id}/image?format=png",
    "original": "/uploads/{id}/original",
    "deidentified": "/uploads/{id}/deidentified",
}
WATCH_DEFAULT_S = 24 * 3600.0
SHOWN = (
    "modality",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "size",
    "sha256",
    "duplicate_of",
    "failed_stage",
    "error",
    "preview_note",
)


def status(args: argparse.Namespace, gw: Gateway, out: Output) -> int:
    """Show an upload's status; with --watch, follow it until final (exit 1 unless archived)."""
    upload_id = _normal(args.id)
    if not args.watch:
        _show_status(gw.status(upload_id), out)
        return 0
    shown: list[str] = []

    def changed(states: dict[str, str]) -> None:
        state = states.get(upload_id)
        if state and (not shown or shown[-1] != state):
            shown.append(state)
            out.note(f"{time.strftime('%H:%M:%S')}  {state}")

    answer = gw.status(upload_id)  # a 404 for an unknown id, before waiting on anything
    changed({upload_id: answer["status"]})
    if answer["status"] not in FINAL:
        answers = Follower(gw, changed).follow([upload_id], args.timeout or WATCH_DEFAULT_S)
        answer = answers.get(upload_id) or gw.status(upload_id)
    _show_status(answer, out)
    return 0 if answer.get("status") == "archived" else 1


def _normal(text: str) -> str:
    """An upload id as the server writes it (lower-case UUID), else quoted for a path."""
    try:
        return str(UUID(text))
    except ValueError:
        return quote(text, safe="")


def _show_status(answer: dict[str, Any], out: Output) -> None:
    if out.as_json:
        out.json(answer)
        return
    details = answer.get("details") or {}
    rows: list[tuple[str, Any]] = [
        ("upload id", answer.get("study_id")),
        ("status", answer.get("status")),
        ("updated", answer.get("timestamp")),
    ]
    for key in SHOWN:
        if details.get(key) not in (None, ""):
            rows.append((key.replace("_", " "), details[key]))
    for reason in details.get("reasons") or []:
        rows.append(("reason", f"{reason.get('code')}: {reason.get('message')}"))
    for warning in details.get("warnings") or []:
        rows.append(("warning", f"{warning.get('code')}: {warning.get('message')}"))
    for target in details.get("targets") or []:
        where = target.get("location") or target.get("error") or ""
        rows.append(
            (
                f"target {target.get('target')}",
                f"{'ok' if target.get('ok') else 'failed'} {where}".strip(),
            )
        )
    if timings := details.get("timings_ms"):
        rows.append(("timings", ", ".join(f"{k} {v:g} ms" for k, v in timings.items())))
    out.table(["field", "value"], rows)


def search(args: argparse.Namespace, gw: Gateway, out: Output) -> int:
    """Studies matching the filters, as a table (``GET /studies``)."""
    params = {
        name: getattr(args, arg)
        for arg, name in SEARCH_PARAMS.items()
        if getattr(args, arg) is not None
    }
    answer = gw.json("GET", "/studies", params=params)
    if out.as_json:
        out.json(answer)
        return 0
    studies = answer.get("studies") or []
    rows = [
        (
            s.get("study_uid"),
            s.get("patient_name"),
            s.get("patient_id"),
            s.get("study_date"),
            ",".join(s.get("modalities") or []),
            s.get("series_count"),
            s.get("instance_count"),
            len(s.get("upload_ids") or []),
        )
        for s in studies
    ]
    out.table(
        [
            "study uid",
            "patient",
            "patient id",
            "date",
            "modalities",
            "series",
            "instances",
            "uploads",
        ],
        rows,
    )
    offset = int(answer.get("offset") or 0)
    total = answer.get("total", len(studies))
    shown = f"{offset + 1}-{offset + len(studies)}" if studies else "none"
    out.note(f"{shown} of {total} studies")
    return 0


def get(args: argparse.Namespace, gw: Gateway, out: Output) -> int:
    """Save an upload's PNG, original or de-identified copy to a file (``-``: stdout)."""
    path = GET_PATHS[args.what].format(id=_normal(args.id))
    size, kind = gw.download(path, args.output)
    if out.as_json and args.output != "-":
        out.json({"file": args.output, "bytes": size, "content_type": kind})
    elif args.output != "-":
        out.note(f"wrote {args.output} ({size} bytes, {kind or 'unknown type'})")
    return 0


def keys(args: argparse.Namespace, gw: Gateway, out: Output) -> int:
    """Create, list or revoke API keys through the gateway's admin routes."""
    if args.action == "create":
        made = gw.json("POST", "/keys", json={"name": args.name, "scopes": args.scope})
        if out.as_json:
            out.json(made)
        else:
            out.line(made["key"])
            out.note(
                f"key {made['id']} ({', '.join(made['scopes'])}): keep it now, it is "
                "not shown again"
            )
    elif args.action == "list":
        found = gw.json("GET", "/keys")
        if out.as_json:
            out.json(found)
        else:
            rows = [
                [k["id"], k["name"], ",".join(k["scopes"]), k["created_at"]] for k in found["keys"]
            ]
            out.table(["id", "name", "scopes", "created"], rows)
    else:
        revoked = gw.json("DELETE", f"/keys/{quote(args.id, safe='')}")
        if out.as_json:
            out.json(revoked)
        else:
            out.line(f"revoked {revoked['id']} ({revoked['name']})")
    return 0
