"""``python -m bench distribute``: one package to one server over loopback, packdist vs rsync.

packdist: a real site (``site serve``) and a real agent (``agent serve``) on 127.0.0.1; the
package is imported first (untimed); the timed command is ``packdist distribute --wait``,
from the job's creation to the agent's verified, synced, renamed tree.

Anchors: ``rsync -a`` from an rsync daemon on 127.0.0.1 into an empty folder, and the same
followed by ``sync -f`` on the target (like for like: packdist syncs before it reports a
version installed). Every method starts from an empty target and a warm page cache on the
source side; repeated, best time reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import (
    MIB,
    WORK_DIR,
    ChildFailed,
    Run,
    Tally,
    fmt,
    format_table,
    generate_tree,
    packdist_argv,
    run_child,
    run_quiet,
    scratch,
    settle,
)

DESCRIPTION = "distribute a ~1 GiB package to one server on loopback: packdist vs rsync daemon"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildFailed(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ChildFailed(f"{url} did not become healthy")


class PackdistSetup:
    """A site with the package imported and one enrolled agent, both running."""

    def __init__(self, source: Path, work: Path) -> None:
        self.work = work
        self.site = work / "site"
        self.procs: list[subprocess.Popen[bytes]] = []
        run_quiet(packdist_argv("--home", self.site, "site", "init", "--name", "bench"))
        run_quiet(
            packdist_argv(
                "--home",
                self.site,
                "package",
                "create",
                source,
                "--name",
                "bench",
                "--version",
                "1",
            )
        )
        self.site_url = f"http://127.0.0.1:{_port()}"
        self._start(
            "site",
            [
                "--home",
                str(self.site),
                "site",
                "serve",
                "--listen",
                self.site_url.removeprefix("http://"),
            ],
            self.site_url,
        )
        self.round = 0

    def _start(self, name: str, args: list[str], url: str) -> None:
        log = self.work / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(packdist_argv(*args), stdout=out, stderr=out)
        self.procs.append(proc)
        _wait_healthy(url, proc, log)

    def fresh_agent(self) -> str:
        """A new server with an empty home, enrolled and running; returns its name."""
        self.round += 1
        name = f"dp{self.round}"
        url = f"http://127.0.0.1:{_port()}"
        doc = json.loads(
            run_quiet(
                packdist_argv("--home", self.site, "server", "add", name, "--url", url, "--json")
            )
        )
        self._start(
            name,
            [
                "--home",
                str(self.work / name),
                "agent",
                "serve",
                "--listen",
                url.removeprefix("http://"),
                "--site",
                self.site_url,
                "--token",
                doc["token"],
            ],
            url,
        )
        time.sleep(0.5)  # let it enroll (its first heartbeat)
        return name

    def distribute(self, name: str) -> Run:
        return run_child(
            packdist_argv(
                "--home",
                self.site,
                "distribute",
                "bench@1",
                "--to",
                name,
                "--wait",
                "--timeout",
                "600",
            )
        )

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


class RsyncDaemon:
    def __init__(self, source: Path, work: Path) -> None:
        self.port = _port()
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"use chroot = no\nport = {self.port}\npid file = {work / 'rsyncd.pid'}\n"
            f"[src]\n path = {source}\n read only = yes\n uid = root\n gid = root\n"
        )
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise ChildFailed("rsync daemon did not start")

    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/src/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench distribute", description=DESCRIPTION)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        print("bench distribute: rsync is not installed (make bench installs it as root)")
        return 2
    tree = generate_tree(args.size_mib)
    work = scratch(WORK_DIR, "distribute-")
    tallies = {
        n: Tally(n)
        for n in ("packdist distribute", "rsync -a (daemon)", "rsync -a (daemon) + sync")
    }
    setup = PackdistSetup(tree.root, work)
    daemon = RsyncDaemon(tree.root, work)
    try:
        for r in range(args.repeat):
            settle(tree.root, cold=False)
            name = setup.fresh_agent()
            tallies["packdist distribute"].runs.append(setup.distribute(name))
            for label, synced in (("rsync -a (daemon)", False), ("rsync -a (daemon) + sync", True)):
                settle(tree.root, cold=False)
                dest = work / f"rsync-{r}-{int(synced)}"
                dest.mkdir()
                cmd = ["rsync", "-a", daemon.url(), str(dest)]
                if synced:
                    cmd = [
                        "sh",
                        "-c",
                        'rsync -a "$0" "$1" && sync -f "$1"',
                        daemon.url(),
                        str(dest),
                    ]
                tallies[label].runs.append(run_child(cmd))
                shutil.rmtree(dest)
            shutil.rmtree(work / name, ignore_errors=True)
    finally:
        setup.stop()
        daemon.stop()
    base = tallies["rsync -a (daemon)"].best.seconds
    rows = []
    for t in tallies.values():
        s = t.best.seconds
        rows.append([t.name, fmt(s, 2), fmt(tree.bytes / s / 1e6, 0), fmt(base / s, 2)])
    print(
        f"\none package of {tree.bytes / MIB:.0f} MiB ({tree.files} files) to one server over"
        f" loopback, best of {args.repeat}"
    )
    print(format_table(["method", "seconds", "MB/s", "speed vs rsync -a"], rows))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
