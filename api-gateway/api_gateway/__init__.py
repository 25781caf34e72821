"""The HTTP entry point: streams uploads to disk, queues them, answers status queries."""
