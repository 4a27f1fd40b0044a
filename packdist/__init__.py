"""packdist: content-addressed package distribution from a site to distribution servers."""

from __future__ import annotations

__version__ = "0.1.0"
