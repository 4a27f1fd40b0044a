"""Bytes on the wire (issue 4): what crosses a server's cable, measured by the kernel.

* **Delta.** The next version of a 64 MiB package that changes about 1% of its bytes
  (scattered edits, one insertion that shifts a file, one renamed file) costs at most 3% of
  the package on the server's cable, and lands byte-identical.
* **Resume.** A transfer cut about half way (cable pulled, or agent SIGKILLed) resumes and
  moves less than 60% of the package on the cable after the cut, and lands byte-identical.

Every figure is ``rx + tx`` of dp1's cable (:meth:`Lab.link_bytes`): payload, framing,
TCP/IP headers, control calls and heartbeats included. Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.lab.netns import Lab

KiB = 1024
MiB = 1024 * KiB
SITE_PORT = 8700
AGENT_PORT = 8701
JOB_TIMEOUT = 120.0  # seconds any one distribution may take in these tests

# The package: one big file and a dozen of 0.5-3 MiB, 64 MiB of random (incompressible) bytes.
BIG_FILE = "data/big.bin"
SMALL_FILES = {
    f"{folder}/part-{n:02d}.bin": kib * KiB
    for n, (folder, kib) in enumerate(
        [
            ("lib", 1024), ("lib", 3072), ("lib", 1280), ("lib", 2816),
            ("res", 1536), ("res", 2560), ("res", 1792), ("res", 2304),
            ("plugins", 2048), ("plugins", 2048), ("plugins", 1152), ("plugins", 2944),
        ]
    )
}  # fmt: skip
PACKAGE_FILES = {BIG_FILE: 40 * MiB, **SMALL_FILES}  # 40 + 24 = 64 MiB

# The next version.
CHANGED_SHARE = 0.01  # scattered in-place edits: about 1% of the package's bytes...
EDITS = 100  # ...in this many edits of a few hundred bytes to a few KiB each
INSERTED = 5 * KiB + 123  # bytes inserted in the middle of BIG_FILE (the rest shifts)
RENAMED = ("res/part-05.bin", "share/moved/part-05.bin")  # moved unchanged
DELTA_BOUND = 0.03  # of the package size, on the server's cable

# The cut.
RATE = "100mbit"  # dp1's and the site's cables: 64 MiB take ~6 s
CUT_AT = 0.5  # share of the package received on dp1's cable when the cut comes
UNPLUGGED_FOR = 20.0  # > the 15 s stream read timeout: both ends give the transfer up
KILLED_FOR = 2.0  # seconds the agent stays dead
RESUME_BOUND = 0.60  # of the package size, on dp1's cable after the cut


# --- trees ----------------------------------------------------------------------------------


def make_package_tree(root: Path, seed: int = 4) -> Path:
    """The 64 MiB source tree (plus the harness's small files, dirs and symlinks)."""
    return h.make_tree(root, PACKAGE_FILES, seed=seed)


def package_bytes(root: Path) -> int:
    """Bytes of every regular file under ``root`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(Path(dirpath) / name)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


@dataclass
class Changes:
    """What :func:`make_next_version` did, for the report."""

    edits: int = 0
    edited_bytes: int = 0
    files_edited: int = 0
    inserted_bytes: int = 0


def make_next_version(v1: Path, v2: Path, seed: int = 5) -> Changes:
    """Copy ``v1`` to ``v2`` and change about 1% of it the way a new build does: scattered
    in-place edits, one insertion that shifts the rest of a big file, one file moved."""
    rnd = random.Random(seed)
    shutil.copytree(v1, v2, symlinks=True)
    changes = Changes()
    editable = {rel: size for rel, size in PACKAGE_FILES.items() if rel != RENAMED[0]}
    avg = int(CHANGED_SHARE * package_bytes(v1) / EDITS)
    touched: set[str] = set()
    for _ in range(EDITS):
        rel = rnd.choices(list(editable), weights=list(editable.values()))[0]
        length = rnd.randint(256, 2 * avg - 256)
        offset = rnd.randrange(editable[rel] - length)
        overwrite(v2 / rel, offset, rnd.randbytes(length))
        touched.add(rel)
        changes.edits += 1
        changes.edited_bytes += length
    changes.files_edited = len(touched)
    insert(v2 / BIG_FILE, PACKAGE_FILES[BIG_FILE] // 2, rnd.randbytes(INSERTED))
    changes.inserted_bytes = INSERTED
    src, dst = v2 / RENAMED[0], v2 / RENAMED[1]
    dst.parent.mkdir(parents=True)
    src.rename(dst)
    return changes


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def insert(path: Path, offset: int, data: bytes) -> None:
    content = path.read_bytes()
    path.write_bytes(content[:offset] + data + content[offset:])


# --- the lab cluster ------------------------------------------------------------------------


@contextlib.contextmanager
def site_and_dp1(lab: Lab, root: Path) -> Iterator[h.Cluster]:
    """A running site and dp1's agent, each in its namespace; logs printed on failure."""
    site = h.make_site(root, host=lab.addr("site"), port=SITE_PORT, netns=lab.ns("site"))
    agents = h.add_agents(
        site,
        root,
        ["dp1"],
        hosts={"dp1": lab.addr("dp1")},
        netns={"dp1": lab.ns("dp1")},
        port=AGENT_PORT,
    )
    cluster = h.Cluster(site, agents)
    try:
        h.start_all([site, agents["dp1"]])
        yield cluster
    except BaseException:
        print(cluster.dump_logs())
        raise
    finally:
        cluster.close()


def distribute_and_wait(site: h.Site, ref: str, server: str) -> dict[str, Any]:
    """``distribute REF --to SERVER --wait``; the job document, once it succeeded."""
    proc = h.run_cli(
        site.home,
        "distribute", ref, "--to", server, "--wait", "--timeout", str(JOB_TIMEOUT), "--json",
        check=False, timeout=JOB_TIMEOUT + 30,
    )  # fmt: skip
    assert proc.returncode == 0, f"distribute {ref} exited {proc.returncode}: {proc.stderr}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["state"] == "succeeded", h.describe_job({"id": doc["job"], **doc})
    return doc


def cable_total(lab: Lab, host: str) -> int:
    """``rx + tx`` bytes on ``host``'s cable so far."""
    rx, tx = lab.link_bytes(host)
    return rx + tx


def pct(n: int, of: int) -> str:
    return f"{100 * n / of:.2f}%"


# --- the tests ------------------------------------------------------------------------------


def test_next_version_with_one_percent_changed_costs_at_most_three_percent(
    lab: Lab, tmp_path: Path
) -> None:
    v1 = make_package_tree(tmp_path / "v1")
    v2 = tmp_path / "v2"
    changes = make_next_version(v1, v2)
    size = package_bytes(v2)
    with site_and_dp1(lab, tmp_path) as cluster:
        site, dp1 = cluster.site, cluster.agents["dp1"]
        site.create_package(v1, "app", "1.0")
        site.create_package(v2, "app", "2.0")
        distribute_and_wait(site, "app@1.0", "dp1")
        h.assert_same_tree(v1, dp1.package_dir("app", "1.0"))

        rx0, tx0 = lab.link_bytes("dp1")
        started = time.monotonic()
        doc = distribute_and_wait(site, "app@2.0", "dp1")
        took = time.monotonic() - started
        rx1, tx1 = lab.link_bytes("dp1")

        on_cable = (rx1 - rx0) + (tx1 - tx0)
        sent = h.instruction({"id": doc["job"], **doc}, "dp1")["bytes_sent"]
        print(
            f"\n[delta] package {size} B; changed: {changes.edits} edits in"
            f" {changes.files_edited} files, {changes.edited_bytes} B"
            f" ({pct(changes.edited_bytes, size)}), {changes.inserted_bytes} B inserted,"
            f" 1 file moved\n[delta] dp1 cable for app@2.0: rx {rx1 - rx0} B + tx {tx1 - tx0} B"
            f" = {on_cable} B = {pct(on_cable, size)} of the package"
            f" (bound {DELTA_BOUND:.0%}); job bytes_sent {sent}; {took:.1f}s"
        )
        assert on_cable <= DELTA_BOUND * size, (
            f"app@2.0 (about 1% changed) put {on_cable} B on dp1's cable:"
            f" {pct(on_cable, size)} of the {size} B package, bound {DELTA_BOUND:.0%}"
        )
        h.assert_same_tree(v2, dp1.package_dir("app", "2.0"))


@pytest.mark.parametrize("cut", ["cable-pulled", "agent-sigkilled"])
def test_transfer_cut_half_way_resumes_without_starting_over(
    lab: Lab, tmp_path: Path, cut: str
) -> None:
    tree = make_package_tree(tmp_path / "src")
    size = package_bytes(tree)
    lab.shape("dp1", RATE)
    lab.shape("site", RATE)
    with site_and_dp1(lab, tmp_path) as cluster:
        site, dp1 = cluster.site, cluster.agents["dp1"]
        site.create_package(tree, "app", "1.0")
        rx0, _ = lab.link_bytes("dp1")
        job_id = site.distribute("app@1.0", ["dp1"])

        h.wait_until(
            lambda: lab.link_bytes("dp1")[0] - rx0 >= CUT_AT * size,
            timeout=60,
            interval=0.02,
            message=lambda: f"half the package on dp1's cable; {h.describe_job(site.job(job_id))}",
        )
        at_cut = cable_total(lab, "dp1")
        received_before_cut = lab.link_bytes("dp1")[0] - rx0
        if cut == "cable-pulled":
            lab.unplug("dp1")
            time.sleep(UNPLUGGED_FOR)
            lab.replug("dp1")
        else:
            dp1.kill()
            time.sleep(KILLED_FOR)
            dp1.start()

        code = site.wait_job(job_id, timeout=JOB_TIMEOUT)
        doc = site.job(job_id)
        after_cut = cable_total(lab, "dp1") - at_cut
        i = h.instruction(doc, "dp1")
        print(
            f"\n[resume/{cut}] package {size} B; dp1 received {received_before_cut} B"
            f" ({pct(received_before_cut, size)}) before the cut; after the cut rx+tx"
            f" {after_cut} B = {pct(after_cut, size)} of the package (bound"
            f" {RESUME_BOUND:.0%}); attempts {i['attempts']}, last error {i['last_error']!r}"
        )
        assert code == 0, h.describe_job(doc)
        assert doc["state"] == "succeeded", h.describe_job(doc)
        if cut == "cable-pulled":  # out longer than any timeout: TCP cannot ride it out
            assert i["attempts"] >= 2, f"the cut interrupted nothing: {h.describe_job(doc)}"
        assert after_cut < RESUME_BOUND * size, (
            f"after a cut at {pct(received_before_cut, size)}, {after_cut} B crossed dp1's cable:"
            f" {pct(after_cut, size)} of the {size} B package, bound {RESUME_BOUND:.0%}"
        )
        h.assert_same_tree(tree, dp1.package_dir("app", "1.0"))
