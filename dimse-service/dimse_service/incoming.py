"""A C-STORE's data set as it arrives: written to the uploads folder and hashed, fragment by
fragment, never held whole in memory.

pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` writes each received data set, with its file meta,
to the file that ``NamedTemporaryFile`` gives it (in ``pynetdicom.dimse_messages``), as each
P-DATA arrives, and hands the handler that file. ``receive_into`` makes that an
``IncomingFile``: ``{upload id}.part`` in the uploads folder (the name the gateway's uploads
take while they arrive, so ``api_gateway.recovery`` removes one a crash left behind), its
SHA-256 computed as the bytes come. The C-STORE handler then only fsyncs it and renames it to
``{upload id}.dcm``.

A full disk (or any failed write) does not abort the association: the rest of the data set is
read and dropped, the partial file removed, and the handler answers the C-STORE with its
failure status (``failure``). An association that ends in the middle of a data set leaves
nothing either (``discard``, from the listener).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any
from uuid import uuid4

import pynetdicom.dimse_messages
from pynetdicom import _config


class IncomingFile:
    """The file-like object pynetdicom writes one data set to (``write``, ``file.flush``,
    ``name``, ``close``)."""

    def __init__(self, folder: Path) -> None:
        self.upload_id = uuid4()
        self.path = folder / f"{self.upload_id}.part"
        self.name = str(self.path)
        self.file = self  # pynetdicom flushes ``.file`` after each fragment
        self.size = 0
        self.failure: OSError | None = None
        self._sha256 = hashlib.sha256()
        try:
            self._out: Any = open(self.path, "wb")  # noqa: SIM115 - closed by close()/discard()
        except OSError as exc:
            self._out = None
            self.failure = exc

    def write(self, data: bytes) -> int:
        if self.failure is None:
            try:
                self._out.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._sha256.update(data)
                self.size += len(data)
        return len(data)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._out.flush()
            except OSError as exc:
                self._fail(exc)

    def keep(self, dest: Path) -> str:
        """Make the data set durable as ``dest`` (fsync, then rename); its SHA-256."""
        if self.failure is not None:
            raise self.failure
        self._out.flush()
        os.fsync(self._out.fileno())
        os.replace(self.path, dest)  # pynetdicom's removal of ``name`` after the handler: a no-op
        return self._sha256.hexdigest()

    def close(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except OSError as exc:  # a write still buffered could not be made
                self._fail(exc)

    def discard(self) -> None:
        """Close and remove it (an association ended before the data set did)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _fail(self, exc: OSError) -> None:
        """The rest is dropped: a data set that cannot be kept whole is not kept at all."""
        self.failure = exc
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):  # what it still held could not be written
                out.close()
        self.path.unlink(missing_ok=True)


def receive_into(folder: Path) -> None:
    """From now on, pynetdicom writes each C-STORE data set to an ``IncomingFile`` in
    ``folder`` as it arrives (process-wide, as pynetdicom's own setting is)."""

    def incoming_file(**_: object) -> IncomingFile:
        return IncomingFile(folder)

    _config.STORE_RECV_CHUNKED_DATASET = True
    pynetdicom.dimse_messages.NamedTemporaryFile = incoming_file  # type: ignore[assignment]


def discard_in_progress(assoc: Any) -> None:
    """The data set an association was receiving when it ended, if any, removed: only whole
    ones stay."""
    message = getattr(assoc.dimse, "message", None)
    incoming = getattr(message, "_data_set_file", None)
    if isinstance(incoming, IncomingFile):
        incoming.discard()
