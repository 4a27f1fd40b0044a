"""Many simulated agents in one process, for ``bench scale``: ``python -m bench.simagents CONFIG``.

Each simulated server has its own name, enrollment token and boot id, and speaks the real
agent protocol over real HTTP on 127.0.0.1: it enrolls (``/v1/agent/hello``, learning and
pinning the site key), heartbeats at the interval the site names in its answers, backs off
when shed (503 with Retry-After) or failing, exactly as the agent does (the same
:class:`packdist.protocol.site_api.HeartbeatPace`), with the timeouts of
``packdist.http.HEARTBEAT`` (a fresh TCP connection each time, or one kept: ``keepalive``),
and answers the site's calls: install (``InstallStatus`` JSON), the status long poll, cancel,
remove, validate, each checked against the site's credential (``check_site_assertion``).
Installs fetch nothing: they end after ``install_delay`` seconds, and ``fail_pct`` percent
of attempts end ``failed`` with a transient error (so the site retries them).

Cheap by design, so that the site and not this process is what gets measured: heartbeats go
through a minimal HTTP/1.1 client (:mod:`bench.simhttp`: no client session, no per-call
objects beyond a future), every server is a path prefix (``/s/NAME``) of ONE aiohttp server,
and a manifest's signature is checked once per distinct manifest. ``/_sim/stats`` and
``/_sim/window`` (no credential, loopback only) let the benchmark read what the agents saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.simhttp import Connection, post, request_bytes
from packdist.agent.server import ENROLL_RETRY, MAX_LONG_POLL
from packdist.auth import bearer, check_site_assertion
from packdist.core.manifest import SignedManifest
from packdist.core.signing import VerifyKey
from packdist.errors import AuthError, PackdistError
from packdist.http import HEARTBEAT
from packdist.protocol.messages import Heartbeat, InstallRequest, InstallStatus, RemoveRequest
from packdist.protocol.site_api import HeartbeatPace

ENROLL_CONCURRENCY = 64  # hellos in flight at start-up
LAG_TICK = 0.1  # seconds between two looks at the event loop's lateness


@dataclass
class Install:
    package_id: str
    ref: str
    total: int
    finish_at: float
    fail: bool
    state: str = "installing"

    def status(self) -> dict[str, Any]:
        if self.state == "installing" and time.monotonic() >= self.finish_at:
            self.state = "failed" if self.fail else "installed"
        failed = self.state == "failed"
        return InstallStatus(
            package_id=self.package_id,
            state=self.state,
            package=self.ref,
            error="simulated transient failure (bench scale)" if failed else None,
            error_kind="transient" if failed else None,
            bytes_done=self.total if self.state == "installed" else 0,
            bytes_total=self.total,
            phase="finish" if self.state != "installing" else "fetch",
            progress=1 if self.state != "installing" else 0,
        ).to_json()


@dataclass
class SimAgent:
    name: str
    token: str
    sites: list[tuple[str, int]]  # workers, in the order this agent tries them
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    installed: set[str] = field(default_factory=set)
    installs: dict[str, Install] = field(default_factory=dict)
    beat: bytes = b""
    keepalive: bool = False  # one connection kept open to the site, instead of one per call
    conn: Connection | None = None
    pace: HeartbeatPace = field(default_factory=HeartbeatPace)
    retry_after: float | None = None  # of the last answer
    last: str = "not yet"  # what its last heartbeat met: "ok", "shed", a status, an error

    def request(self, path: str, body: bytes) -> bytes:
        host, port = self.sites[0]
        return request_bytes(f"{host}:{port}", path, self.token, body, not self.keepalive)

    async def post(self, request: bytes, timeout: float) -> tuple[int, bytes]:
        answer, self.conn, self.retry_after = await post(self.sites[0], request, timeout, self.conn)
        return answer

    def renew_beat(self) -> None:
        body = Heartbeat(self.boot_id, 50 * 2**30, sorted(self.installed)).to_json()
        self.beat = self.request("/v1/agent/heartbeat", json.dumps(body).encode())

    def next_site(self) -> None:  # like SiteClient: a worker that does not answer is skipped
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if len(self.sites) > 1:
            self.sites.append(self.sites.pop(0))
            self.renew_beat()


class Window:
    """What the agents saw since the benchmark last opened a window."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.lags: list[float] = []
        self.intervals: list[float] = []  # waits before the next heartbeat, as paced
        self.counts: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def report(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.started, 1e-9)
        lat = sorted(self.latencies)
        lags = sorted(self.lags)
        return {
            "seconds": wall,
            "heartbeats_ok": len(lat),
            "heartbeats_failed": sum(self.failures.values()),
            "heartbeat_failures": dict(self.failures),
            "heartbeat_p50_ms": _pct(lat, 50) * 1000,
            "heartbeat_p99_ms": _pct(lat, 99) * 1000,
            "heartbeat_max_ms": (lat[-1] if lat else 0.0) * 1000,
            "loop_lag_p99_ms": _pct(lags, 99) * 1000,
            "heartbeat_interval_p50_s": _pct(sorted(self.intervals), 50),
            "heartbeat_interval_max_s": max(self.intervals, default=0.0),
            "cpu_pct": 100 * (time.process_time() - self.cpu_started) / wall,
            **self.counts,
        }


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


