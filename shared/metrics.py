"""Every Prometheus metric dicomflow exports, in one place. Labels never carry patient data."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "dicomflow_deliveries_total",
    "Stream entries handled, by consumer group and outcome (done, failed, dead-lettered).",
    ["group", "outcome"],
)
HANDLE_SECONDS = Histogram(
    "dicomflow_handle_seconds",
    "Time spent handling one stream entry, by consumer group.",
    ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADS = Counter(
    "dicomflow_uploads_total",
    "Files offered to the gateway, by outcome (accepted, too-large, aborted, ...).",
    ["outcome"],
)
HTTP_CUT_SHORT = Counter(
    "dicomflow_http_cut_short_total",
    "Connections and requests the HTTP limits ended, by reason (header-timeout, "
    "header-fields-too-large, body-timeout, idle, unread-body).",
    ["reason"],
)
UPLOAD_BYTES = Counter("dicomflow_upload_bytes_total", "Bytes of accepted uploads.")
OUTCOMES = Counter(
    "dicomflow_outcomes_total",
    "Stage outcomes, by stage and result (validated, rejected, described, archived, ...).",
    ["stage", "result"],
)
