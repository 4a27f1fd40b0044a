"""What a child site and its parent say to each other, typed once (the child's client of
its parent is :mod:`packdist.protocol.parent_api`; this module loads no HTTP client, so the
store's commands that read reports start without one).

A child site is a whole site of its own (its store, despooler, content library and
servers); it reports to its parent every few seconds (``POST /v1/child/report``, with the
token ``site add-child`` printed at the parent): its own servers and those its own children
reported, each named as the child names it (``dp1``, ``GRANDCHILD/dp1``). The parent names
them ``CHILD/…`` in turn, so a grandchild's servers reach the top as ``CHILD/GRANDCHILD/dp1``.

Each message checks what it reads, as :mod:`packdist.protocol.messages` does: a malformed
report is a one-line 400 naming the problem, never a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from packdist.core.names import MAX_DEPTH, check_reported_name
from packdist.errors import UserError
from packdist.protocol.messages import MAX_INSTALLED

REPORT_PATH = "/v1/child/report"
MAX_REPORTED = 100_000  # servers one report may list (a child's own and its descendants')
MAX_AUTHORITY_PEM = 16 * 1024  # characters of a site authority's PEM (it is under 1 KiB)
MAX_CHAIN = MAX_DEPTH  # public keys of the sites above one site


@dataclass(frozen=True)
class ReportedServer:
    """One server in a child's report."""

    name: str  # as the child names it
    online: bool  # as the site that enrolled it judges (it knows its fleet's heartbeat pace)
    seen_ago: float | None  # seconds since that site last heard from it; None: never
    disk_free: int | None
    installed: tuple[str, ...]  # package ids it holds, verified

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "online": self.online,
            "seen_ago": self.seen_ago,
            "disk_free": self.disk_free,
            "installed": list(self.installed),
        }

    @classmethod
    def from_json(cls, body: Any) -> ReportedServer:
        if not isinstance(body, dict):
            raise UserError("each reported server must be a JSON object")
        name = check_reported_name(body.get("name"))
        online = body.get("online")
        if not isinstance(online, bool):
            raise UserError(f"reported server {name}: online must be true or false")
        ago = body.get("seen_ago")
        if ago is not None and (
            isinstance(ago, bool) or not isinstance(ago, int | float) or not math.isfinite(ago)
        ):
            raise UserError(f"reported server {name}: seen_ago must be a number or null")
        disk = body.get("disk_free")
        if disk is not None and (isinstance(disk, bool) or not isinstance(disk, int) or disk < 0):
            raise UserError(f"reported server {name}: disk_free must be a non-negative integer")
        installed = body.get("installed", [])
        if not isinstance(installed, list) or not all(
            isinstance(x, str) and len(x) == 64 for x in installed
        ):
            raise UserError(f"reported server {name}: installed must be a list of package ids")
        seen = None if ago is None else max(0.0, float(ago))
        return cls(name, online, seen, disk, tuple(installed[:MAX_INSTALLED]))


@dataclass(frozen=True)
class ChildReport:
    """A child site to its parent, every few seconds."""

    site: str  # the child's own name (``site init --name``)
    servers: tuple[ReportedServer, ...]
    #: the child's certificate authority (PEM): the parent dials the child with it (the
    #: report comes over the TLS the token pinned, with the child's token)
    ca: str | None = None
    #: ``(package id, server)`` of the installs the parent sent that are not done yet: the
    #: parent answers those it no longer wants (cancelled, superseded) in ``unwanted``
    relayed: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "servers": [s.to_json() for s in self.servers],
            "ca": self.ca,
            "relayed": [list(r) for r in self.relayed],
        }

    @classmethod
    def from_json(cls, body: Any) -> ChildReport:
        if not isinstance(body, dict):
            raise UserError("child report must be a JSON object")
        site = body.get("site")
        if not isinstance(site, str) or not site or len(site) > 200:
            raise UserError("child report site must be the child's name")
        servers = body.get("servers")  # required: a report that lost it must not empty a fleet
        if not isinstance(servers, list):
            raise UserError("child report servers must be a list")
        if len(servers) > MAX_REPORTED:
            raise UserError(f"a child report lists at most {MAX_REPORTED} servers")
        parsed = tuple(ReportedServer.from_json(s) for s in servers)
        if len({s.name for s in parsed}) != len(parsed):
            raise UserError("child report names a server twice")
        ca = body.get("ca")
        if ca is not None and (not isinstance(ca, str) or len(ca) > MAX_AUTHORITY_PEM):
            raise UserError("child report ca must be its authority's certificate (PEM)")
        return cls(site, parsed, ca, _pairs(body.get("relayed", []), "child report relayed"))


@dataclass(frozen=True)
class ReportAnswer:
    """The parent's answer: who it is, how long to wait before the next report, the name it
    gives the child, and the keys the child must trust: the parent's own (its manifests and
    its credentials) and those of the sites above it (their manifests only)."""

    parent: str
    interval: float
    child: str = ""  # the child's name at the parent (``site add-child NAME``)
    key: str = ""  # the parent's public key (hex)
    chain: tuple[str, ...] = ()  # the public keys of the sites above the parent (hex)
    #: of the report's ``relayed``, those the parent no longer wants: the child stops them
    unwanted: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "interval": self.interval,
            "child": self.child,
            "key": self.key,
            "chain": list(self.chain),
            "unwanted": [list(u) for u in self.unwanted],
        }

    @classmethod
    def from_json(cls, body: Any) -> ReportAnswer:
        if not isinstance(body, dict):
            raise UserError("the parent's answer must be a JSON object")
        parent, interval = body.get("parent"), body.get("interval")
        if not isinstance(parent, str):
            raise UserError("the parent's answer must name the parent")
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise UserError("the parent's answer must carry an interval")
        child, key, chain = body.get("child", ""), body.get("key", ""), body.get("chain", [])
        if not isinstance(child, str) or not isinstance(key, str):
            raise UserError("the parent's answer must name the child and the parent's key")
        if key and not _is_key(key):
            raise UserError("the parent's key must be 64 hex digits")
        if not isinstance(chain, list) or len(chain) > MAX_CHAIN or not all(map(_is_key, chain)):
            raise UserError(f"the parent's chain must be at most {MAX_CHAIN} keys (hex)")
        unwanted = _pairs(body.get("unwanted", []), "the parent's unwanted")
        return cls(parent, min(max(float(interval), 1.0), 60.0), child, key, tuple(chain), unwanted)


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    """``[[package id, server], ...]``, checked."""
    if not isinstance(value, list) or len(value) > MAX_REPORTED:
        raise UserError(f"{what} must be a list of [package id, server]")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or len(item[0]) != 64
        ):
            raise UserError(f"{what} must be a list of [package id, server]")
        out.append((item[0], check_reported_name(item[1])))
    return tuple(out)


def _is_key(text: Any) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)
