"""``packdist site init`` through the real command: what a new site home holds, and refusals."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from packdist.auth import token_fingerprint
from packdist.core import tls
from packdist.core.signing import SigningKey
from tests.conftest import run_packdist


def _files(root: Path) -> list[tuple[str, int]]:
    """Every file under ``root`` with its size (the site's state as seen on disk)."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out.append((str(p.relative_to(root)), p.lstat().st_size))
    return sorted(out)


def _assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_init_creates_database_library_and_key(tmp_path: Path) -> None:
    home = tmp_path / "site"
    proc = run_packdist(home, "site", "init", "--name", "hq")
    assert proc.stderr == ""
    assert "hq" in proc.stdout

    library = home / "library"
    assert library.is_dir()
    shards = sorted(p.name for p in library.iterdir())
    assert shards == [f"{i:02x}" for i in range(256)]
    assert all(not any((library / s).iterdir()) for s in shards)  # no chunks yet

    key = home / "site.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_uid == os.geteuid()
    signing = SigningKey.load(key)  # a loadable Ed25519 private key
    signing.public.verify(signing.sign(b"probe"), b"probe")

    db = home / "site.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT name FROM site").fetchall() == [("hq",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"site", "chunks", "packages"} <= tables
        assert conn.execute("SELECT count(*) FROM packages").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
    conn.close()


def test_init_creates_a_certificate_authority_whose_fingerprint_every_token_carries(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    doc = json.loads(run_packdist(home, "site", "init", "--name", "hq", "--json").stdout)
    key = home / "tls" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((home / "tls" / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    tokens = [
        json.loads(
            run_packdist(
                home, "server", "add", name, "--url", "http://127.0.0.1:9", "--json"
            ).stdout
        )["token"]
        for name in ("dp1", "dp2")
    ]
    assert tokens[0] != tokens[1]
    assert doc["ca_fingerprint"] == tls.fingerprint(ca)
    for token in tokens:
        assert token_fingerprint(token) == tls.fingerprint(ca)


def test_init_home_is_private(tmp_path: Path) -> None:
    home = tmp_path / "site"
    run_packdist(home, "site", "init", "--name", "hq")
    assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0


def test_init_without_name_uses_a_valid_default(tmp_path: Path) -> None:
    home = tmp_path / "site"
    run_packdist(home, "site", "init")
    with sqlite3.connect(home / "site.db") as conn:
        (name,) = conn.execute("SELECT name FROM site").fetchone()
    conn.close()
    assert name


def test_init_json_prints_one_document(tmp_path: Path) -> None:
    home = tmp_path / "site"
    proc = run_packdist(home, "site", "init", "--name", "hq", "--json")
    doc = json.loads(proc.stdout)  # exactly one document, nothing else on stdout
    assert doc["site"] == "hq"
    assert Path(doc["home"]) == home.resolve()


def test_init_twice_refuses_and_changes_nothing(site_home: Path) -> None:
    key_before = (site_home / "site.key").read_bytes()
    files_before = _files(site_home)
    with sqlite3.connect(site_home / "site.db") as conn:
        site_before = conn.execute("SELECT * FROM site").fetchall()
    conn.close()

    proc = run_packdist(site_home, "site", "init", "--name", "other", check=False)
    _assert_one_line_refusal(proc, str(site_home), "already")
    assert proc.stdout == ""

    assert (site_home / "site.key").read_bytes() == key_before
    assert _files(site_home) == files_before
    with sqlite3.connect(site_home / "site.db") as conn:
        assert conn.execute("SELECT * FROM site").fetchall() == site_before
    conn.close()


@pytest.mark.parametrize("leftover", ["site.key", "library", "tls"])
def test_init_refuses_a_home_holding_part_of_a_site(tmp_path: Path, leftover: str) -> None:
    home = tmp_path / "site"
    home.mkdir()
    if leftover in ("library", "tls"):
        (home / leftover).mkdir()
    else:
        (home / leftover).write_bytes(b"not yours to overwrite")
    proc = run_packdist(home, "site", "init", check=False)
    _assert_one_line_refusal(proc, str(home))
    assert not (home / "site.db").exists()
    if leftover == "site.key":
        assert (home / "site.key").read_bytes() == b"not yours to overwrite"


def test_init_refuses_an_agent_home(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    home.mkdir()
    (home / "agent.json").write_text("{}")
    proc = run_packdist(home, "site", "init", check=False)
    _assert_one_line_refusal(proc, str(home), "agent")
    assert sorted(p.name for p in home.iterdir()) == ["agent.json"]


@pytest.mark.parametrize("name", ["a/b", "..", "x" * 200], ids=["slash", "dotdot", "too-long"])
def test_init_refuses_an_invalid_site_name(tmp_path: Path, name: str) -> None:
    home = tmp_path / "site"
    proc = run_packdist(home, "site", "init", "--name", name, check=False)
    _assert_one_line_refusal(proc, name[:40])
    assert not (home / "site.db").exists()
    assert not (home / "site.key").exists()


def test_commands_on_a_home_without_a_site_refuse(tmp_path: Path) -> None:
    home = tmp_path / "nothing-here"
    for args in (["package", "show", "a@1"], ["package", "list", "--json"]):
        proc = run_packdist(home, *args, check=False)
        _assert_one_line_refusal(proc, str(home), "site init")
        assert proc.stdout == ""


def test_home_comes_from_the_environment_without_home_option(tmp_path: Path) -> None:
    home = tmp_path / "from-env"
    env = {**os.environ, "PACKDIST_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "packdist", "site", "init", "--name", "envsite"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (home / "site.db").is_file()
    assert stat.S_IMODE((home / "site.key").stat().st_mode) == 0o600
