"""Moved to :mod:`packdist.protocol.agent_api` (the site's client of an agent); the old name
stays importable."""

from __future__ import annotations

from packdist.protocol.agent_api import VALIDATE, AgentClient

__all__ = ["VALIDATE", "AgentClient"]
