"""A malicious peer: a server the site lists as holding the package, that answers chunk
requests with wrong bytes, oversized frames, noise or a slow trickle. The receiving agent
(a real ``packdist agent serve``) refuses what it sends, drops it and gets every chunk from
the site: the install succeeds, byte for byte, with nothing taken from the liar.

The liar is a small HTTP server in this process that enrolls and heartbeats with the real
site like an agent (so the site's tracker offers it as a holder).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from packdist.core.digest import Digest
from packdist.http import frame_header
from tests import harness as h

MB = 1024 * 1024


class LyingPeer:
    """A peer that answers every chunk request the way ``mode`` says."""

    def __init__(self, mode: str, site_url: str, context: ssl.SSLContext | None = None) -> None:
        self.mode, self.site_url = mode, site_url
        self.context = context  # over TLS: a certificate of the site's for "liar", presented
        self.token = ""  # its enrollment token, once the site has it registered
        self.asked = 0
        self.stop = threading.Event()
        self.holding: list[str] = []  # package ids it claims in its heartbeats
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer.asked += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-packdist-chunks")
                self.end_headers()
                try:
                    peer.answer(self.wfile, [Digest.parse(d) for d in body["digests"]])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent hung up on us: what a liar deserves

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, out: Any, digests: list[Digest]) -> None:
        if self.mode == "wrong-bytes":  # the frames asked for, each a chunk of noise
            for d in digests:
                out.write(frame_header(d, 0, 64 * 1024, 64 * 1024) + os.urandom(64 * 1024))
        elif self.mode == "oversized":  # a frame announcing 1 GiB
            out.write(frame_header(digests[0], 0, 1 << 30, 1 << 30) + b"\0" * 4096)
        elif self.mode == "unasked":
            out.write(frame_header(Digest.of(b"x"), 0, 1, 1) + b"x")
        elif self.mode == "noise":
            out.write(os.urandom(100_000))
        elif self.mode == "trickle":  # alive, but a byte every 0.2 s
            head = frame_header(digests[0], 0, 128 * 1024, 128 * 1024)
            for i in range(10_000):
                if self.stop.is_set():
                    return
                out.write((head + b"\0" * (128 * 1024))[i : i + 1])
                out.flush()
                time.sleep(0.2)
        out.flush()

    def _site(self, path: str, body: dict[str, Any] | None = None) -> None:
        req = urllib.request.Request(
            self.site_url + path,
            data=json.dumps(body or {}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        context = self.context if self.site_url.startswith("https://") else None
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            resp.read()

    def _heartbeats(self) -> None:
        self._site("/v1/agent/hello")
        while not self.stop.is_set():
            beat = {"boot_id": "liar", "disk_free": 10**12, "installed": self.holding}
            try:
                self._site("/v1/agent/heartbeat", beat)
            except OSError:
                pass
            self.stop.wait(1.0)

    def __enter__(self) -> LyingPeer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._heartbeats, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("liar") / "src"
    return h.make_tree(root, {"data/a.bin": 2 * MB + 3, "data/b.bin": MB + 1}, seed=11)


@pytest.fixture
def cluster1(tmp_path: Path) -> Iterator[h.Cluster]:
    c = h.start_cluster(tmp_path, ["dp1"])
    try:
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["wrong-bytes", "oversized", "unasked", "noise", "trickle"])
def test_a_lying_peer_is_dropped_and_the_site_sends_everything(
    cluster1: h.Cluster, tree: Path, mode: str, tmp_path: Path
) -> None:
    c = cluster1
    created = c.site.create_package(tree, "app", "1.0")
    package_id = created["id"]
    liar = LyingPeer(mode, c.site.url)
    liar.token = c.site.add_server("liar", liar.url)
    liar.context = h.as_server(c.site.home, "liar", tmp_path / "certs")  # enrolled, lying
    liar.holding = [package_id]
    with liar:
        h.wait_until(lambda: _offered(c, "liar"), 15, message="the site to hear from the liar")
        job = c.site.distribute("app@1.0", ["dp1"])
        code = c.site.wait_job(job, 90)
        doc = c.site.job(job)
        assert code == 0, h.describe_job(doc)
        h.assert_same_tree(tree, c.agents["dp1"].package_dir("app", "1.0"))
        assert liar.asked >= 1, "the liar was never asked: the test tested nothing"
        dp1 = h.instruction(doc, "dp1")
        assert dp1["bytes_from_peers"] == 0, h.describe_job(doc)
    log = c.agents["dp1"].log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "peer liar dropped for this transfer" in log, c.agents["dp1"].log_tail()
    if mode == "wrong-bytes":  # the words blame the peer, not the site
        assert "cannot decode chunk" in log and f"from peer liar ({liar.url})" in log, log


def _offered(c: h.Cluster, name: str) -> bool:
    return any(
        s["name"] == name and s.get("online") for s in c.site.json("server", "list")["servers"]
    )
