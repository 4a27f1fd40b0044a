"""A throwaway PostgreSQL cluster for one test session: Debian's binaries, a data folder in
a temporary directory, a free port on loopback, trust authentication, gone at the end.

As root (CI, the lab) the server runs as the ``postgres`` user, which it insists on.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_BIN = Path(os.environ.get("PACKDIST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def missing_reason() -> str | None:
    """Why no cluster can be started here (None: one can)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL is not installed ({PG_BIN}/initdb missing; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL server. ``durable``: with ``fsync`` on, as in production (the
    benchmarks); tests leave it off, being faster and losing nothing they look at.
    ``settings``: more ``-c name=value`` options."""

    def __init__(self, durable: bool = False, settings: dict[str, str] | None = None) -> None:
        self.durable = durable
        self.settings = settings or {}
        self.folder = Path(tempfile.mkdtemp(prefix="packdist-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.folder.chmod(0o755)
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres")
            os.chown(self.folder, uid.pw_uid, uid.pw_gid)

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def start(self) -> None:
        subprocess.run(
            self._as_owner(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
        )
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.folder / "log"))

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        options += " -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        options += "".join(f" -c {k}={v}" for k, v in self.settings.items())
        subprocess.run(
            self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, *args),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A URL of a database of its own, empty."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server at once (``-m fast``: connections cut), then start it again."""
        self._pg_ctl("stop", "-m", "fast", "-w")
        time.sleep(down_for)
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.folder / "log"))

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate", "-w")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
