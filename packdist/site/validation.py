"""Validation of installed trees, driven by the site: ``packdist validate`` and the schedule.

The site asks each agent (``POST /v1/validate``, site credential) to re-hash its installed
trees against their manifests, then records each answer in the store
(:meth:`~packdist.store.base.Store.record_validation`): a damaged copy is marked ``corrupt``
in the status matrix with the paths named, an event is written and a repair job
(``{"repair": true}``) is queued, which the despooler carries out like any other job -- the
agent then fetches only the damaged chunks.

``packdist validate`` calls the agents itself with the site key from the site's home, so it
works whether or not ``site serve`` runs; a running site picks the repair jobs up within a
second. ``site serve`` also runs :func:`validate_servers` every ``validation.interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from packdist.core.signing import SigningKey
from packdist.errors import PackdistError
from packdist.protocol.agent_api import AgentClient
from packdist.service import Service
from packdist.store.base import ServerRecord, Store, describe_problems

log = logging.getLogger("packdist.validation")

#: runs one store call (the site's StoreRunner, or a direct call in the CLI)
StoreCall = Callable[[Callable[[Store], Any]], Awaitable[Any]]


async def validate_servers(
    db: StoreCall,
    key: SigningKey,
    session: aiohttp.ClientSession,
    servers: list[ServerRecord],
    package_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Validate ``servers`` at once (each with its own timeout) and record the results.

    Returns one document per server: ``{"server", "error", "results": [{"package",
    "package_id", "ok", "problems", "corrupt", "repair_job"}]}``; ``error`` says why a
    server could not be validated (its results are then empty).
    """
    return list(
        await asyncio.gather(*(_validate_one(db, key, session, s, package_ids) for s in servers))
    )


async def _validate_one(
    db: StoreCall,
    key: SigningKey,
    session: aiohttp.ClientSession,
    server: ServerRecord,
    package_ids: list[str] | None,
) -> dict[str, Any]:
    client = AgentClient(server.name, server.url, key, session)
    try:
        answers = await client.validate(package_ids)
    except PackdistError as exc:
        return {"server": server.name, "error": exc.message, "results": []}
    results = []
    for a in answers:
        pid = str(a.get("package_id", ""))
        problems = [
            {"path": str(p.get("path", "?")), "problem": str(p.get("problem", "altered"))}
            for p in a.get("problems") or []
            if isinstance(p, dict)
        ]
        now = time.time()

        def record(
            s: Store, pid: str = pid, problems: list[dict[str, str]] = problems, now: float = now
        ) -> Any:
            return Service(s).record_validation(server.name, pid, problems, now)

        job = await db(record)
        if problems:
            log.warning(
                "%s corrupt on %s: %s", a.get("package"), server.name, describe_problems(problems)
            )
        results.append(
            {
                "package": a.get("package"),
                "package_id": pid,
                "ok": not problems,
                "problems": problems,
                "corrupt": describe_problems(problems) if problems else None,
                "repair_job": job,
            }
        )
    return {"server": server.name, "error": None, "results": results}


def corrupt_count(report: list[dict[str, Any]]) -> int:
    return sum(1 for s in report for r in s["results"] if not r["ok"])


async def validation_loop(
    db: StoreCall,
    key: SigningKey,
    session: aiohttp.ClientSession,
    interval: float,
    repairs_queued: Callable[[], None],
) -> None:
    """Validate every server every ``interval`` seconds until cancelled; errors are logged,
    never fatal. ``repairs_queued`` is called when a pass queued repair jobs."""
    while True:
        await asyncio.sleep(interval)
        try:
            # a child site's servers are validated by the child (its own schedule)
            servers = [s for s in await db(lambda s: s.list_servers()) if "/" not in s.name]
            report = await validate_servers(db, key, session, servers)
            bad = corrupt_count(report)
            unreachable = [s["server"] for s in report if s["error"]]
            log.info(
                "scheduled validation of %d server(s): %d corrupt cop%s%s",
                len(servers),
                bad,
                "y" if bad == 1 else "ies",
                f"; not validated: {', '.join(unreachable)}" if unreachable else "",
            )
            if any(r["repair_job"] for s in report for r in s["results"]):
                repairs_queued()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled validation failed; next one in %.0fs", interval)
