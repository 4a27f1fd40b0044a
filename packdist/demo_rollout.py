"""The demo's rollout: version 2.0 goes out in waves, each server running the package's
own self-test before it switches; the server where it fails keeps 1.0 active, the rollout
pauses, and the wave after it receives nothing until an operator mends and resumes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packdist.demo import Demo

SELFTEST = """#!/bin/sh
# the package's own health check: the agent runs it in the new tree before the switch
if [ -e "$PACKDIST_TREE/../../../data-not-mounted" ]; then
  echo "self-test: /data is not mounted"; exit 1
fi
echo "self-test passed"
"""


def _rollout(demo: Demo, rollout_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(demo.run("rollout", "show", rollout_id, "--json", show=False))
    return doc


def _until(demo: Demo, rollout_id: str, states: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _rollout(demo, rollout_id)["state"] not in states:
        if time.monotonic() > deadline:
            raise SystemExit(f"rollout {rollout_id} did not reach {', '.join(sorted(states))}")
        time.sleep(0.5)


def _active(demo: Demo) -> None:
    for name in ("dp1", "dp2", "dp3"):
        link = demo.root / name / "packages" / "app" / "current"
        print(f"  {name}: packages/app/current -> {os.readlink(link)}")


def rollout_story(demo: Demo, src: Path) -> None:
    from packdist.demo import say

    say("Version 1.0 becomes the active version everywhere (packages/app/current)")
    demo.run("activate", "app@1.0", "--to", "dp1,dp2,dp3", "--wait")
    src2 = demo.root / "src-2.0"
    shutil.copytree(src, src2, symlinks=True)
    (src2 / "share" / "doc" / "README.txt").write_text("packdist demo package, 2.0\n" * 200)
    (src2 / "bin" / "selftest").write_text(SELFTEST)
    (src2 / "bin" / "selftest").chmod(0o755)
    say("Version 2.0 is imported; its new chunks' deltas against 1.0 are prepared at once")
    demo.run("package", "create", str(src2), "--name", "app", "--version", "2.0")
    marker = demo.root / "dp3" / "data-not-mounted"
    marker.write_text("")
    say(
        "app@2.0 rolls out in waves (dp1, then dp3, then dp2); dp3 is broken in a way only 2.0 notices"
    )
    created = demo.run(
        "rollout", "create", "app@2.0", "--to", "dp1,dp3,dp2", "--waves", "1,2,100%",
        "--activate", "--health-check", "bin/selftest", "--json", show=False,
    )  # fmt: skip
    rollout_id = json.loads(created)["rollout"]
    print(
        "$ packdist rollout create app@2.0 --to dp1,dp3,dp2 --waves 1,2,100% --activate"
        f" --health-check bin/selftest\nrollout {rollout_id}"
    )
    _until(demo, rollout_id, {"paused", "succeeded"})
    say("dp3's self-test failed: it keeps 1.0 active, the rollout paused, dp2 got nothing")
    demo.run("rollout", "show", rollout_id)
    _active(demo)
    say("/data is mounted on dp3: retry its wave, and resume the rollout")
    marker.unlink()
    wave2 = _rollout(demo, rollout_id)["waves"][1]["job"]
    demo.run("job", "retry", wave2)
    demo.run("rollout", "resume", rollout_id)
    _until(demo, rollout_id, {"succeeded"})
    demo.run("rollout", "show", rollout_id)
    _active(demo)
