"""Nothing of a package crosses a cable in clear (issue 13, "secure by default").

A site and two agents, each in its own network namespace, started as an operator starts them:
the site with ``site serve``, each agent with ``agent serve --site URL --token TOKEN``, no
certificate file given to anything. ``tcpdump`` records every frame on the three cables
(the host-side veth ends) from before the processes start until the job is over: enrollment,
heartbeats, the install requests, the chunks from the site and between the peers.

The package carries markers, random for each run: one in its name, one in a file's name, one
many times over in that file's bytes; the agents' enrollment secrets are looked for too. The
capture is searched stream by stream (each TCP direction put back together, so nothing split
between two segments escapes; :mod:`tests.lab.pcap`) and as the raw file.

* **HTTPS** (the default): none of them is on any cable, every connection opened with a TLS
  handshake, the capture holds every byte that crossed (no hole) and more bytes than the
  package, and both agents hold the exact tree.
* **Plain HTTP** (``--plain-http``, the control): the same search finds every one of them on
  the site's cable, so the HTTPS test is not passing because the search is blind.

Each string is looked for as it is and as it reads inside base64 text (the manifest, with
the file names, travels base64-encoded in the install request).

That an agent serving HTTPS gives no HTTP answer to a plain-HTTP request is proved in
``tests/integration/test_tls_links.py`` (no namespace needed).
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import harness as h
from tests.conftest import require
from tests.lab import pcap
from tests.lab.netns import Lab

SITE_PORT = 8700
AGENT_PORT = 8701
SERVERS = ["dp1", "dp2"]
CABLES = ["site", *SERVERS]
JOB_TIMEOUT = 120.0
KiB = 1024
MiB = 1024 * KiB
PAYLOAD_SIZE = 6 * MiB  # the marked file: random bytes, the content marker every ~64 KiB
MARK_EVERY = 64 * KiB
CAPTURE_BUFFER_KIB = 65536  # tcpdump's kernel buffer: no frame dropped at veth speed
#: the flags an operator gives the two commands: none names a certificate or a key
OPERATOR_FLAGS = {"--home", "--listen", "--site", "--token"}
TLS_RECORD_START = b"\x16\x03"  # a TLS handshake record (ClientHello, ServerHello)


# --- the marked package ---------------------------------------------------------------------


@dataclass
class Marked:
    """A source tree and the strings of it that must never cross a cable in clear."""

    tree: Path
    package: str
    file_rel: str
    markers: dict[str, bytes]  # what -> the bytes looked for

    def size(self) -> int:
        return sum(
            p.stat().st_size for p in self.tree.rglob("*") if p.is_file() and not p.is_symlink()
        )


def make_marked_tree(root: Path) -> Marked:
    content, file_name, package = (secrets.token_hex(16) for _ in range(3))
    file_rel = f"lib/{file_name}.bin"
    tree = h.make_tree(root, {"lib/plain.bin": 300 * KiB}, seed=13)
    rnd = random.Random(content)
    blob = bytearray(rnd.randbytes(PAYLOAD_SIZE))  # incompressible: it travels as it is
    for at in range(0, PAYLOAD_SIZE - MARK_EVERY, MARK_EVERY):
        offset = at + rnd.randrange(MARK_EVERY - 32)
        blob[offset : offset + 32] = content.encode()
    (tree / file_rel).write_bytes(bytes(blob))
    return Marked(
        tree,
        f"app-{package}",
        file_rel,
        {
            "content": content.encode(),
            "file name": file_name.encode(),
            "package name": package.encode(),
        },
    )


# --- tcpdump on a cable ---------------------------------------------------------------------


class Tcpdump:
    """``tcpdump -w`` on ``host``'s cable (its veth end, in its namespace): every frame,
    whole, into ``path``."""

    def __init__(self, lab: Lab, host: str, path: Path) -> None:
        self.host, self.path = host, path
        self.err_path = path.with_suffix(".stderr")
        self.cmd = [
            "ip", "netns", "exec", lab.ns(host),
            "tcpdump", "-i", lab.host_veth(host), "-n", "-s", "0",
            "-B", str(CAPTURE_BUFFER_KIB), "--immediate-mode", "-U", "-Z", "root", "-w", str(path),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.err_path.open("wb") as err:
            proc = self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=err)
        h.wait_until(
            lambda: "listening on" in self.stderr() or proc.poll() is not None,
            10,
            interval=0.05,
            message=lambda: f"tcpdump on {self.host}'s cable to start: {self.stderr()}",
        )
        assert proc.poll() is None, f"tcpdump on {self.host} exited: {self.stderr()}"

    def stop(self) -> str:
        """SIGINT (tcpdump writes out what it holds and says what it caught); its report."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


