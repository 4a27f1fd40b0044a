"""Validation: re-hash installed trees against the manifests they were installed from.

Every entry of the manifest is checked in ``packages/NAME/VERSION/``: a directory must be a
directory, a symlink a symlink with the same target, a file a regular file of the same size,
executable bit and chunk digests. Files are read chunk by chunk (constant memory). Extra
files are not looked for: the manifest says what the package is, not what else may be there.

Blocking (it reads every byte): run it in a thread.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from packdist.agent.home import AgentHome
from packdist.core.digest import Digest
from packdist.core.manifest import Entry, EntryType, Manifest
from packdist.errors import PackdistError

MISSING = "missing"
ALTERED = "altered"
TYPE_CHANGED = "type changed"
MODE_CHANGED = "mode changed"

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
    return problems


def check_entry(root: os.PathLike[str] | str, entry: Entry) -> str | None:
    """What is wrong with one entry of an installed tree, or None."""
    path = os.path.join(root, entry.path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return MISSING
    except NotADirectoryError:  # a parent turned into a file
        return MISSING
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
                if Digest.of(data) != c.digest:
                    return ALTERED
    except PermissionError:
        return ALTERED
    if bool(st.st_mode & stat.S_IXUSR) != entry.executable:
        return MODE_CHANGED
    return None
