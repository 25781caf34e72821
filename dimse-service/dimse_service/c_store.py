"""C-STORE SCP (PS3.4 Annex B, Storage Service Class; PS3.7 9.1.1).

Thin, as STYLE.md §9 asks: the dataset's bytes as received (never decoded) with the file meta
pynetdicom builds for them are a PS3.10 file on the uploads volume, written and hashed as they
came (``dimse_service.incoming``), here fsynced and renamed to ``{upload id}.dcm``; then the
same intake as HTTP (``shared.intake``) creates the job and queues ``file.received`` in one
Redis transaction, on the service's event loop, before the success status goes back. A file
whose job could not be created is removed: nothing is kept that the pipeline does not know
about. A transaction that went unanswered is settled by the intake before anything is decided:
one that did run keeps its file and answers success (its job would otherwise fail on a file
that is gone); only when Redis cannot say is the file kept and 0xA701 answered, the job being
made when Redis answers (or by the sender's retry, which the pipeline recognises as a
duplicate).

Status codes (PS3.4 B.2.3): 0x0000 success (also for bytes already archived: the pipeline
settles it as a duplicate); 0xA700 out of resources, the uploads folder is full; 0xA701 out of
resources, the queue (Redis) is unreachable or did not answer within DIMSE_REDIS_TIMEOUT (half
of it for the transaction, half for settling it); 0xC000 cannot understand (the data set did
not come as a file: pynetdicom not set up by ``incoming.receive_into``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import structlog

from dimse_service.incoming import IncomingFile
from shared import intake
from shared.errors import QueueOutcomeUnknown, ServiceUnavailable, safe_error
from shared.events import Origin

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from dimse_service.server import Bridge

log = structlog.get_logger()

SUCCESS = 0x0000
OUT_OF_SPACE = 0xA700
QUEUE_DOWN = 0xA701
CANNOT_UNDERSTAND = 0xC000


def origin_of(event: Event) -> Origin:
    """Where a dataset came from: the protocol, the calling AE title and the peer's address."""
    requestor = event.assoc.requestor
    return Origin(
        source="dimse",
        calling_ae=str(requestor.ae_title).strip(),
        peer=f"{requestor.address}:{requestor.port}",
    )


def handle_store(event: Event, bridge: Bridge) -> int:
    """EVT_C_STORE, in pynetdicom's association thread: the data set came in as an
    ``IncomingFile`` (``dimse_service.incoming``), written and hashed as it arrived."""
    incoming = getattr(event.request, "_dataset_file", None)
    if not isinstance(incoming, IncomingFile):  # pynetdicom held it in memory: not our setup
        log.error("dimse.store.not_streamed")
        return CANNOT_UNDERSTAND
    upload_id = incoming.upload_id
    path = bridge.uploads / f"{upload_id}.dcm"
    try:
        sha256 = incoming.keep(path)
    except OSError as exc:
        incoming.discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning("dimse.store.out_of_space")
        else:
            log.error("dimse.store.write_failed", error=safe_error(exc))
        return OUT_OF_SPACE
    received = intake.received(upload_id, path, sha256, incoming.size, origin_of(event))
    # half the time for the transaction, half for settling it should its answer not come
    queued = intake.queue(bridge.store, [received], transaction_timeout=bridge.timeout / 2)
    try:
        bridge.call(queued, timeout=bridge.timeout + 1)
    except (QueueOutcomeUnknown, TimeoutError) as exc:
        log.warning("dimse.store.queue_unsure", upload_id=str(upload_id), error=type(exc).__name__)
        return QUEUE_DOWN  # the file stays: its job may exist
    except ServiceUnavailable as exc:
        path.unlink(missing_ok=True)
        log.warning("dimse.store.queue_unreachable", error=type(exc).__name__)
        return QUEUE_DOWN
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.info("dimse.store.received", upload_id=str(upload_id), size=incoming.size)
    return SUCCESS
