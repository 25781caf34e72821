"""Descriptor service: archive each validated instance with its metadata and a preview."""
