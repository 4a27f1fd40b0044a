"""``/metrics`` scraped from a real site after a real job in which one server failed before it
succeeded: every figure equals what ``job show`` and ``events`` say happened."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import harness as h

MB = 1024 * 1024
Make = Callable[..., h.Cluster]

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    """Samples of a Prometheus text exposition, checked line by line: each family has HELP
    and TYPE before its samples, and every sample line is well formed."""
    samples: Samples = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            typed[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed and family in helped, f"{name} has no TYPE/HELP"
        labels = frozenset(_LABEL.findall(m["labels"] or ""))
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(m["value"].replace("+Inf", "inf"))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tree(tmp_path_factory.mktemp("metrics") / "src", {"a.bin": 3 * MB}, seed=3)


def test_metrics_match_a_job_with_one_failure_then_success(cluster: Make, tree: Path) -> None:
    c = cluster("dp1", "dp2")
    site, dp2 = c.site, c.agents["dp2"]
    dp2.stop()
    site.create_package(tree, "app", "1.0")
    job_id = site.distribute("app@1.0", ["dp1", "dp2"])
    h.wait_until(
        lambda: h.instruction(site.job(job_id), "dp2")["attempts"] >= 2,
        20,
        message=lambda: f"dp2 to fail twice: {h.describe_job(site.job(job_id))}",
    )
    failed_before = h.instruction(site.job(job_id), "dp2")
    assert "connection refused" in failed_before["last_error"], failed_before

    # While dp2 is down: scraped without a credential, refused; with it, dp2 is not up
    # (once its last heartbeat, from before it stopped, is more than 10 s old).
    status, _ = h.http_get(f"{site.url}/metrics")
    assert status == 401

    def scrape() -> Samples:
        status, body = site.operator_get("/metrics")
        assert status == 200, body
        return parse_exposition(body.decode())

    def dp2_down() -> Samples | None:  # (and dp1 up: its agent may still be enrolling)
        m = scrape()
        down = value(m, "packdist_server_up", server="dp2") == 0
        return m if down and value(m, "packdist_server_up", server="dp1") == 1 else None

    mid = h.wait_until(dp2_down, 15, message="dp2 reported down, dp1 up")
    assert value(mid, "packdist_servers_online") == 1
    assert value(mid, "packdist_jobs", state="active") == 1
    assert value(mid, "packdist_retries_scheduled_total") >= 2

    dp2.start()
    assert site.wait_job(job_id, 30) == 0, h.describe_job(site.job(job_id))
    h.wait_until(lambda: all(s["online"] for s in site.json("server", "list")["servers"]), 10)

    doc = site.job(job_id)
    events = site.json("events", "--job", job_id, "--limit", "0")
    m = scrape()

    instructions = doc["instructions"]
    assert value(m, "packdist_instructions", state="installed") == 2
    for state in ("pending", "sending", "retrying", "failed", "cancelled"):
        assert value(m, "packdist_instructions", state=state) == 0, state
    assert value(m, "packdist_jobs", state="succeeded") == 1
    assert value(m, "packdist_jobs", state="active") == 0
    attempts = sum(i["attempts"] for i in instructions)
    assert value(m, "packdist_attempts_total") == attempts
    assert attempts >= 3  # dp1 once at least, dp2 twice at least
    assert value(m, "packdist_bytes_sent_total") == sum(i["bytes_sent"] for i in instructions)
    # bytes on the wire: random content goes raw, plus 41 bytes of framing per chunk
    assert all(0 < i["bytes_sent"] <= i["bytes_total"] * 1.01 for i in instructions), doc
    failures = [e for e in events if e["kind"] == "failure"]
    assert value(m, "packdist_retries_scheduled_total") == len(failures)
    assert len(failures) == attempts - 2  # every attempt but the two that installed
    assert value(m, "packdist_events_total", kind="installed") == 2
    assert value(m, "packdist_events_total", kind="attempt") == attempts
    assert value(m, "packdist_transfer_seconds_count") == 2
    assert value(m, "packdist_transfer_seconds_bucket", le="+Inf") == 2
    assert 0 < value(m, "packdist_transfer_seconds_sum") < 30
    assert value(m, "packdist_servers") == 2
    assert value(m, "packdist_servers_online") == 2
    assert value(m, "packdist_server_up", server="dp2") == 1
    assert value(m, "packdist_server_disk_free_bytes", server="dp2") > 0
    # Counters only grow: nothing went down between the two scrapes.
    for name in ("packdist_attempts_total", "packdist_retries_scheduled_total"):
        assert value(m, name) >= value(mid, name)
