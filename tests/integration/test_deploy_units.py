"""The systemd units in ``deploy/`` load without a warning and keep their hardening, scored
by systemd itself (``systemd-analyze security --offline``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ["packdist-site.service", "packdist-agent.service"]
MOST_EXPOSURE = 2.5  # systemd's scale: 0 (locked down) to 10; "OK" is below 3

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _installed(unit: str, folder: Path) -> Path:
    """The unit as installed, its ExecStart pointing at this checkout's packdist."""
    packdist = Path(sys.executable).with_name("packdist")
    text = (DEPLOY / unit).read_text().replace("/opt/packdist/bin/packdist", str(packdist))
    path = folder / unit
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_a_deployment_unit_loads_without_a_warning(unit: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(_installed(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert unit not in proc.stderr, proc.stderr  # "Unknown key …, ignoring" and the like


@pytest.mark.parametrize("unit", UNITS)
def test_a_deployment_unit_runs_its_service_locked_down(unit: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_installed(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MOST_EXPOSURE, proc.stdout
    text = (DEPLOY / unit).read_text()
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet="):
        assert f"\n{setting}\n" in text, setting


def test_the_site_and_the_agent_run_as_users_of_their_own() -> None:
    users = {re.search(r"\nUser=(\S+)\n", (DEPLOY / u).read_text()).group(1) for u in UNITS}  # type: ignore[union-attr]
    assert len(users) == len(UNITS), "an agent on the site's machine could read its keys"
    sysusers = (DEPLOY / "packdist.sysusers").read_text()
    assert all(f"\nu {user} " in sysusers for user in users), sysusers
