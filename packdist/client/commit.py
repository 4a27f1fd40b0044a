"""The last stage of a fetch: the staged tree put in DIR in one step.

Modes, times and symlinks are set in the staging tree, the file system is synced, then:

* DIR absent: one ``rename`` of the staging tree to DIR;
* DIR there: one ``renameat2(RENAME_EXCHANGE)`` of the two trees (DIR is at every instant
  one whole version, the old or the new: nobody reading it sees a mix or a gap), then the
  old tree, now in the staging place, is removed. Where the file system cannot exchange
  (``EINVAL``: some network and FUSE file systems), the old tree is renamed aside first,
  then the new one in: DIR is missing for that moment, never mixed.

Then the record of what DIR holds (``.DIR.packdist-manifest``) is written, for the next
fetch to reuse its chunks. A crash between the exchange and the record leaves a record of
the older version: the next fetch verifies every chunk it takes from DIR, so it only
costs a fetch of what no longer matches.
"""

from __future__ import annotations

import errno
import os

from packdist.client.staging import Places
from packdist.core.fsutil import exchange, fsync_dir, remove_tree, syncfs, write_atomic
from packdist.core.manifest import Manifest
from packdist.core.tree_shape import finish_entries


def put_in_place(places: Places, manifest: Manifest) -> None:
    tree = places.tree
    finish_entries(tree, manifest)
    os.chmod(tree, 0o755)
    # the staging place stops naming this version before the swap: after it, what lies
    # there is DIR's old tree, which a rerun must never take for a half-fetched new one
    (places.staging / "package").unlink(missing_ok=True)
    syncfs(tree)
    fsync_dir(places.staging)
    into = places.into
    if not os.path.lexists(into):
        os.rename(tree, into)
    else:
        try:
            exchange(tree, into)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            # a file system (or C library) that cannot exchange: the old tree aside, then
            # the new one in; DIR is missing between the two renames, never mixed
            os.rename(into, places.staging / "replaced")
            os.rename(tree, into)
    fsync_dir(into.parent)
    write_atomic(places.record, manifest.canonical(), 0o644)
    remove_tree(places.staging)  # the replaced tree, if there was one
