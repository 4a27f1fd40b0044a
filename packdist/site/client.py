"""Moved to :mod:`packdist.protocol.site_api` (the agent's client of the site); the old name
stays importable."""

from __future__ import annotations

from packdist.protocol.site_api import SiteClient, site_urls

__all__ = ["SiteClient", "site_urls"]
