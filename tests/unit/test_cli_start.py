"""What the command line loads before it does anything: the commands operators and scripts
run most (``distribute``, ``job``, ``status``) start in a fresh interpreter, so every module
they import is paid at each call. The HTTP client (aiohttp, ~130 ms to import here), the
event loop (asyncio, ~18 ms) and X.509 and signatures (cryptography, ~20 ms) are the agent's
and the site server's, not theirs."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "asyncio", "cryptography", "uvloop", "zstandard")


# (``server`` loads X.509 itself: a token carries the fingerprint of the site's authority)
@pytest.mark.parametrize("module", ["packdist.cli.job_cmds", "packdist.cli.event_cmds"])
def test_the_commands_that_read_and_write_the_store_start_without_the_http_client(
    module: str,
) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "", f"{module} loads {loaded} (see tests/unit/test_cli_start.py)"
