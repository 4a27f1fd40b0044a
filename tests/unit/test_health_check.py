"""The health check before an activation (agent/health_check.py, activation.activate_checked)
on a real home with real programs: a check that passes lets the switch happen, one that
fails, hangs or names something outside the package leaves the active version as it was."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from packdist.agent import activation
from packdist.agent.health_check import run_health_check
from packdist.agent.home import AgentHome
from packdist.errors import ErrorKind, HealthCheckFailed, UserError
from packdist.protocol.messages import ActivateRequest

PID1, PID2 = "a" * 64, "b" * 64


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _home(tmp_path: Path, check_body: str) -> AgentHome:
    home = AgentHome(tmp_path / "agent")
    home.prepare()
    for version, pid in (("1.0", PID1), ("2.0", PID2)):
        _script(home.package_dir("app", version) / "bin" / "check", check_body)
        home.record_installed(f"app@{version}", pid)
    activation.activate(home, "app@1.0", PID1)
    return home


def _activate(home: AgentHome, *check: str, timeout: float = 10) -> activation.Activated:
    asked = ActivateRequest(PID2, "app@2.0", tuple(check), timeout)
    return asyncio.run(activation.activate_checked(home, asked))


def test_a_passing_check_lets_the_new_version_become_active(tmp_path: Path) -> None:
    home = _home(tmp_path, 'test "$PACKDIST_PACKAGE" = app@2.0 && test -f bin/check')
    assert _activate(home, "bin/check").previous == "1.0"
    assert activation.active_version(home, "app") == "2.0"


def test_a_failing_check_keeps_the_previous_version_active_and_says_why(tmp_path: Path) -> None:
    home = _home(tmp_path, 'echo "port 8080 did not answer" >&2; exit 3')
    with pytest.raises(HealthCheckFailed) as failed:
        _activate(home, "bin/check", "--quick")
    assert failed.value.kind is ErrorKind.HEALTH
    assert failed.value.message == "health check bin/check exited 3: port 8080 did not answer"
    assert activation.active_version(home, "app") == "1.0"


def test_a_check_that_hangs_is_killed_with_its_children_at_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "child-pid"
    home = _home(tmp_path, f"sleep 60 & echo $! > {marker}; wait")
    with pytest.raises(HealthCheckFailed, match=r"did not finish within 0\.5s"):
        _activate(home, "bin/check", timeout=0.5)
    assert activation.active_version(home, "app") == "1.0"
    child = int(marker.read_text())
    assert h_gone(child), f"the check's child {child} is still running"


def h_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that never reaps it (as in a container whose
    first process does not): not running, either way."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_check_that_leaves_a_daemon_holding_its_output_is_judged_by_its_exit(
    tmp_path: Path,
) -> None:
    home = _home(tmp_path, "sleep 30 & echo started; exit 0")
    started = time.monotonic()
    assert _activate(home, "bin/check", timeout=10).previous == "1.0"
    assert time.monotonic() - started < 5  # not held until the daemon's output ends


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["/bin/true"], "not a program inside the package"),
        (["../1.0/bin/check"], "not a program inside the package"),
        (["bin/nothing"], "the package has no such file"),
        (["bin"], "not an executable file"),
    ],
)
def test_a_check_outside_the_package_or_not_a_program_is_refused(
    tmp_path: Path, argv: list[str], words: str
) -> None:
    home = _home(tmp_path, "exit 0")
    with pytest.raises(HealthCheckFailed, match=words):
        asyncio.run(run_health_check(home.packages / "app" / "2.0", "app@2.0", argv, 5))


def test_a_version_already_active_is_not_checked_again(tmp_path: Path) -> None:
    home = _home(tmp_path, "exit 1")
    activation.activate(home, "app@2.0", PID2)
    assert _activate(home, "bin/check").previous == "2.0"


def test_a_check_of_a_version_not_installed_is_refused(tmp_path: Path) -> None:
    home = _home(tmp_path, "exit 0")
    asked = ActivateRequest("c" * 64, "app@3.0", ("bin/check",), 5)
    with pytest.raises(UserError, match="not installed on this agent"):
        asyncio.run(activation.activate_checked(home, asked))


def test_an_activate_request_carries_its_check_and_refuses_a_malformed_one() -> None:
    asked = ActivateRequest(PID1, "app@1.0", ("bin/check", "-q"), 30.0)
    assert ActivateRequest.from_json(asked.to_json()) == asked
    plain = {"package_id": PID1, "package": "app@1.0"}
    assert ActivateRequest.from_json(plain).check == ()  # an older site sends none
    with pytest.raises(UserError, match="check must be a short list of words"):
        ActivateRequest.from_json({**plain, "check": "bin/check"})
    with pytest.raises(UserError, match="check_timeout must be seconds"):
        ActivateRequest.from_json({**plain, "check": ["x"], "check_timeout": -1})
