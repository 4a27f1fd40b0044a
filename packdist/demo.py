"""``make demo``: a site, three agents and a real distribution on loopback, one server
unplugged while the job runs and plugged back in. Every step is the real ``packdist``
command in its own process; nothing is mocked. Exits 0 when every server holds the package.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509

from packdist.auth import token_fingerprint
from packdist.core import tls
from packdist.demo_rollout import rollout_story

PACKDIST = [sys.executable, "-m", "packdist"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.site_home = root / "site"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.site_url = f"https://127.0.0.1:{free_port()}"
        self.servers: dict[str, dict[str, Any]] = {}

    def run(self, *args: str, show: bool = True, home: Path | None = None) -> str:
        if show:
            where = "" if home is None else f"--home {home.name} "
            print(f"$ packdist {where}{' '.join(args)}", flush=True)
        out = subprocess.run(
            [*PACKDIST, "--home", str(home or self.site_home), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if show and args[-1] != "--json":
            print(out.rstrip(), flush=True)
        return out

    def start(self, name: str, args: list[str], health_url: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [*PACKDIST, *args], stdout=log, stderr=log, start_new_session=True
        )
        # whether it answers, only: an agent not yet enrolled serves a temporary certificate
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                url = f"{health_url}/healthz"
                with urllib.request.urlopen(url, timeout=1, context=probe) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{name} did not start; see {self.root / (name + '.log')}")

    def start_agent(self, name: str, site_url: str | None = None) -> None:
        s = self.servers[name]
        self.start(
            name,
            [
                "--home",
                str(self.root / name),
                "agent",
                "serve",
                "--listen",
                f"127.0.0.1:{s['port']}",
                "--site",
                site_url or self.site_url,
                "--token",
                s["token"],
            ],
            s["url"],
        )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def make_sample(src: Path) -> None:
    (src / "bin").mkdir(parents=True)
    (src / "share" / "doc").mkdir(parents=True)
    (src / "var" / "empty").mkdir(parents=True)
    tool = src / "bin" / "hello"
    tool.write_text("#!/bin/sh\necho hello from packdist\n")
    tool.chmod(0o755)
    (src / "share" / "doc" / "README.txt").write_text("packdist demo package\n" * 200)
    (src / "share" / "data.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    (src / "current").symlink_to("bin/hello")


def certificate_line(agent_home: Path, token: str) -> str:
    """Who the agent's certificate names, until when, and whether its authority is the one
    the enrollment token names."""
    tls_dir = agent_home / "tls"
    cert = tls.load_certificate((tls_dir / "agent.pem").read_bytes())
    holder = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uri = holder.get_values_for_type(x509.UniformResourceIdentifier)[0]
    named = token_fingerprint(token) or ""
    same = tls.matches_fingerprint((tls_dir / "ca.pem").read_bytes(), named)
    until = cert.not_valid_after_utc.date().isoformat()
    return f"{uri}, until {until}; authority {'as its token names' if same else 'UNEXPECTED'}"


def link_lines(demo: Demo) -> list[str]:
    """What a client trusting the site's authority alone sees of the site and of dp1, and
    what a plain-HTTP request to dp1 gets."""
    trusted = tls.client_context(demo.site_home / "tls" / "ca.pem")
    lines = []
    for name, url in (("site", demo.site_url), ("dp1", demo.servers["dp1"]["url"])):
        port = int(url.rsplit(":", 1)[1])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            der = conn.getpeercert(binary_form=True) or b""
            version = conn.version()
        sans = x509.load_der_x509_certificate(der).extensions
        names = sans.get_extension_for_class(x509.SubjectAlternativeName).value
        uri = (names.get_values_for_type(x509.UniformResourceIdentifier) or ["-"])[0]
        lines.append(f"{name} at {url}: {version}, certificate of the site's authority ({uri})")
    port = int(demo.servers["dp1"]["url"].rsplit(":", 1)[1])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            lines.append(f"plain HTTP to dp1: answered {resp.status} (UNEXPECTED)")
    except OSError as exc:  # the TLS server takes no clear text
        lines.append(f"plain HTTP to dp1: refused ({type(exc).__name__})")
    return lines


def _online(demo: Demo, server: str) -> bool:
    listed = json.loads(demo.run("server", "list", "--json", show=False))["servers"]
    return any(s["name"] == server and s["online"] for s in listed)


def branch_office(demo: Demo, src: Path) -> None:
    """A child site at a branch, with a server of its own that never talks to the central
    site: the package crosses to the branch once, and the branch installs it."""
    say("A branch office: a child site with its own server, joined to this site")
    branch = demo.root / "branch"
    branch_url = f"https://127.0.0.1:{free_port()}"
    demo.run("site", "init", "--name", "branch", "--json", show=False, home=branch)
    print("$ packdist --home branch site init --name branch")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    doc = json.loads(
        demo.run("server", "add", "bdp1", "--url", url, "--json", show=False, home=branch)
    )
    print(f"$ packdist --home branch server add bdp1 --url {url}   (token {doc['token'][:10]}…)")
    demo.servers["bdp1"] = {"port": port, "url": url, "token": doc["token"]}
    child = json.loads(
        demo.run("site", "add-child", "branch", "--url", branch_url, "--json", show=False)
    )
    print(f"$ packdist site add-child branch --url {branch_url}   (token {child['token'][:10]}…)")
    print(f"$ packdist --home branch site serve --parent {demo.site_url}   (token in env)")
    listen = branch_url.removeprefix("https://")
    os.environ["PACKDIST_PARENT_TOKEN"] = child["token"]  # kept out of the process list
    try:
        demo.start(
            "branch",
            ["--home", str(branch), "site", "serve", "--listen", listen, "--parent", demo.site_url],
            branch_url,
        )
    finally:
        del os.environ["PACKDIST_PARENT_TOKEN"]
    demo.start_agent("bdp1", site_url=branch_url)  # it knows only the branch
    deadline = time.monotonic() + 30
    while not _online(demo, "branch/bdp1"):
        if time.monotonic() > deadline:
            raise SystemExit("the branch's server did not show at the central site")
        time.sleep(0.5)
    demo.run("site", "children")
    say("Distribute app@1.0 to the branch: it crosses once, the branch installs it")
    demo.run("distribute", "app@1.0", "--site", "branch", "--wait")
    demo.run("job", "list")
    tree = demo.root / "bdp1" / "packages" / "app" / "1.0"
    cmp = filecmp.dircmp(src, tree)
    if cmp.diff_files or cmp.left_only or cmp.right_only:
        raise SystemExit(f"bdp1: {tree} does not match the source")
    print(f"  bdp1: {tree} matches the source")


def main() -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="packdist-demo-"))
    demo = Demo(root)
    try:
        say(f"A site in {root}")
        demo.run("site", "init", "--name", "demo-site")
        src = root / "src"
        make_sample(src)
        demo.run("package", "create", str(src), "--name", "app", "--version", "1.0")

        say("Three distribution servers enrolled, each with its own token")
        for name in ("dp1", "dp2", "dp3"):
            port = free_port()
            url = f"https://127.0.0.1:{port}"
            doc = json.loads(demo.run("server", "add", name, "--url", url, "--json", show=False))
            print(f"$ packdist server add {name} --url {url}   (token {doc['token'][:10]}…)")
            demo.servers[name] = {"port": port, "url": url, "token": doc["token"]}

        say("The site server and the agents of dp1 and dp2 start; dp3 is unplugged")
        demo.start(
            "site",
            [
                "--home",
                str(demo.site_home),
                "site",
                "serve",
                "--listen",
                demo.site_url.removeprefix("https://"),
            ],
            demo.site_url,
        )
        demo.start_agent("dp1")
        demo.start_agent("dp2")

        say("Distribute app@1.0 to every server")
        job = json.loads(demo.run("distribute", "app@1.0", "--all", "--json", show=False))["job"]
        print(f"$ packdist distribute app@1.0 --all\njob {job}")
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            shown = json.loads(demo.run("job", "show", job, "--json", show=False))
            for i in shown["instructions"]:
                line = f"{i['state']} (attempts {i['attempts']}" + (
                    f", last error: {i['last_error']})" if i["last_error"] else ")"
                )
                if seen.get(i["server"]) != line:
                    seen[i["server"]] = line
                    print(f"  {i['server']}: {line}", flush=True)
            time.sleep(0.5)
        say("The job stays active: dp3's instruction keeps its target and retries")
        demo.run("job", "show", job)

        say("dp3 is plugged back in: its heartbeat wakes the retry at once")
        plugged = time.monotonic()
        demo.start_agent("dp3")
        subprocess.run(
            [*PACKDIST, "--home", str(demo.site_home), "job", "wait", job, "--timeout", "40"],
            check=True,
        )
        print(f"dp3 received the package {time.monotonic() - plugged:.1f}s after it came back")

        say("Every server holds the exact tree")
        for name in demo.servers:
            tree = root / name / "packages" / "app" / "1.0"
            cmp = filecmp.dircmp(src, tree)
            same = not (cmp.diff_files or cmp.left_only or cmp.right_only)
            data = (tree / "share" / "data.bin").read_bytes() == (
                src / "share" / "data.bin"
            ).read_bytes()
            if not (same and data):
                print(f"  {name}: MISMATCH")
                return 1
            print(f"  {name}: {tree} matches the source")
        demo.run("status")
        say("Each server holds a certificate of the site's own authority, for its own key")
        for name, server in demo.servers.items():
            print(f"  {name}: {certificate_line(root / name, server['token'])}")
        say("Every link is TLS 1.3, verified against that authority; plain HTTP is refused")
        for line in link_lines(demo):
            print(f"  {line}")
        say("The job's timeline, as the dashboard shows it")
        demo.run("events", "--job", job)
        rollout_story(demo, src)
        branch_office(demo, src)
        print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        if sys.stdin.isatty() and sys.stdout.isatty():
            explore(demo)
            return 0
        print(f"(no terminal: everything stopped; the homes stay in {root} to look at)")
        return 0
    finally:
        demo.stop_all()


def explore(demo: Demo) -> None:
    """On a terminal: leave the site and agents running to look around, until Ctrl-C."""
    doc = json.loads(demo.run("site", "operator-password", "--json", show=False))
    say("Everything keeps running on loopback: look around")
    print(
        f"  dashboard: {demo.site_url}/   operator {doc['operator']}, password {doc['operator_password']}"
    )
    print(
        f"  (the browser will not know the site's authority: {demo.site_home / 'tls' / 'ca.pem'})"
    )
    command = Path(sys.executable).parent / "packdist"  # the venv's, when not on PATH
    if shutil.which("packdist") == str(command) or not command.exists():
        command = Path("packdist")
    for n, args in enumerate(("status", "rollout list", "events", "job list")):
        print(f"  {'try:' if n == 0 else '    '}  {command} --home {demo.site_home} {args}")
    print(f"  the homes stay in {demo.root} after Ctrl-C")
    print("Ctrl-C stops the site and the agents.", flush=True)
    try:
        while all(p.poll() is None for p in demo.procs.values()):
            time.sleep(1)
        print("a process of the demo stopped; stopping the rest")
    except KeyboardInterrupt:
        print("\nstopping the site and the agents")


if __name__ == "__main__":
    sys.exit(main())