@contextlib.contextmanager
def capturing(lab: Lab, root: Path) -> Iterator[dict[str, Tcpdump]]:
    dumps = {host: Tcpdump(lab, host, root / f"{host}.pcap") for host in CABLES}
    try:
        for dump in dumps.values():
            dump.start()
        yield dumps
    finally:
        for dump in dumps.values():
            dump.stop()


# --- one distribution under capture ---------------------------------------------------------


@dataclass
class Outcome:
    marked: Marked
    captures: dict[str, pcap.Capture]  # cable -> what crossed it
    reports: dict[str, str]  # cable -> tcpdump's own count ("... dropped by kernel")
    cluster: h.Cluster

    def found(self, cable: str) -> dict[str, bool]:
        """For each secret: whether it is on ``cable`` in clear (in a stream or the file)."""
        capture = self.captures[cable]
        places = [capture.raw, *(data for data, _ in capture.payloads.values())]
        return {
            what: any(form in place for form in spellings(needle) for place in places)
            for what, needle in self.secrets().items()
        }

    def secrets(self) -> dict[str, bytes]:
        tokens = {
            f"{name}'s enrollment secret": a.token.split(".", 1)[0].encode()
            for name, a in self.cluster.agents.items()
        }
        return {**self.marked.markers, **tokens}

    def summary(self) -> str:
        lines = []
        for cable, c in self.captures.items():
            seen = [what for what, yes in self.found(cable).items() if yes]
            report = " ".join(self.reports[cable].split())[-120:]
            lines.append(
                f"[{cable}] {c.packets} frames, {len(c.payloads)} TCP streams,"
                f" {c.payload_bytes()} B of TCP payload, {c.missing_bytes()} B missing;"
                f" in clear: {seen or 'nothing'}; tcpdump: {report}"
            )
        return "\n".join(lines)


def spellings(needle: bytes) -> list[bytes]:
    """``needle`` as it is, and as it reads inside any base64 text (the manifest travels
    base64-encoded in an install request): at each of the three alignments, the characters
    that only ``needle``'s bytes decide (the groups shared with what surrounds it left out)."""
    forms = [needle]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + needle)
        forms.append(encoded[4 if shift else 0 : -4])
    return forms


def distribute_under_capture(lab: Lab, root: Path, tls: bool) -> Outcome:
    """Site and agents started (as an operator does) and the marked package distributed to
    both agents with every cable captured; the package checked installed, byte for byte."""
    site = h.make_site(root, host=lab.addr("site"), port=SITE_PORT, netns=lab.ns("site"), tls=tls)
    agents = h.add_agents(
        site,
        root,
        SERVERS,
        hosts={s: lab.addr(s) for s in SERVERS},
        netns={s: lab.ns(s) for s in SERVERS},
        port=AGENT_PORT,
    )
    cluster = h.Cluster(site, agents)
    marked = make_marked_tree(root / "src")
    site.create_package(marked.tree, marked.package, "1.0")
    captures_dir = root / "captures"
    captures_dir.mkdir()
    try:
        with capturing(lab, captures_dir) as dumps:
            h.start_all([site, *agents.values()])
            h.wait_until(
                lambda: all(site.server_seen(s) for s in SERVERS), 30, message="agents enrolled"
            )
            job_id = site.distribute(f"{marked.package}@1.0", SERVERS)
            code = site.wait_job(job_id, timeout=JOB_TIMEOUT)
            assert code == 0, h.describe_job(site.job(job_id))
            time.sleep(0.5)  # the last frames of the job (acknowledgements) onto the files
        reports = {cable: dump.stderr() for cable, dump in dumps.items()}
        for agent in agents.values():
            h.assert_same_tree(marked.tree, agent.package_dir(marked.package, "1.0"))
        captures = {cable: pcap.read(dumps[cable].path) for cable in CABLES}
        return Outcome(marked, captures, reports, cluster)
    except BaseException:
        print(cluster.dump_logs())
        raise
    finally:
        cluster.close()


