"""A throwaway network lab: one network namespace per host, all cabled to one bridge.

::

    pdlab-site (10.77.0.1)   pdlab-dp1 (10.77.0.11)   pdlab-dp2 (10.77.0.12)
        pdh-site                 pdh-dp1                  pdh-dp2        host-side veth ends
           |                        |                        |
        pdb-site                 pdb-dp1                  pdb-dp2        bridge ports
           +------------------ pdbr0 (in pdlab-sw) ---------+

The bridge lives in its own namespace (``pdlab-sw``), so the root namespace gets no link, no
address and no route: the lab only ever uses addresses of its own namespaces in
10.77.0.0/24. Every name starts with ``pdlab-``/``pd``, which is how :func:`clean_leftovers`
finds what a crashed run left behind. A lock file makes a second lab run wait for the first
(they share names).

``unplug(host)`` sets the host-side veth end down (the server's cable is pulled: its route to
the lab goes, and the bridge port loses carrier); ``replug(host)`` sets it up again.

A lab of several segments (a host with a leg on each of two) is
:class:`tests.lab.segments.SegmentedLab`: the cable methods here take the leg's ``segment``
there, through :meth:`Lab.cable`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

PREFIX = "pdlab-"
SWITCH_NS = "pdlab-sw"
BRIDGE = "pdbr0"
SUBNET = ipaddress.ip_network("10.77.0.0/24")
DEFAULT_HOSTS = {"site": "10.77.0.1", "dp1": "10.77.0.11", "dp2": "10.77.0.12"}
LOCK_PATH = Path("/run/lock/packdist-lab.lock")
LOCK_WAIT = 300.0  # seconds to wait for another lab run to finish


class LabError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def lab_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(PREFIX)]


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL what still runs inside one of *our* namespaces (a crashed run's leftovers)."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        if pid.isdigit() and int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def clean_leftovers() -> None:
    """Remove every namespace and root-namespace link a previous lab run left behind."""
    for ns in lab_namespaces():
        _kill_namespace_processes(ns)
        ip("netns", "del", ns, check=False)
    # Veth ends are created directly inside their namespaces, but be thorough.
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(("pdbr", "pdh-", "pdb-")):  # pdbr0, a segment's pdbr-NAME
                ip("link", "del", name, check=False)
    left = lab_namespaces()
    if left:
        raise LabError(f"could not remove lab namespaces left by an earlier run: {left}")


def netns_supported() -> str | None:
    """Why namespaces cannot be made here (None if they can)."""
    probe = f"{PREFIX}probe-{os.getpid()}"
    proc = ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create network namespaces here: {proc.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class Lab:
    """The lab's namespaces and cables. Use as a context manager: tear-down always runs."""

    def __init__(self, hosts: dict[str, str] | None = None) -> None:
        self.hosts = dict(hosts or DEFAULT_HOSTS)
        for host, addr in self.hosts.items():
            if ipaddress.ip_address(addr) not in SUBNET:
                raise ValueError(f"{host}: {addr} is outside the lab subnet {SUBNET}")
            if len(self.host_veth(host)) > 15:
                raise ValueError(f"host name {host!r} too long for an interface name")
        self._lock: int | None = None
        self.up = False

    # Names.
    @staticmethod
    def ns(host: str) -> str:
        return f"{PREFIX}{host}"

    @staticmethod
    def host_veth(host: str) -> str:
        return f"pdh-{host}"

    @staticmethod
    def bridge_port(host: str) -> str:
        return f"pdb-{host}"

    def addr(self, host: str) -> str:
        return self.hosts[host]

    def cable_addr(self, host: str, segment: str) -> str:
        """``host``'s address on ``segment`` (a lab of one segment has none by name)."""
        raise ValueError(f"this lab has one segment: no {segment!r} leg for {host}")

    def cable(self, host: str, segment: str | None = None) -> tuple[str, str, str]:
        """``(namespace, host-side veth, bridge port)`` of ``host``'s cable (its only one:
        a lab of one segment takes no ``segment``)."""
        if segment is not None:
            raise ValueError(f"this lab has one segment: no {segment!r} leg for {host}")
        return self.ns(host), self.host_veth(host), self.bridge_port(host)

    # Life cycle.
    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        while True:  # another lab run (same names) may be under way: wait for it
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._lock)
                    self._lock = None
                    raise LabError(
                        f"another lab run held {LOCK_PATH} for {LOCK_WAIT:g}s; labs share names"
                    ) from None
                time.sleep(0.5)
        try:
            clean_leftovers()
            self._build()
            self.up = True
        except BaseException:
            self.teardown()
            raise

    def _build(self) -> None:
        sw = SWITCH_NS
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "lo", "up")
        ip("-n", sw, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", sw, "link", "set", BRIDGE, "up")
        for host, addr in self.hosts.items():
            ns, inside, port = self.ns(host), self.host_veth(host), self.bridge_port(host)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are created directly in their namespaces: the root namespace never
            # holds a lab link, not even for a moment.
            ip(
                "link",
                "add",
                inside,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                sw,
            )
            ip("-n", sw, "link", "set", port, "master", BRIDGE)
            ip("-n", sw, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{addr}/{SUBNET.prefixlen}", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")

    def teardown(self) -> None:
        """Remove every namespace (and so every veth and the bridge). Never raises."""
        self.up = False
        try:
            for ns in lab_namespaces():
                _kill_namespace_processes(ns)
                ip("netns", "del", ns, check=False)
        finally:
            if self._lock is not None:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                os.close(self._lock)
                self._lock = None

    # Cables.
    def unplug(self, host: str, segment: str | None = None) -> None:
        """Pull ``host``'s cable: its veth end goes down (no carrier on the bridge port)."""
        ns, dev, _ = self.cable(host, segment)
        ip("-n", ns, "link", "set", dev, "down")

    def replug(self, host: str, segment: str | None = None) -> None:
        ns, dev, _ = self.cable(host, segment)
        ip("-n", ns, "link", "set", dev, "up")

    def shape(
        self, host: str, rate: str = "100mbit", burst: str = "128kb", segment: str | None = None
    ) -> None:
        """Cap ``host``'s cable at ``rate`` both ways with ``tc tbf`` (egress of each veth
        end: the host side limits what it sends, the bridge port what it receives)."""
        host_ns, host_dev, port = self.cable(host, segment)
        for ns, dev in ((host_ns, host_dev), (SWITCH_NS, port)):
            proc = subprocess.run(
                ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                 "burst", burst, "latency", "50ms"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if proc.returncode != 0:
                raise LabError(f"tc tbf on {dev} failed: {proc.stderr.strip()}")

    def link_bytes(self, host: str, segment: str | None = None) -> tuple[int, int]:
        """``(received, sent)`` bytes on ``host``'s cable, from the kernel's interface
        counters (every byte of every frame: payload, TCP/IP headers, retransmissions)."""
        stats = self._link_stats(host, segment)
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def link_frames(self, host: str, segment: str | None = None) -> tuple[int, int]:
        """``(received, sent)`` frames on ``host``'s cable (the kernel's packet counters; with
        segmentation offload one frame may carry several TCP segments' worth)."""
        stats = self._link_stats(host, segment)
        return int(stats["rx"]["packets"]), int(stats["tx"]["packets"])

    def _link_stats(self, host: str, segment: str | None) -> dict[str, dict[str, int]]:
        ns, dev, _ = self.cable(host, segment)
        out = ip("-n", ns, "-j", "-s", "link", "show", dev).stdout
        stats: dict[str, dict[str, int]] = json.loads(out)[0]["stats64"]
        return stats

    def link_is_up(self, host: str, segment: str | None = None) -> bool:
        ns, dev, _ = self.cable(host, segment)
        out = ip("-n", ns, "-o", "link", "show", dev).stdout
        return "state UP" in out

    # Running things inside a host.
    def exec(
        self, host: str, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{host}: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def can_connect(
        self, src: str, dst: str, port: int, timeout: float = 2.0, segment: str | None = None
    ) -> bool:
        """True when a TCP connection from ``src`` to ``dst:port`` succeeds (at ``dst``'s
        address on ``segment``, for a lab of several)."""
        addr = self.addr(dst) if segment is None else self.cable_addr(dst, segment)
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({addr!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        return self.exec(src, sys.executable, "-c", code, check=False).returncode == 0


@contextlib.contextmanager
def lab(hosts: dict[str, str] | None = None) -> Iterator[Lab]:
    with Lab(hosts) as the_lab:
        yield the_lab
