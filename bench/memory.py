"""The test VM's memory, set alike for every method before its timed run (``--memory``).

The project's VM hands free memory back to its host within a second or two (free page
reporting: ``/sys/module/page_reporting``). A file system write that grows the page cache
into memory handed back costs the writer about 2.6 s of kernel time per GiB, the host
faulting each page in again; writing into page cache freed a moment before costs 0.2 s
(measured with ``dd`` of 1 GiB: 2.6-2.8 s against 0.19-0.21 s). Which one a method gets
depends on what ran just before it: left alone, an rsync started right after the page cache
was dropped writes into the pages the drop freed, while packdist's agent, started a
second later, writes into memory the host has taken back. So before each timed run, every
method gets the same state:

* ``idle``: wait :data:`IDLE_SECONDS` first, as a server that has been idle meets it: by
  then part of the memory freed before is back with the host (a ``dd`` of 1 GiB so
  started took 0.58-1.03 s; the cost is only paid in full, 2.6 s, by writes that grow the
  page cache beyond what was freed lately, and no method here does);
* ``recycled``: write and delete a scratch file of the run's size on the target's file
  system just before the run starts, so its writes reuse those pages while they are warm.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STATES = {"idle": ["idle"], "recycled": ["recycled"], "both": ["idle", "recycled"]}
IDLE_SECONDS = 5.0  # by then, part of the memory freed before a run is back with the host
MARGIN = 128 * 1024 * 1024  # scratch bytes beyond the run's writes (metadata, buffers)
BLOCK = 4 * 1024 * 1024


def set_memory(state: str, folder: Path, nbytes: int) -> None:
    """Put the machine's memory in ``state`` for a run that writes ``nbytes`` in ``folder``
    (untimed)."""
    if state == "idle":
        time.sleep(IDLE_SECONDS)
        return
    if state != "recycled":
        raise ValueError(f"unknown memory state {state!r}")
    scratch = folder / ".bench-scratch"
    block = b"\0" * BLOCK
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range((nbytes + MARGIN) // BLOCK + 1):
            os.write(fd, block)
    finally:
        os.close(fd)
        scratch.unlink()  # its page cache is freed now, and still warm for a moment
