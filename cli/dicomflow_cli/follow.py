"""Following uploads until each is final: live from ``GET /events``, else by long-polling.

The event stream is opened first and a status snapshot read once it is live, so a change is
either in the snapshot or in the stream, never in neither. A dropped stream is reopened with
``Last-Event-ID``, which replays what was missed; an ``event: gap`` (the server no longer has
those changes) makes the snapshot be read again. A gateway without ``/events`` is long-polled:
``GET /status/{id}?wait=final&timeout=30`` for each upload still in progress.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from dicomflow_cli.client import FINAL, EventStream, Gateway, GatewayUnreachable, Problem

Answers = dict[str, dict[str, Any]]
OnChange = Callable[[dict[str, str]], None]
MAX_FILTER_CHARS = 4000  # ids beyond this are followed unfiltered and picked here
RECONNECT_S = 2.0


class _NoEvents(Exception):
    """The gateway has no event stream: long-poll instead."""


def gone(upload_id: str) -> dict[str, Any]:
    """The answer for an upload the gateway no longer knows (deleted meanwhile)."""
    return {
        "study_id": upload_id,
        "status": "failed",
        "details": {"error": "the gateway no longer knows this upload"},
    }


class Follower:
    """Follows a set of uploads; ``answers`` holds each one's last status answer."""

    def __init__(self, gw: Gateway, on_change: OnChange, workers: int = 8) -> None:
        self.gw, self.on_change, self.workers = gw, on_change, workers
        self.answers: Answers = {}
        self.states: dict[str, str] = {}
        self.pending: set[str] = set()
        self.lock = threading.Lock()

    def follow(self, ids: Iterable[str], seconds: float, label: str | None = None) -> Answers:
        """Until every upload is final or ``seconds`` have passed; the answers then."""
        self.pending = set(ids)
        deadline = time.monotonic() + seconds
        if self.pending:
            try:
                self._live(deadline, label)
            except _NoEvents:
                self._poll_all(deadline)
        return self.answers

    def _record(self, upload_id: str, answer: dict[str, Any]) -> None:
        with self.lock:
            self.answers[upload_id] = answer
            self.states[upload_id] = str(answer.get("status"))
            if answer.get("status") in FINAL:
                self.pending.discard(upload_id)
            self.on_change(dict(self.states))

    def _note(self, upload_id: str, status: str) -> None:
        with self.lock:
            if upload_id in self.pending:
                self.states[upload_id] = status
                self.on_change(dict(self.states))

    def _read(self, upload_id: str) -> None:
        try:
            self._record(upload_id, self.gw.status(upload_id))
        except Problem as exc:
            if exc.status == 404:
                self._record(upload_id, gone(upload_id))
        except (httpx.HTTPError, GatewayUnreachable):
            pass  # still pending; read again after the next change or a reconnect

    def _snapshot(self) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(self._read, sorted(self.pending)))

    def _params(self, label: str | None) -> dict[str, str]:
        ids = ",".join(sorted(self.pending))
        if len(ids) <= MAX_FILTER_CHARS:
            return {"upload_id": ids}
        return {"label": label} if label else {}

    def _live(self, deadline: float, label: str | None) -> None:
        last_id: str | None = None
        failures = 0
        while self.pending and time.monotonic() < deadline:
            try:
                stream = self.gw.events(self._params(label), last_id)
            except Problem as exc:
                if exc.status in (404, 405, 501):
                    raise _NoEvents from None
                failures += 1
            except (GatewayUnreachable, httpx.HTTPError):
                failures += 1
            else:
                try:
                    last_id, ended_well = self._consume(stream, last_id, deadline)
                finally:
                    stream.close()
                failures = 0 if ended_well else failures + 1
            if failures >= 5 and last_id is None:
                raise _NoEvents  # the stream never worked: long-poll
            if self.pending and time.monotonic() < deadline:
                time.sleep(RECONNECT_S)

    def _consume(
        self, stream: EventStream, last_id: str | None, deadline: float
    ) -> tuple[str | None, bool]:
        """Read one connection's events; the last id seen, and whether it was not an error."""
        resumed = last_id is not None
        first = True
        try:
            for block in stream:
                if block.id:
                    last_id = block.id
                if first:
                    first = False
                    if not resumed and block.event != "error":
                        self._snapshot()  # the stream is live: nothing falls between
                if block.event == "gap":
                    self._snapshot()
                elif block.event == "error":
                    return last_id, False
                elif block.event == "status":
                    self._change(block.data)
                if not self.pending or time.monotonic() >= deadline:
                    break
        except httpx.HTTPError:
            return last_id, False  # dropped: reopened from last_id
        return last_id, True

    def _change(self, data: str) -> None:
        try:
            change = json.loads(data)
            upload_id, status = str(change["upload_id"]), str(change["status"])
        except (ValueError, KeyError, TypeError):
            return
        if upload_id not in self.pending:
            return
        if status in FINAL or status == "deleted":
            self._read(upload_id)  # the whole answer: reasons, error, duplicate_of
        else:
            self._note(upload_id, status)

    def _poll_all(self, deadline: float) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda i: self._poll(i, deadline), sorted(self.pending)))

    def _poll(self, upload_id: str, deadline: float) -> None:
        while upload_id in self.pending and (left := deadline - time.monotonic()) > 0:
            wait = max(1, min(30, int(left)))
            started = time.monotonic()
            try:
                answer = self.gw.status(upload_id, "final", wait)
            except Problem as problem:
                if problem.status == 404:
                    self._record(upload_id, gone(upload_id))
                else:
                    time.sleep(RECONNECT_S)  # 503 while Redis is away: try again
                continue
            except (httpx.HTTPError, GatewayUnreachable):
                time.sleep(RECONNECT_S)
                continue
            self._record(upload_id, answer)
            if time.monotonic() - started < 1 and upload_id in self.pending:
                time.sleep(1)  # a gateway that does not long-poll: poll each second
