"""``packdist operator add|list|reset|remove`` as a user types them: credentials printed once
and kept only as hashes, bad input refused in one line with nothing changed, and a home
made before named operators still read (its password stays the admin's)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import pytest

from tests.conftest import run_packdist


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    run_packdist(root, "site", "init", "--name", "hq", "--json")
    return root


def operators_of(home: Path) -> dict[str, str]:
    doc = json.loads(run_packdist(home, "operator", "list", "--json").stdout)
    return {o["name"]: o["role"] for o in doc["operators"]}


def test_added_operators_are_listed_with_their_roles_and_their_credentials_nowhere(
    home: Path,
) -> None:
    made = {}
    for name, role in (("vera", "viewer"), ("olga", "operator"), ("ann.b-c_d", "admin")):
        doc = json.loads(
            run_packdist(home, "operator", "add", name, "--role", role, "--json").stdout
        )
        assert doc["name"] == name and doc["role"] == role
        assert doc["password"].startswith(f"pdo_{name}_")
        made[name] = doc["password"]
    assert operators_of(home) == {
        "admin": "admin",
        "vera": "viewer",
        "olga": "operator",
        "ann.b-c_d": "admin",
    }
    listing = run_packdist(home, "operator", "list").stdout
    listing += run_packdist(home, "operator", "list", "--json").stdout
    stored = (home / "operator.json").read_text()
    assert (home / "operator.json").stat().st_mode & 0o077 == 0
    for password in made.values():
        assert password not in stored and password not in listing
        assert password[-24:] not in stored

    human = run_packdist(home, "operator", "add", "hugo", "--role", "viewer").stdout
    assert "hugo" in human and "shown once" in human
    assert any(line.startswith("pdo_hugo_") for line in human.splitlines())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["add", "bad name", "--role", "viewer"], "operator name 'bad name' must be"),
        (["add", "a/b", "--role", "viewer"], "operator name 'a/b' must be"),
        (["add", ".hidden", "--role", "viewer"], "operator name '.hidden' must be"),
        (["add", "x" * 65, "--role", "viewer"], "must be 1 to 64"),
        (["add", "eve", "--role", "root"], "unknown role 'root': one of viewer, operator, admin"),
        (["add", "eve"], "Missing option '--role'"),
        (["add", "admin", "--role", "viewer"], "operator admin already exists"),
        (["remove", "nobody"], "no operator nobody (operators: admin)"),
        (["reset", "nobody"], "no operator nobody (operators: admin)"),
        (["remove", "bad name"], "operator name 'bad name' must be"),
    ],
)
def test_bad_operator_input_is_one_line_naming_the_problem_and_changes_nothing(
    home: Path, args: list[str], words: str
) -> None:
    before = (home / "operator.json").read_bytes()
    proc = run_packdist(home, "operator", *args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert (home / "operator.json").read_bytes() == before


def test_removing_and_resetting_change_only_the_one_named(home: Path) -> None:
    run_packdist(home, "operator", "add", "vera", "--role", "viewer")
    run_packdist(home, "operator", "add", "olga", "--role", "operator")
    stored = json.loads((home / "operator.json").read_text())["operators"]
    doc = json.loads(run_packdist(home, "operator", "reset", "olga", "--json").stdout)
    assert doc["role"] == "operator" and doc["password"].startswith("pdo_olga_")
    after = json.loads((home / "operator.json").read_text())["operators"]
    assert after["vera"] == stored["vera"] and after["admin"] == stored["admin"]
    assert after["olga"]["session_secret"] != stored["olga"]["session_secret"]

    out = run_packdist(home, "operator", "remove", "vera").stdout
    assert out.strip() == "operator vera removed"
    assert operators_of(home) == {"admin": "admin", "olga": "operator"}
    # site operator-password replaces admin's credential and keeps the others
    doc = json.loads(run_packdist(home, "site", "operator-password", "--json").stdout)
    assert doc["operator"] == "admin" and doc["operator_password"].startswith("pdo_admin_")
    assert operators_of(home) == {"admin": "admin", "olga": "operator"}


def test_a_home_from_before_named_operators_keeps_its_password_as_the_admins(
    home: Path,
) -> None:
    old_password = "pdo_" + secrets.token_urlsafe(18)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        old_password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32, maxmem=64 * 1024 * 1024
    )
    version_1 = {
        "version": 1,
        "kdf": "scrypt",
        "kdf_params": {"n": 2**14, "r": 8, "p": 1},
        "salt": _b64(salt),
        "password_hash": _b64(digest),
        "session_secret": _b64(secrets.token_bytes(32)),
        "created_at": 1_700_000_000.0,
    }
    (home / "operator.json").write_text(json.dumps(version_1))
    assert operators_of(home) == {"admin": "admin"}

    from packdist.site import operator

    run_packdist(home, "operator", "add", "vera", "--role", "viewer")  # writes version 2
    assert json.loads((home / "operator.json").read_text())["version"] == 2
    operators = operator.load(home)
    assert operators is not None
    admin = operators.for_password(old_password)
    assert admin is not None and admin.name == "admin" and admin.role is operator.Role.ADMIN
    assert admin.check_password(old_password)

    run_packdist(home, "site", "operator-password")  # the old password ends here
    operators = operator.load(home)
    assert operators is not None and operators.for_password(old_password) is None


def test_a_damaged_operator_file_is_named_and_operator_password_repairs_it(home: Path) -> None:
    (home / "operator.json").write_text('{"version": 2, "operators": {"a b": {}}}')
    proc = run_packdist(home, "operator", "list", check=False)
    assert proc.returncode != 0 and "operator.json is damaged" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    run_packdist(home, "site", "operator-password")
    assert operators_of(home) == {"admin": "admin"}
