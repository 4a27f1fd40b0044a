"""Every use case of a site on one store: what the dashboard, the site API and the despooler
call (see the package's docstring)."""

from __future__ import annotations

from packdist.service.clients import ClientUseCases
from packdist.service.rollouts import RolloutUseCases


class Service(RolloutUseCases, ClientUseCases):
    """Every use case, on one store (cheap to make: it holds only the store)."""


__all__ = ["Service"]
