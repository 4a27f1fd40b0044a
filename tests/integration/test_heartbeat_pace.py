"""Heartbeats under load, with real processes: a real agent obeys a site that sheds its
heartbeats (503 with Retry-After) and comes back to normal heartbeats once the load drops;
a client that hangs up mid-request costs the site one log line, never a traceback."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import harness as h
from tests.integration.hostile import started_site

RETRY_AFTER = 3  # seconds the shedding proxy asks for


class SheddingProxy:
    """An HTTP/1.1 proxy in front of the site that, while ``busy``, answers every hello and
    heartbeat 503 with ``Retry-After`` as an overloaded site does; it notes when each
    heartbeat came and what it was answered."""

    def __init__(self, site_url: str) -> None:
        self.busy = False
        self.seen: list[tuple[float, int]] = []  # (monotonic time, status answered)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.busy and self.path.startswith("/v1/agent/"):
                    status, data, extra = 503, b'{"error": "site busy"}', RETRY_AFTER
                else:
                    req = urllib.request.Request(
                        f"{site_url}{self.path}", data=body, headers=dict(self.headers)
                    )
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:
                            status, data = resp.status, resp.read()
                    except urllib.error.HTTPError as exc:
                        status, data = exc.code, exc.read()
                    extra = None
                if self.path == "/v1/agent/heartbeat":
                    proxy.seen.append((time.monotonic(), status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if extra is not None:
                    self.send_header("Retry-After", str(extra))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answered(self, status: int, since: float) -> list[float]:
        return [t for t, s in self.seen if s == status and t >= since]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_shed_agent_waits_out_retry_after_then_comes_back_to_normal_heartbeats(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path, tls=False)  # the proxy reads the HTTP it relays
    site.start()
    proxy = SheddingProxy(site.url)
    agents = h.add_agents(site, tmp_path, ["dp1"], site_url=proxy.url)
    agent = agents["dp1"]
    try:
        agent.start()
        h.wait_until(lambda: len(proxy.answered(200, 0)) >= 2, 30, message="heartbeats")
        proxy.busy = True
        busy_from = time.monotonic()
        # Two sheds, then the load drops: the agent is waiting out the second shed's
        # (doubled) wait by then, at least 2 * RETRY_AFTER, and its next heartbeat comes when
        # that wait ends, whatever it is answered. So the waits after the two sheds are seen
        # without a third shed, and its wait of 4 * RETRY_AFTER is not sat through.
        h.wait_until(lambda: len(proxy.answered(503, busy_from)) >= 2, 60, message="2 sheds")
        proxy.busy = False
        calm_from = time.monotonic()
        # back to the site's own interval (2 s for one server): three heartbeats taken
        h.wait_until(lambda: len(proxy.answered(200, calm_from)) >= 3, 60, message="recovery")
        beats = [t for t, _ in proxy.seen if t >= busy_from]
        shed = proxy.answered(503, busy_from)
        assert beats[:2] == shed[:2], proxy.seen
        gaps = [b - a for a, b in itertools.pairwise(beats[:3])]  # after shed 1, after shed 2
        # Retry-After is a floor (the agent adds jitter, and doubles it while sheds go on)
        assert all(g >= RETRY_AFTER - 0.2 for g in gaps), gaps
        assert gaps[-1] > gaps[0], f"no back-off while the site stays busy: {gaps}"
        ok = proxy.answered(200, calm_from)
        assert ok[2] - ok[1] < RETRY_AFTER * 2, "still backing off once the load dropped"
        log = agent.log_tail(400)
        assert log.count("heartbeats back off") == 1, log  # one line per busy spell
        assert "Traceback" not in log
    finally:
        agent.close()
        proxy.close()
        site.close()


def _hang_up_mid_body(url: str, token: str) -> None:
    """A heartbeat whose body stops halfway, then a reset: an agent killed mid-request."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /v1/agent/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 4000\r\n\r\n".encode()
            + b'{"boot_id": "b", "installed": ['
        )
        time.sleep(0.3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


def test_an_agent_killed_mid_request_leaves_one_line_and_no_traceback_in_the_site_log(
    tmp_path: Path,
) -> None:
    site, token = started_site(tmp_path)
    try:
        for _ in range(5):
            _hang_up_mid_body(site.url, token)
        time.sleep(1.0)
        assert h.http_get(f"{site.url}/healthz")[0] == 200
        log = site.log_tail(400)
        assert "Traceback" not in log and "Error handling request" not in log, log
        assert "went away" in log, log
    finally:
        site.stop()


class CutLink:
    """A TCP forwarder from the site to an agent that can be cut (every connection reset at
    once, as when a cable is out) and mended."""

    def __init__(self, target_port: int) -> None:
        self.cut = False
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # each pump closes the socket it reads: with its twin's, both ends are closed
            # here, not by the collector in whichever later test happens to run then
            src.close()

    def close(self) -> None:
        self.sock.close()


def test_a_server_reached_again_gets_its_work_at_its_next_heartbeat_not_its_next_backoff(
    tmp_path: Path,
) -> None:
    """The site cannot reach dp1 for a moment (its heartbeats go on): the failed install is
    retried at dp1's next heartbeat, not after the 30 s backoff."""
    site = h.make_site(tmp_path, tls=False)  # CutLink relays plain HTTP
    site.env["PACKDIST_RETRY_INITIAL"] = "30s"
    site.env["PACKDIST_RETRY_JITTER"] = "0"
    site.start()
    agent = h.Agent(
        "dp1", tmp_path / "agent-dp1", tmp_path / "logs", site_url=site.url, tls=site.tls
    )
    link = CutLink(agent.port)
    agent.token = site.add_server("dp1", link.url)
    try:
        agent.start()
        h.wait_until(lambda: site.server_seen("dp1"), 30, message="dp1 heard from")
        site.create_package(h.make_tree(tmp_path / "src"), "app", "1")
        link.cut = True
        job = site.distribute("app@1", ["dp1"])
        h.wait_until(
            lambda: h.instruction(site.job(job), "dp1")["state"] == "retrying",
            30,
            message="the install failing while dp1 is cut off",
        )
        link.cut = False
        mended = time.monotonic()
        h.wait_until(
            lambda: h.instruction(site.job(job), "dp1")["state"] == "installed",
            60,
            message="the install after dp1 is reachable again",
        )
        took = time.monotonic() - mended
        assert took < 20, f"installed {took:.0f}s after the link came back: the 30s backoff"
        assert "Traceback" not in site.log_tail(400)
    finally:
        agent.close()
        link.close()
        site.close()
