"""The agent's active versions alone (agent/activation.py), on a real home: the switch of
``packages/NAME/current`` is one rename, only an installed version can be made active, the
active one is not removed, and what a crash leaves is cleared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from packdist.agent import activation
from packdist.agent.home import AgentHome
from packdist.errors import UserError
from packdist.protocol.messages import ActivateAnswer, ActivateRequest, Heartbeat

PID1, PID2 = "a" * 64, "b" * 64


def _home(tmp_path: Path) -> AgentHome:
    home = AgentHome(tmp_path / "agent")
    home.prepare()
    for version, pid in (("1.0", PID1), ("2.0", PID2)):
        (home.package_dir("app", version) / "bin").mkdir(parents=True)
        (home.package_dir("app", version) / "bin" / "run").write_text(version)
        home.record_installed(f"app@{version}", pid)
    return home


def test_activating_points_current_at_the_version_and_says_which_was_active(
    tmp_path: Path,
) -> None:
    home = _home(tmp_path)
    assert activation.activate(home, "app@1.0", PID1) == activation.Activated("app@1.0", None)
    link = home.packages / "app" / "current"
    assert os.readlink(link) == "1.0"  # relative: the home can move
    assert (link / "bin" / "run").read_text() == "1.0"
    assert activation.activate(home, "app@2.0", PID2).previous == "1.0"
    assert (link / "bin" / "run").read_text() == "2.0"
    assert activation.active_packages(home, home.installed()) == {"app@2.0": PID2}
    # the same again changes nothing
    assert activation.activate(home, "app@2.0", PID2).previous == "2.0"


def test_the_switch_is_one_rename_over_the_old_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader sees the old version or the new one: never a moment without ``current``."""
    home = _home(tmp_path)
    activation.activate(home, "app@1.0", PID1)
    seen: list[str] = []
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        seen.append(os.readlink(home.packages / "app" / "current"))  # still there, still old
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    activation.activate(home, "app@2.0", PID2)
    assert seen == ["1.0"]
    assert os.readlink(home.packages / "app" / "current") == "2.0"


@pytest.mark.parametrize(
    ("ref", "pid"), [("app@3.0", PID1), ("app@1.0", PID2), ("other@1.0", PID1)]
)
def test_only_a_version_installed_here_with_that_id_is_made_active(
    tmp_path: Path, ref: str, pid: str
) -> None:
    home = _home(tmp_path)
    with pytest.raises(UserError, match=f"{ref} is not installed on this agent"):
        activation.activate(home, ref, pid)
    assert not os.path.lexists(home.packages / "app" / "current")


def test_the_active_version_is_not_removed_and_the_others_are(tmp_path: Path) -> None:
    home = _home(tmp_path)
    activation.activate(home, "app@2.0", PID2)
    with pytest.raises(UserError, match=r"app@2\.0 is the active version of app"):
        activation.refuse_removal_of_active(home, "app@2.0")
    activation.refuse_removal_of_active(home, "app@1.0")  # not active: no refusal


def test_a_link_the_agent_did_not_make_counts_as_no_active_version(tmp_path: Path) -> None:
    home = _home(tmp_path)
    os.symlink("/etc", home.packages / "app" / "current")
    assert activation.active_version(home, "app") is None
    assert activation.active_packages(home, home.installed()) == {}
    activation.activate(home, "app@1.0", PID1)  # and it is replaced by a real activation
    assert activation.active_version(home, "app") == "1.0"


def test_a_temporary_link_a_crash_left_is_cleared(tmp_path: Path) -> None:
    home = _home(tmp_path)
    left = home.packages / "app" / f"{activation.TEMPORARY_PREFIX}0123"
    os.symlink("2.0", left)
    activation.clear_leftovers(home)
    assert not os.path.lexists(left)
    assert home.installed() == {"app@1.0": PID1, "app@2.0": PID2}


def test_the_messages_of_an_activation_round_trip_and_refuse_what_is_malformed() -> None:
    asked = ActivateRequest(PID1, "app@1.0")
    assert ActivateRequest.from_json(asked.to_json()) == asked
    with pytest.raises(UserError, match="malformed activate request"):
        ActivateRequest.from_json({"package_id": PID1, "package": "app@current"})
    answer = ActivateAnswer("app@1.0", "0.9")
    assert ActivateAnswer.from_json(answer.to_json()) == answer
    with pytest.raises(UserError):
        ActivateAnswer.from_json({"state": "installed", "package": "app@1.0"})
    beat = Heartbeat("boot", 5, [PID1, PID2], [PID2])
    assert Heartbeat.from_json(beat.to_json()) == beat
    assert Heartbeat.from_json({"boot_id": "b", "installed": []}).active == []  # an older agent
