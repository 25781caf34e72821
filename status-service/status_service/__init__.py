"""Keeps every job's status: follows all event streams, writes job hashes, announces changes."""
