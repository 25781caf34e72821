"""The gateway's own HTTP API, one module per resource; the seeds' forms are in ``compat``."""
