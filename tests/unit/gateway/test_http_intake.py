"""What a failed intake leaves: the files of a request are removed when the queue refused
them, and kept when it could not say whether it took them (their jobs may exist)."""

from __future__ import annotations

import pytest
from api_gateway.http_intake import undone_on_failure

from shared.errors import QueueOutcomeUnknown, ServiceUnavailable


def test_files_are_removed_when_nothing_was_accepted() -> None:
    undone: list[bool] = []
    with pytest.raises(ServiceUnavailable), undone_on_failure(lambda: undone.append(True)):
        raise ServiceUnavailable("nothing was accepted")
    assert undone == [True]


def test_files_are_kept_when_the_queue_could_not_say() -> None:
    undone: list[bool] = []
    with pytest.raises(QueueOutcomeUnknown), undone_on_failure(lambda: undone.append(True)):
        raise QueueOutcomeUnknown("it may have been accepted")
    assert undone == []