def _require_tcpdump() -> None:
    require("lab", None if shutil.which("tcpdump") else "tcpdump is missing (make system-deps)")


# --- the tests ------------------------------------------------------------------------------


def test_a_distribution_over_https_with_no_certificate_handled_shows_nothing_of_the_package_on_the_cables(
    lab: Lab, tmp_path: Path
) -> None:
    _require_tcpdump()
    outcome = distribute_under_capture(lab, tmp_path, tls=True)
    print(f"\n[https]\n{outcome.summary()}")
    site, agents = outcome.cluster.site, outcome.cluster.agents

    # Nobody was handed a certificate: the site made its own, each agent pinned the site's
    # authority from its token and got its certificate from the site.
    for component in [site, *agents.values()]:
        flags = {a for a in component.command() if a.startswith("--")}
        assert flags <= OPERATOR_FLAGS, f"{component.name} was given {flags - OPERATOR_FLAGS}"
        assert component.url.startswith("https://"), component.url
    for agent in agents.values():
        assert (agent.home / "tls" / "ca.pem").read_bytes() == site.ca.read_bytes()
        assert (agent.home / "tls" / "agent.pem").exists(), "the agent has no certificate"

    size = outcome.marked.size()
    for cable, capture in outcome.captures.items():
        leaked = [what for what, yes in outcome.found(cable).items() if yes]
        assert not leaked, f"in clear on {cable}'s cable: {leaked}\n{outcome.summary()}"
        # Not vacuous: the capture holds every byte that crossed, and that is the package
        # and more; every connection spoke TLS from its first byte.
        assert capture.mid_connection() == [], f"{cable}: capture began mid-connection"
        report = outcome.reports[cable]
        assert re.search(r"^0 packets dropped by kernel", report, re.M), report
        assert capture.missing_bytes() == 0, f"{cable}: bytes missing\n{outcome.summary()}"
        assert capture.payload_bytes() > size, (
            f"{cable}'s cable carried {capture.payload_bytes()} B of TCP payload, less than"
            f" the {size} B package\n{outcome.summary()}"
        )
        for (src, dst), (data, _) in capture.payloads.items():
            assert data.startswith(TLS_RECORD_START), (
                f"{cable}: {src} -> {dst} did not open with TLS: {data[:40]!r}"
            )


def test_the_same_distribution_over_plain_http_shows_the_package_on_the_cables(
    lab: Lab, tmp_path: Path
) -> None:
    """The control: with ``--plain-http`` the same capture and the same search find every
    secret in clear, so the HTTPS test can fail."""
    _require_tcpdump()
    outcome = distribute_under_capture(lab, tmp_path, tls=False)
    print(f"\n[plain http]\n{outcome.summary()}")
    found = outcome.found("site")
    missed = [what for what, yes in found.items() if not yes]
    assert not missed, f"not found in clear on the site's cable: {missed}\n{outcome.summary()}"
    for cable in SERVERS:  # the content crossed every server's cable, from the site or a peer
        assert outcome.found(cable)["content"], f"{cable}\n{outcome.summary()}"
    assert outcome.captures["site"].missing_bytes() == 0, outcome.summary()