class Fleet:
    def __init__(self, config: dict[str, Any]) -> None:
        sites = [
            (u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in config["sites"]
        ]
        self.agents: dict[str, SimAgent] = {}
        for i, (name, token) in enumerate(config["agents"]):
            order = sites[i % len(sites) :] + sites[: i % len(sites)]  # spread over workers
            self.agents[name] = SimAgent(name, token, order, keepalive=config["keepalive"])
        self.delay = float(config["install_delay"])
        self.fail_pct = float(config["fail_pct"])
        self.rng = random.Random(config.get("seed", 1))
        self.site_key: VerifyKey | None = None
        self.manifests: dict[bytes, tuple[str, str, int]] = {}  # signature -> id, ref, size
        self.enrolled = 0
        self.window = Window()
        self.errors: dict[str, int] = {}  # since start: what went wrong, in words

    def error(self, words: str) -> None:
        self.errors[words] = self.errors.get(words, 0) + 1

    # --- the agent's side of the site ---------------------------------------------------

    async def enroll(self, agent: SimAgent, gate: asyncio.Semaphore, until: float) -> bool:
        while time.monotonic() < until:
            wait = ENROLL_RETRY
            async with gate:
                try:
                    hello = agent.request("/v1/agent/hello", b"")
                    status, body = await agent.post(hello, HEARTBEAT.total or 4.0)
                    if status == 200:
                        answer = json.loads(body)
                        key = VerifyKey.from_hex(answer["site_public_key"])
                        if self.site_key is not None and key.hex != self.site_key.hex:
                            self.error("the site's key changed between two hellos")
                            return False
                        self.site_key = key
                        if answer["server"] != agent.name:
                            self.error("hello named another server")
                        self.enrolled += 1
                        agent.pace.answered(answer)
                        agent.renew_beat()
                        return True
                    if status == 503 and agent.retry_after is not None:
                        self.window.count("hellos_shed")
                        wait = agent.pace.shed(agent.retry_after)
                    else:
                        self.error(f"hello answered {status}")
                except (OSError, TimeoutError, ValueError, KeyError) as exc:
                    self.error(f"hello: {type(exc).__name__}")
                    agent.next_site()
            await asyncio.sleep(wait)
        return False

    async def live(self, agent: SimAgent, gate: asyncio.Semaphore, until: float) -> None:
        if not await self.enroll(agent, gate, until):
            return
        pace = agent.pace
        await asyncio.sleep(self.rng.random() * pace.interval)  # a fleet's phases spread
        timeout = HEARTBEAT.total or 4.0
        while time.monotonic() < until:
            started = time.monotonic()
            window = self.window
            try:
                status, body = await agent.post(agent.beat, timeout)
                agent.last = "ok" if status == 200 else "shed" if status == 503 else str(status)
                if status == 200:
                    window.latencies.append(time.monotonic() - started)
                    wait = pace.answered(json.loads(body))
                elif status == 503 and agent.retry_after is not None:  # shed: same worker
                    window.count("heartbeats_shed")
                    wait = pace.shed(agent.retry_after)
                else:
                    window.failures[str(status)] = window.failures.get(str(status), 0) + 1
                    wait = pace.failed()
                    if status >= 500:
                        agent.next_site()
            except TimeoutError:
                agent.last = "timeout"
                window.failures["timeout"] = window.failures.get("timeout", 0) + 1
                wait = pace.failed()
                agent.next_site()
            except (OSError, ValueError) as exc:
                what = agent.last = type(exc).__name__
                window.failures[what] = window.failures.get(what, 0) + 1
                wait = pace.failed()
                agent.next_site()
            window.intervals.append(wait)
            await asyncio.sleep(wait)  # after the answer, as the agent does

    async def watch_lag(self, until: float) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            self.window.lags.append(max(0.0, time.monotonic() - started - LAG_TICK))

    # --- the site's side of the agents ---------------------------------------------------

    def _agent(self, request: web.Request) -> SimAgent:
        agent = self.agents.get(request.match_info["name"])
        if agent is None:
            raise web.HTTPNotFound(text='{"error": "no such simulated server"}')
        try:
            if self.site_key is None:
                raise AuthError("not enrolled")
            check_site_assertion(
                bearer(request.headers.get("Authorization")),
                self.site_key,
                agent.name,
                request.method,
                request.rel_url.raw_path,
            )
        except AuthError as exc:
            self.window.count("auth_refused")
            self.error(f"site credential refused: {exc.message}")
            raise web.HTTPUnauthorized(text=json.dumps({"error": exc.message})) from None
        return agent

    def _manifest(self, asked: InstallRequest) -> tuple[str, str, int]:
        known = self.manifests.get(asked.signature)
        if known is None:
            assert self.site_key is not None
            m = SignedManifest.verify(asked.manifest, asked.signature, self.site_key).manifest
            known = self.manifests[asked.signature] = (m.id.hex, m.ref, m.total_size)
        return known

    async def install(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        try:
            pid, ref, total = self._manifest(InstallRequest.from_json(await request.json()))
        except (PackdistError, ValueError) as exc:
            self.error(f"install refused: {exc}")
            return web.json_response({"error": str(exc)}, status=400)
        self.window.count("install_calls")
        current = agent.installs.get(pid)
        if current is None or current.status()["state"] in ("failed", "cancelled"):
            fail = self.rng.random() * 100 < self.fail_pct
            self.window.count("installs_failing" if fail else "installs_started")
            current = Install(pid, ref, total, time.monotonic() + self.delay, fail)
            agent.installs[pid] = current
        return self._answer(agent, current, 202)

    def _answer(self, agent: SimAgent, inst: Install, status: int = 200) -> web.Response:
        doc = inst.status()
        if doc["state"] == "installed" and inst.package_id not in agent.installed:
            agent.installed.add(inst.package_id)  # the next heartbeat lists it
            agent.renew_beat()
        return web.json_response(doc, status=status)

    async def status(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        inst = agent.installs.get(request.match_info["pid"])
        if inst is None:
            return web.json_response({"error": "no such install on this agent"}, status=404)
        self.window.count("status_calls")
        try:
            wait = min(float(request.query.get("wait", "0")), MAX_LONG_POLL)
        except ValueError:
            wait = 0.0
        left = inst.finish_at - time.monotonic()
        if inst.state == "installing" and wait > 0 and left > 0:
            await asyncio.sleep(min(wait, left))
        return self._answer(agent, inst)

    async def cancel(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        inst = agent.installs.get(request.match_info["pid"])
        if inst is None:
            return web.json_response({"error": "no such install on this agent"}, status=404)
        if inst.status()["state"] == "installing":
            inst.state = "cancelled"
        return self._answer(agent, inst)

    async def remove(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        asked = RemoveRequest.from_json(await request.json())
        was = "installed" if asked.package_id in agent.installed else "absent"
        agent.installed.discard(asked.package_id)
        agent.installs.pop(asked.package_id, None)
        agent.renew_beat()
        return web.json_response(
            {
                "package_id": asked.package_id,
                "package": asked.package,
                "state": "removed",
                "was": was,
            }
        )

    async def validate(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        results = [{"package_id": p, "ok": True} for p in sorted(agent.installed)]
        return web.json_response({"server": agent.name, "results": results})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "servers": len(self.agents),
                "enrolled": self.enrolled,
                "errors": self.errors,
                # agents whose last heartbeat was answered (not shed, not failed)
                "agents_normal": sum(1 for a in self.agents.values() if a.last == "ok"),
                "agents_by_last": dict(Counter(a.last for a in self.agents.values())),
            }
            | self.window.report()
        )

    async def new_window(self, request: web.Request) -> web.Response:
        report = self.window.report()
        self.window = Window()
        return web.json_response(report)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/_sim/stats", self.stats)
        app.router.add_post("/_sim/window", self.new_window)
        app.router.add_post("/s/{name}/v1/install", self.install)
        app.router.add_get("/s/{name}/v1/installs/{pid}", self.status)
        app.router.add_post("/s/{name}/v1/installs/{pid}/cancel", self.cancel)
        app.router.add_post("/s/{name}/v1/remove", self.remove)
        app.router.add_post("/s/{name}/v1/validate", self.validate)
        return app


async def run(config: dict[str, Any]) -> None:
    fleet = Fleet(config)
    until = time.monotonic() + float(config["max_seconds"])
    runner = web.AppRunner(fleet.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(config["port"]), backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
    tasks = [asyncio.create_task(fleet.live(a, gate, until)) for a in fleet.agents.values()]
    tasks.append(asyncio.create_task(fleet.watch_lag(until)))
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, until - time.monotonic()))
    except TimeoutError:
        print("simagents: max_seconds reached; stopping", file=sys.stderr)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await runner.cleanup()


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop  # used when installed, never required
    except ImportError:
        asyncio.run(run(config))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
