"""What the CLI prints: tables and JSON on standard output, progress and notes on standard error.

On a terminal, tables and progress bars are drawn with rich; otherwise tables are plain aligned
columns and progress is a line at most every second, so logs and pipes stay readable.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


class Output:
    """Where results and notes go, in the form the command line asked for."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)

    def note(self, text: str) -> None:
        """A line for the person at the terminal (standard error)."""
        print(text, file=sys.stderr, flush=True)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str))

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        if sys.stdout.isatty():
            table = Table(*columns, title=title or None, title_justify="left")
            for row in cells:
                table.add_row(*row)
            self.out.print(table)
            return
        if title:
            print(title)
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        for row in [list(columns), *cells]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())

    def progress(self) -> Reporter:
        return RichReporter(self.err) if sys.stderr.isatty() else PlainReporter()


class Reporter:
    """Progress of an upload (files, bytes) and then of the processing (files final)."""

    def upload_started(self, files: int, total_bytes: int) -> None: ...
    def sent(self, n: int) -> None: ...
    def file_sent(self) -> None: ...
    def upload_ended(self) -> None: ...
    def follow_started(self, total: int) -> None: ...
    def followed(self, final: int, counts: dict[str, int]) -> None: ...
    def follow_ended(self) -> None: ...


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class PlainReporter(Reporter):
    """A progress line at most once a second, and one at the end of each phase."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.lock = threading.Lock()
        self.files = self.done_files = self.total = self.done = 0
        self.started = self.last = 0.0

    def _say(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            print(text, file=sys.stderr, flush=True)

    def upload_started(self, files: int, total_bytes: int) -> None:
        self.files, self.total, self.started = files, total_bytes, time.monotonic()

    def sent(self, n: int) -> None:
        with self.lock:
            self.done += n

    def file_sent(self) -> None:
        with self.lock:
            self.done_files += 1
            self._say(self._upload_line(), force=self.done_files == self.files)

    def _upload_line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        return (
            f"uploading: {self.done_files}/{self.files} files, {mb(self.done)}/{mb(self.total)}"
            f", {mb(rate)}/s, ETA {eta:.0f}s"
        )

    def follow_started(self, total: int) -> None:
        self.follow_total = total
        self.last = 0.0

    def followed(self, final: int, counts: dict[str, int]) -> None:
        states = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        self._say(
            f"processing: {final}/{self.follow_total} final ({states})",
            force=final == self.follow_total,
        )


class RichReporter(Reporter):
    """Bars on the terminal: bytes with rate and ETA while uploading, then files final."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.upload: TaskID | None = None
        self.follow: TaskID | None = None
        self.files = self.done_files = 0
        self.lock = threading.Lock()

    def upload_started(self, files: int, total_bytes: int) -> None:
        self.files = files
        self.bar.start()
        self.upload = self.bar.add_task("uploading", total=total_bytes, files=f"0/{files} files")

    def sent(self, n: int) -> None:
        if self.upload is not None:
            self.bar.advance(self.upload, n)

    def file_sent(self) -> None:
        with self.lock:
            self.done_files += 1
            if self.upload is not None:
                self.bar.update(self.upload, files=f"{self.done_files}/{self.files} files")

    def upload_ended(self) -> None:
        self.bar.stop()

    def follow_started(self, total: int) -> None:
        self.follow_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} final"),
            TextColumn("{task.fields[states]}"),
            console=self.bar.console,
        )
        self.follow_bar.start()
        self.follow = self.follow_bar.add_task("processing", total=total, states="")

    def followed(self, final: int, counts: dict[str, int]) -> None:
        if self.follow is not None:
            states = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            self.follow_bar.update(self.follow, completed=final, states=states)

    def follow_ended(self) -> None:
        if self.follow is not None:
            self.follow_bar.stop()
