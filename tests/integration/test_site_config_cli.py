"""``site init`` writes the operator password and a commented packdist.toml; ``site serve``
takes its settings from that file, the environment and its flags; ``site config`` shows them
with their source; ``site operator-password`` replaces the password on a running site."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests import harness as h
from tests.conftest import PACKDIST, run_packdist


def test_init_prints_password_once_and_writes_config(tmp_path: Path) -> None:
    home = tmp_path / "site"
    proc = run_packdist(home, "site", "init", "--name", "hq")
    lines = proc.stdout.splitlines()
    assert lines[0] == f"site hq created in {home.resolve()}"
    password = next(line.split()[-1] for line in lines if "operator password" in line)
    assert password.startswith("pdo_")
    assert password not in (home / "operator.json").read_text()
    assert (home / "operator.json").stat().st_mode & 0o077 == 0
    assert "[retry]" in (home / "packdist.toml").read_text()

    other = tmp_path / "site2"
    doc = json.loads(run_packdist(other, "site", "init", "--name", "hq2", "--json").stdout)
    assert doc["site"] == "hq2" and doc["operator_password"].startswith("pdo_")
    assert doc["operator_password"] != password


def _serve(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACKDIST_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [*PACKDIST, "--home", str(home), "site", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return err


def test_serve_listens_where_the_config_file_says(site_home: Path) -> None:
    port = h.free_port()
    (site_home / "packdist.toml").write_text(
        f'listen = "127.0.0.1:{port}"\nworkers = 4\n[retry]\ncap = "3s"\n'
    )
    doc = h.run_json(site_home, "site", "config")
    settings = doc["settings"]
    assert settings["listen"] == {
        "value": f"127.0.0.1:{port}",
        "source": "file",
        "file_key": "listen",
        "env": "PACKDIST_LISTEN",
        "flag": "--listen",
    }
    assert settings["retry_cap"]["value"] == 3.0 and settings["retry_cap"]["source"] == "file"
    assert settings["retry_factor"]["source"] == "default"

    proc = _serve(site_home)
    try:
        h.wait_until(
            lambda: h.healthy(f"https://127.0.0.1:{port}/healthz") or proc.poll() is not None,
            20,
            message=f"the site on port {port}",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        err = _stop(proc)
    assert f"dashboard at https://127.0.0.1:{port}/" in err

    # the environment beats the file, a flag beats both
    env_port, flag_port = h.free_port(), h.free_port()
    proc = run_packdist(
        site_home,
        "site",
        "config",
        "--json",
        "--workers",
        "2",
        env={"PACKDIST_LISTEN": f"127.0.0.1:{env_port}", "PACKDIST_WORKERS": "3"},
    )
    settings = json.loads(proc.stdout)["settings"]
    assert settings["listen"]["source"] == "env"
    assert settings["listen"]["value"] == f"127.0.0.1:{env_port}"
    assert settings["workers"] == {**settings["workers"], "value": 2, "source": "flag"}

    proc = _serve(
        site_home, "--listen", f"127.0.0.1:{flag_port}", env={"PACKDIST_LISTEN": "x"}
    )  # an invalid env value is overridden by the flag, so it does not matter
    try:
        h.wait_until(
            lambda: h.healthy(f"https://127.0.0.1:{flag_port}/healthz") or proc.poll() is not None,
            20,
        )
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_bad_config_is_a_one_line_error_naming_the_file(site_home: Path) -> None:
    (site_home / "packdist.toml").write_text("[retry]\nintial = 1\n")
    for args in (["site", "serve"], ["site", "config"]):
        proc = run_packdist(site_home, *args, check=False, timeout=30)
        assert proc.returncode == 2, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "packdist.toml" in lines[0] and "retry.initial" in lines[0]
    (site_home / "packdist.toml").write_text("")
    proc = run_packdist(site_home, "site", "serve", "--workers", "0", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "packdist: --workers must be at least 1 (got '0')"
    )


def test_new_operator_password_takes_effect_on_a_running_site(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    try:
        site.start()
        old = site.operator_password
        assert site.operator_get("/api/overview")[0] == 200
        doc = site.json("site", "operator-password")
        site.operator_password = doc["operator_password"]
        assert site.operator_password != old
        assert site.operator_get("/api/overview")[0] == 200
        stale = {"Authorization": f"Bearer {old}"}
        assert h.http_get(f"{site.url}/api/overview", headers=stale)[0] == 401
    finally:
        site.close()
