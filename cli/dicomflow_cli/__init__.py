"""dicomflow's command-line client: upload folders, follow, search and fetch, over HTTP only."""

from __future__ import annotations

__version__ = "0.1.0"
