"""The health check of a version before it becomes active: a program of the package itself,
run in its installed tree, that must exit 0 within its time.

Only a program inside the package can be named (a relative path that stays in the tree,
to an executable regular file), so what runs is what the site signed and this agent
verified, no more than it would run once active. It runs in its own process group with
the tree as its working folder, no input, a plain environment (``PATH``, and
``PACKDIST_PACKAGE``/``PACKDIST_TREE`` to know where it is), and is killed with its
children when its time is up. A failure words the exit and the last lines it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import IO

from packdist.errors import HealthCheckFailed
from packdist.protocol.messages import MAX_CHECK_TIMEOUT

KEEP_OUTPUT = 4096  # bytes of its output kept for the words of a failure
PATH = "/usr/local/bin:/usr/bin:/bin"


def program(tree: Path, argv: list[str]) -> Path:
    """The program ``argv[0]`` names, checked to be an executable file of the tree."""
    if not argv or not argv[0]:
        raise HealthCheckFailed("health check: no program named")
    name = argv[0]
    found = (tree / name).resolve()
    root = tree.resolve()
    if Path(name).is_absolute() or not found.is_relative_to(root):
        raise HealthCheckFailed(f"health check {name!r}: not a program inside the package")
    try:
        mode = found.stat().st_mode
    except OSError:
        raise HealthCheckFailed(f"health check {name!r}: the package has no such file") from None
    if not stat.S_ISREG(mode) or not mode & stat.S_IXUSR:
        raise HealthCheckFailed(f"health check {name!r}: not an executable file")
    return found


async def run_health_check(tree: Path, ref: str, argv: list[str], timeout: float) -> None:
    """Run the check; HealthCheckFailed (kind ``health``) unless it exits 0 in time."""
    path = program(tree, argv)
    timeout = min(max(timeout, 0.1), MAX_CHECK_TIMEOUT)
    env = {"PATH": PATH, "PACKDIST_PACKAGE": ref, "PACKDIST_TREE": str(tree), "LANG": "C.UTF-8"}
    # its output goes to a file, not a pipe: its exit decides, and a daemon it started that
    # keeps the output open must not hold the agent's answer
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            *argv[1:],
            cwd=tree,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own group: killed with whatever it started
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill(proc.pid)
            await proc.wait()
            raise HealthCheckFailed(
                f"health check {argv[0]} did not finish within {timeout:g}s{_said(_tail(output))}"
            ) from None
        except asyncio.CancelledError:
            _kill(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        finally:
            _kill(proc.pid)  # what it left running goes with it
        if proc.returncode != 0:
            how = (
                f"was killed by signal {-proc.returncode}"
                if proc.returncode is not None and proc.returncode < 0
                else f"exited {proc.returncode}"
            )
            raise HealthCheckFailed(f"health check {argv[0]} {how}{_said(_tail(output))}")


def _tail(output: IO[bytes]) -> bytes:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - KEEP_OUTPUT))
    return output.read()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _said(output: bytes) -> str:
    """``: <its last line>`` (what a failing check usually explains itself with)."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1][:200]}" if lines else ""
