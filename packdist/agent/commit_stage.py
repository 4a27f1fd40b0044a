"""The last stage of an install: put the staged tree in place, so that a server holds
the whole version or none of it, and, at start-up, settle a put-in-place a crash
interrupted (the journal and the inode decide which way round the trees are).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from packdist.agent.home import SWAP_SUFFIX, AgentHome, delete_quietly
from packdist.agent.install_record import Install
from packdist.core.fsutil import exchange, fsync_dir, syncfs, write_atomic
from packdist.core.manifest import Manifest
from packdist.core.tree_shape import finish_entries

log = logging.getLogger("packdist.agent")

STAGING_TTL = 7 * 24 * 3600  # an unfinished staging tree untouched this long is dropped


def recover(home: AgentHome) -> None:
    """Start-up recovery: settle renames a crash interrupted, then drop staging trees of
    versions installed since, layouts left by a crash and trees abandoned for a week;
    keep the others so their installs resume.

    Putting a version in place is journalled. Before ``staging/<id>`` is renamed to
    ``packages/NAME/VERSION`` (or, when a tree is already there, exchanged with it in one
    atomic ``renameat2(RENAME_EXCHANGE)``), ``staging/<id>.swap`` records the staged
    tree's device and inode; it is removed once the new version is recorded in
    ``installed.json``. A journal found here means a crash (or a failure) came between
    the two, and the inode settles which way round the trees are:

    * the installed path carries the staged inode: the rename or exchange happened, so
      the new version is in place and is recorded now; ``staging/<id>`` then holds the
      version it replaced and is dropped -- only now that its successor is recorded;
    * otherwise nothing moved: ``staging/<id>`` is still the complete new tree and is
      kept, so the install resumes and finishes without fetching anything.

    Nothing dropped is ever the only copy of an installed version: the exchange keeps a
    whole tree at ``packages/NAME/VERSION`` at every instant (there is no moment without
    one, as there was with two renames), a layout or abandoned staging tree is not
    installed anywhere, and ``staging/<id>`` with ``<id>`` recorded is a replaced tree.
    """
    for journal in sorted(home.staging.glob(f"*{SWAP_SUFFIX}")):
        settle(home, journal)
    installed = set(home.installed().values())
    too_old = time.time() - STAGING_TTL
    for leftover in home.staging.iterdir():
        name = leftover.name
        if (
            name.startswith(".")  # a journal's temporary (write_atomic)
            or name.startswith("old-")  # a swap left by earlier versions of the agent
            or ".layout-" in name
            or name in installed
            or leftover.lstat().st_mtime < too_old
        ):
            delete_quietly(leftover)


def journal_of(home: AgentHome, package_id: str) -> Path:
    """The journal of putting ``package_id`` in place (see :func:`recover`)."""
    return home.staging / f"{package_id}{SWAP_SUFFIX}"


def settle(home: AgentHome, journal: Path) -> bool:
    """Settle an interrupted rename into place (see :func:`recover`); True if the new
    version turned out to be in place (and is now recorded)."""
    package_id = journal.name.removesuffix(SWAP_SUFFIX)
    staged = home.staging / package_id
    try:
        info = json.loads(journal.read_bytes())
        ref, dev, ino = str(info["ref"]), int(info["dev"]), int(info["ino"])
        name, version = ref.split("@", 1)
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        # write_atomic never leaves half a journal; if one is unreadable anyway, which
        # side holds what cannot be told, and the staged side is never the only copy of
        # an installed version (one whole tree is always in place): drop it.
        log.warning("unreadable journal %s: dropping %s", journal, staged)
        delete_quietly(staged)
        journal.unlink(missing_ok=True)
        return False
    try:
        st = os.lstat(home.package_dir(name, version))
        moved = (st.st_dev, st.st_ino) == (dev, ino)
    except FileNotFoundError:
        moved = False
    if moved:
        home.record_installed(ref, package_id)
        log.info("%s: finished putting %s in place after a crash", ref, package_id[:12])
    journal.unlink(missing_ok=True)
    if moved:
        delete_quietly(staged)  # the replaced version, now that its successor is recorded
    return moved


def put_in_place(home: AgentHome, inst: Install, manifest: Manifest, staging: Path) -> None:
    """Modes, times and symlinks, ``syncfs``, then one rename (or exchange) of the
    staging tree into ``packages/NAME/VERSION``, journalled (see :func:`recover`)."""
    finish_entries(staging, manifest, inst.tick)
    syncfs(home.root)
    final = home.package_dir(manifest.name, manifest.version)
    final.parent.mkdir(parents=True, exist_ok=True)
    home.save_manifest(manifest.id.hex, manifest.canonical())
    # Journal first (see recover): which inode is the new tree, in case we die midway.
    st = os.lstat(staging)
    journal = journal_of(home, manifest.id.hex)
    write_atomic(
        journal,
        json.dumps({"ref": manifest.ref, "dev": st.st_dev, "ino": st.st_ino}).encode(),
    )
    replacing = os.path.lexists(final)
    if replacing:  # an unrecorded or different tree: exchange, never mix nor leave a gap
        exchange(staging, final)
    else:
        os.rename(staging, final)
    if inst.view is not None:  # peers read the chunks from where the tree is now
        inst.view.root = final
    fsync_dir(final.parent)
    fsync_dir(staging.parent)
    inst.tick()
    home.record_installed(manifest.ref, manifest.id.hex)
    journal.unlink()
    if replacing:
        delete_quietly(staging)  # the replaced tree, dropped once its successor is recorded
