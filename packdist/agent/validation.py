"""Validation: re-hash installed trees against the manifests they were installed from.

Every entry of the manifest is checked in ``packages/NAME/VERSION/``: a directory must be a
directory, a symlink a symlink with the same target, a file a regular file of the same size,
executable bit and chunk digests. Files are read chunk by chunk (constant memory). Then the
tree is walked for what the manifest does not list: each such entry is ``added`` (a directory
once, not everything inside it), since the package is exactly its manifest and a repair
takes the extra entries away. The walk has no depth limit (:func:`fsutil.walk_tree`).

Blocking (it reads every byte): run it in a thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from packdist.agent.home import AgentHome
from packdist.core.fsutil import walk_tree
from packdist.core.manifest import Entry, EntryType, Manifest
from packdist.errors import PackdistError

MISSING = "missing"
ALTERED = "altered"
TYPE_CHANGED = "type changed"
MODE_CHANGED = "mode changed"
ADDED = "added"  # in the tree, not in the manifest
UNREADABLE = "unreadable"  # the agent cannot look at it (permissions, I/O error, ...)

Problem = dict[str, str]


def validate_installed(
    home: AgentHome, package_ids: list[str] | None = None, skip: set[str] | None = None
) -> list[dict[str, Any]]:
    """``[{"package_id", "package", "ok", "problems": [{"path", "problem"}]}]`` for every
    installed version (or only those whose id is in ``package_ids``; never those in ``skip``,
    being installed or repaired right now), sorted by package."""
    wanted = set(package_ids) if package_ids else None
    results = []
    for ref, pid in sorted(home.installed().items()):
        if (wanted is not None and pid not in wanted) or pid in (skip or set()):
            continue
        problems = validate_tree(home, ref, pid)
        results.append(
            {"package_id": pid, "package": ref, "ok": not problems, "problems": problems}
        )
    return results


def validate_tree(home: AgentHome, ref: str, package_id: str) -> list[Problem]:
    """The problems of one installed version (empty: it matches its manifest)."""
    data = home.load_manifest(package_id)
    if data is None:
        return [{"path": ".", "problem": "manifest missing"}]
    try:
        manifest = Manifest.parse(data)
    except PackdistError:
        return [{"path": ".", "problem": "manifest unreadable"}]
    if manifest.id.hex != package_id:
        return [{"path": ".", "problem": "manifest altered"}]
    root = home.package_dir(manifest.name, manifest.version)
    problems: list[Problem] = []
    for entry in manifest.entries:
        problem = check_entry(root, entry)
        if problem is not None:
            problems.append({"path": entry.path, "problem": problem})
    problems += added_entries(root, manifest)
    return sorted(problems, key=lambda p: p["path"].encode())


def added_entries(root: Path, manifest: Manifest) -> list[Problem]:
    """Entries of the tree at ``root`` that the manifest does not list (below an added
    directory, only the directory itself), each ``added``."""
    listed = {e.path for e in manifest.entries}
    dirs = {e.path for e in manifest.entries if e.type is EntryType.DIR}
    added: list[Problem] = []
    try:
        for _fd, rel, entries in walk_tree(root):
            below = []  # listed directories: walked into next
            for e in entries:
                path = f"{rel}/{e.name}" if rel else e.name
                if path in dirs:
                    below.append(e)
                elif path not in listed:
                    # a name that is not UTF-8 is shown as \xff: the report is JSON text
                    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                    added.append({"path": shown, "problem": ADDED})
            entries[:] = below  # nothing below an added entry, a file or a link is walked
    except FileNotFoundError:
        pass  # the whole tree is gone: every entry is already reported missing
    except OSError as exc:  # e.g. the root turned into a symlink: the tree is not what it was
        added.append({"path": ".", "problem": f"{UNREADABLE} ({exc.strerror or exc})"})
    return added


def check_entry(root: os.PathLike[str] | str, entry: Entry) -> str | None:
    """What is wrong with one entry of an installed tree, or None."""
    path = os.path.join(root, entry.path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return MISSING
    except NotADirectoryError:  # a parent turned into a file
        return MISSING
    except OSError as exc:
        return f"{UNREADABLE} ({exc.strerror or exc})"
    if entry.type is EntryType.DIR:
        return None if stat.S_ISDIR(st.st_mode) else TYPE_CHANGED
    if entry.type is EntryType.SYMLINK:
        if not stat.S_ISLNK(st.st_mode):
            return TYPE_CHANGED
        return None if os.readlink(path) == entry.target else ALTERED
    if not stat.S_ISREG(st.st_mode):
        return TYPE_CHANGED
    if st.st_size != entry.size:
        return ALTERED
    try:
        with open(path, "rb", buffering=0) as f:
            for c in entry.chunks:
                data = f.read(c.size)
                while len(data) < c.size:
                    more = f.read(c.size - len(data))
                    if not more:
                        return ALTERED
                    data += more
                if not c.digest.holds(data):
                    return ALTERED
    except PermissionError:
        return ALTERED
    except OSError as exc:
        return f"{UNREADABLE} ({exc.strerror or exc})"
    if bool(st.st_mode & stat.S_IXUSR) != entry.executable:
        return MODE_CHANGED
    return None
