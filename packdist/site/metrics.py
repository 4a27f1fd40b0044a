"""``GET /metrics``: the site in the Prometheus text exposition format (version 0.0.4).

Every figure is computed from the store when scraped, so it is the same whatever site process
answers, survives restarts, and never disagrees with ``job show``:

* ``packdist_instructions{state}``, ``packdist_jobs{state}`` — gauges, every state present;
* ``packdist_attempts_total``, ``packdist_bytes_sent_total`` — sums over every instruction;
* ``packdist_retries_scheduled_total`` — failed attempts that were scheduled again;
* ``packdist_events_total{kind}`` — the event timeline, counted by kind;
* ``packdist_transfer_seconds`` — histogram of successful attempts, claim to verified install;
* ``packdist_servers``, ``packdist_servers_online`` and per server ``packdist_server_up``,
  ``packdist_server_disk_free_bytes``, ``packdist_server_last_heartbeat_seconds``;
* ``packdist_client_source_requests_total{package}``, ``packdist_client_fetches_total{package}``
  and ``packdist_client_bytes_total{package,source}`` — what clients (``packdist fetch``)
  asked for, fetched, and took from each server (or the site).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from packdist.site.views import online as is_online
from packdist.site.views import online_after
from packdist.store.base import MetricsTotals, ServerRecord
from packdist.store.clients import SITE_SOURCE, ClientTotal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TRANSFER_BOUNDS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        if labels:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_num(value)}")
        else:
            self.lines.append(f"{name} {_num(value)}")


def render(
    totals: MetricsTotals,
    servers: list[ServerRecord],
    now: float,
    clients: Sequence[ClientTotal] = (),
) -> str:
    out = _Out()
    out.family("packdist_instructions", "gauge", "Instructions by state.")
    for state, n in totals.instructions.items():
        out.sample("packdist_instructions", n, state=state)
    out.family("packdist_jobs", "gauge", "Jobs by (derived) state.")
    for state, n in totals.jobs.items():
        out.sample("packdist_jobs", n, state=state)
    out.family("packdist_attempts_total", "counter", "Attempts made, over every instruction.")
    out.sample("packdist_attempts_total", totals.attempts)
    out.family(
        "packdist_bytes_sent_total",
        "counter",
        "Bytes sent to agents on the wire (chunk frames, compressed where it pays).",
    )
    out.sample("packdist_bytes_sent_total", totals.bytes_sent)
    out.family(
        "packdist_retries_scheduled_total", "counter", "Failed attempts scheduled to be retried."
    )
    out.sample("packdist_retries_scheduled_total", totals.events.get("failure", 0))
    out.family("packdist_events_total", "counter", "Timeline events by kind.")
    for kind in sorted(totals.events):
        out.sample("packdist_events_total", totals.events[kind], kind=kind)

    name = "packdist_transfer_seconds"
    out.family(name, "histogram", "Duration of successful attempts, claim to verified install.")
    for bound, count in zip(totals.transfer_bounds, totals.transfer_buckets, strict=True):
        out.sample(f"{name}_bucket", count, le=_num(float(bound)))
    out.sample(f"{name}_bucket", totals.transfer_count, le="+Inf")
    out.sample(f"{name}_sum", totals.transfer_sum)
    out.sample(f"{name}_count", totals.transfer_count)

    after = online_after(len(servers))
    online = {s.name for s in servers if is_online(s, now, after)}
    out.family("packdist_servers", "gauge", "Enrolled distribution servers.")
    out.sample("packdist_servers", len(servers))
    out.family("packdist_servers_online", "gauge", f"Servers heard from within {after:g}s.")
    out.sample("packdist_servers_online", len(online))
    out.family("packdist_server_up", "gauge", "1 if the server's agent is heartbeating.")
    for s in servers:
        out.sample("packdist_server_up", 1 if s.name in online else 0, server=s.name)
    out.family("packdist_server_disk_free_bytes", "gauge", "Free disk the agent last reported.")
    for s in servers:
        if s.disk_free is not None:
            out.sample("packdist_server_disk_free_bytes", s.disk_free, server=s.name)
    out.family(
        "packdist_server_last_heartbeat_seconds", "gauge", "Unix time of the last heartbeat."
    )
    for s in servers:
        if s.last_seen is not None:
            out.sample("packdist_server_last_heartbeat_seconds", s.last_seen, server=s.name)
    _clients(out, clients)
    return "\n".join(out.lines) + "\n"


def _clients(out: _Out, clients: Sequence[ClientTotal]) -> None:
    own = [c for c in clients if c.source == SITE_SOURCE]
    name = "packdist_client_source_requests_total"
    out.family(name, "counter", "Sources requests of clients (packdist fetch), by package.")
    for c in own:
        out.sample(name, c.requests, package=c.ref)
    name = "packdist_client_fetches_total"
    out.family(name, "counter", "Fetches clients reported complete, by package.")
    for c in own:
        out.sample(name, c.fetches, package=c.ref)
    name = "packdist_client_bytes_total"
    out.family(name, "counter", "Bytes clients fetched, by package and source.")
    for c in clients:
        if c.source != SITE_SOURCE:
            out.sample(name, c.bytes, package=c.ref, source=c.source)
