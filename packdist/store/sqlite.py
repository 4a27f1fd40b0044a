"""The embedded store: SQLite in WAL mode, schema migrations from version 1.

Every state change of an instruction is a guarded update built from
:data:`packdist.states.TRANSITIONS`; zero rows changed raises ``InvalidTransition``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from packdist import states
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.errors import (
    AlreadyExists,
    InvalidTransition,
    NoTargets,
    NotFound,
    StoreError,
)
from packdist.states import InstructionState
from packdist.store.base import (
    Claim,
    EventRecord,
    InstructionRecord,
    JobRecord,
    MetricsTotals,
    PackageRecord,
    ServerRecord,
    StatusCell,
    Store,
    SwarmMember,
    describe_problems,
)

S = InstructionState


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("packdist.store") / "sql"
    out = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            out.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(out)


def _labels(text: str | None) -> tuple[tuple[str, str], ...]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))


def _like_prefix(owner: str) -> str:
    """A LIKE pattern for ``owner:<anything>`` (``!`` escapes the wildcards)."""
    return owner.replace("!", "!!").replace("%", "!%").replace("_", "!_") + ":%"


def _in(event: str) -> str:
    return ",".join(f"'{s.value}'" for s in sorted(states.sources(event)))


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # --- plumbing -------------------------------------------------------------------------

    def _migrate(self) -> None:
        latest = _migrations()[-1][0]
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= latest:
            return  # up to date: no write lock for read-only users
        with self._tx():
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            for version, sql in _migrations():
                if version > current:
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database busy or unavailable: {exc}") from exc
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _event(
        self,
        kind: str,
        message: str,
        job_id: str | None = None,
        server: str | None = None,
        now: float | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO events (at, job_id, server, kind, message) VALUES (?,?,?,?,?)",
            (time.time() if now is None else now, job_id, server, kind, message),
        )

    def _transition(
        self,
        instruction_id: int,
        event: str,
        owner: str | None,
        now: float,
        sets: dict[str, Any],
        action: str | None = None,
    ) -> sqlite3.Row:
        cols = {"state": states.target(event).value, "updated_at": now, **sets}
        assignments = ", ".join(f"{c} = :{c}" for c in cols)
        where = f"id = :id AND state IN ({_in(event)})"
        if owner is not None:
            where += " AND lease_owner = :owner"
        if action is not None:  # "installed" only ends an install, "removed" a removal
            where += " AND job_id IN (SELECT id FROM jobs WHERE action = :action)"
        row = self._db.execute(
            f"UPDATE instructions SET {assignments} WHERE {where} RETURNING job_id, server",
            {**cols, "id": instruction_id, "owner": owner, "action": action},
        ).fetchone()
        if row is None:
            current = self._db.execute(
                "SELECT state, lease_owner FROM instructions WHERE id = ?", (instruction_id,)
            ).fetchone()
            state = current["state"] if current else "missing"
            raise InvalidTransition(
                f"instruction {instruction_id}: cannot {event} from state {state}"
            )
        result: sqlite3.Row = row
        return result

    # --- site -----------------------------------------------------------------------------

    def init_site(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM site").fetchone():
                raise AlreadyExists("the database already holds a site")
            db.execute("INSERT INTO site VALUES (1, ?, ?)", (name, time.time()))

    def site_name(self) -> str:
        row = self._db.execute("SELECT name FROM site").fetchone()
        if row is None:
            raise StoreError("the database holds no site")
        return str(row[0])

    # --- packages and chunks --------------------------------------------------------------

    def known_chunks(self, digests: list[Digest]) -> set[Digest]:
        found: set[Digest] = set()
        for i in range(0, len(digests), 500):
            batch = digests[i : i + 500]
            rows = self._db.execute(
                f"SELECT digest FROM chunks WHERE digest IN ({','.join('?' * len(batch))})",
                [d.raw for d in batch],
            )
            found.update(Digest(bytes(r[0])) for r in rows)
        return found

    def add_package(
        self, manifest: Manifest, signature: bytes, new_chunks: dict[Digest, int]
    ) -> PackageRecord:
        now = time.time()
        chunk_count = len(manifest.chunk_sizes())
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM packages WHERE name = ? AND version = ?",
                (manifest.name, manifest.version),
            ).fetchone():
                raise AlreadyExists(f"{manifest.ref} already exists")
            db.executemany(
                "INSERT OR IGNORE INTO chunks (digest, size) VALUES (?, ?)",
                [(d.raw, s) for d, s in new_chunks.items()],
            )
            db.execute(
                "INSERT INTO packages VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    manifest.id.hex,
                    manifest.name,
                    manifest.version,
                    manifest.canonical(),
                    signature,
                    manifest.total_size,
                    manifest.file_count,
                    chunk_count,
                    now,
                ),
            )
            self._event("package", f"package {manifest.ref} created ({manifest.id.short}…)")
        return PackageRecord(
            manifest.id.hex,
            manifest.name,
            manifest.version,
            manifest.total_size,
            manifest.file_count,
            chunk_count,
            now,
        )

    _PKG_COLS = "id, name, version, size, file_count, chunk_count, created_at"

    @staticmethod
    def _package(row: sqlite3.Row) -> PackageRecord:
        return PackageRecord(*tuple(row))

    def find_package(self, name: str, version: str) -> PackageRecord | None:
        row = self._db.execute(
            f"SELECT {self._PKG_COLS} FROM packages WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        return self._package(row) if row else None

    def package_by_id(self, package_id: str) -> PackageRecord | None:
        row = self._db.execute(
            f"SELECT {self._PKG_COLS} FROM packages WHERE id = ?", (package_id,)
        ).fetchone()
        return self._package(row) if row else None

    def package_manifest(self, package_id: str) -> tuple[bytes, bytes]:
        row = self._db.execute(
            "SELECT manifest, signature FROM packages WHERE id = ?", (package_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no package with id {package_id[:12]}…")
        return bytes(row[0]), bytes(row[1])

    def list_packages(self) -> list[PackageRecord]:
        rows = self._db.execute(
            f"SELECT {self._PKG_COLS} FROM packages ORDER BY name, created_at"
        ).fetchall()
        return [self._package(r) for r in rows]

    # --- servers --------------------------------------------------------------------------

    def add_server(
        self,
        name: str,
        url: str,
        token_hash: str,
        groups: list[str],
        labels: dict[str, str] | None = None,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT removed FROM servers WHERE name = ?", (name,)).fetchone()
            if row is not None and not row[0]:
                raise AlreadyExists(f"server {name} already exists")
            if row is None:
                db.execute(
                    "INSERT INTO servers (name, url, token_hash, created_at) VALUES (?,?,?,?)",
                    (name, url, token_hash, now),
                )
            else:  # a removed server enrolled again: new URL, new token, no old state
                db.execute(
                    "UPDATE servers SET url = ?, token_hash = ?, created_at = ?, removed = 0,"
                    " last_seen = NULL, boot_id = NULL, disk_free = NULL WHERE name = ?",
                    (url, token_hash, now, name),
                )
                db.execute("DELETE FROM server_groups WHERE server = ?", (name,))
                db.execute("DELETE FROM server_packages WHERE server = ?", (name,))
            db.execute(
                "UPDATE servers SET labels = ? WHERE name = ?",
                (json.dumps(labels or {}, sort_keys=True), name),
            )
            db.executemany(
                "INSERT OR IGNORE INTO server_groups VALUES (?, ?)", [(name, g) for g in groups]
            )
            self._event("server", f"server {name} added ({url})", server=name, now=now)

    def remove_server(self, name: str) -> int:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "UPDATE servers SET removed = 1, token_hash = 'removed:' || name"
                " WHERE name = ? AND removed = 0 RETURNING name",
                (name,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no server named {name}")
            cancelled = db.execute(
                f"UPDATE instructions SET state = 'cancelled', updated_at = ?, finished_at = ?,"
                f" last_error = 'server removed', lease_owner = NULL"
                f" WHERE server = ? AND state IN ({_in('cancel')})",
                (now, now, name),
            ).rowcount
            self._event("server", f"server {name} removed", server=name, now=now)
        return cancelled

    def _servers(self, where: str = "", params: tuple[Any, ...] = ()) -> list[ServerRecord]:
        rows = self._db.execute(
            "SELECT s.name, s.url, s.created_at, s.last_seen, s.disk_free, s.labels,"
            " (SELECT group_concat(grp, ',') FROM"
            "   (SELECT grp FROM server_groups g WHERE g.server = s.name ORDER BY grp)) AS groups"
            f" FROM servers s WHERE s.removed = 0 {where} ORDER BY s.name",
            params,
        ).fetchall()
        return [
            ServerRecord(
                r["name"],
                r["url"],
                tuple(r["groups"].split(",")) if r["groups"] else (),
                r["created_at"],
                r["last_seen"],
                r["disk_free"],
                _labels(r["labels"]),
            )
            for r in rows
        ]

    def list_servers(self) -> list[ServerRecord]:
        return self._servers()

    def server_by_token_hash(self, token_hash: str) -> ServerRecord | None:
        found = self._servers("AND s.token_hash = ?", (token_hash,))
        return found[0] if found else None

    def servers_in_group(self, group: str) -> list[str]:
        rows = self._db.execute(
            "SELECT g.server FROM server_groups g JOIN servers s ON s.name = g.server"
            " WHERE g.grp = ? AND s.removed = 0 ORDER BY g.server",
            (group,),
        ).fetchall()
        return [r[0] for r in rows]

    def swarm(self, package_id: str, now: float | None = None) -> list[SwarmMember]:
        # receiving: an instruction under way, or one whose retry is due (not one that
        # waits out a back-off: it would not fetch its share now)
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT s.name, s.url, s.labels, s.last_seen,"
            " EXISTS (SELECT 1 FROM server_packages p WHERE p.server = s.name"
            "         AND p.package_id = :pkg AND p.corrupt IS NULL) AS holder"
            " FROM servers s WHERE s.removed = 0 AND ("
            "   EXISTS (SELECT 1 FROM server_packages p WHERE p.server = s.name"
            "           AND p.package_id = :pkg AND p.corrupt IS NULL)"
            "   OR EXISTS (SELECT 1 FROM instructions i JOIN jobs j ON j.id = i.job_id"
            "              WHERE i.server = s.name AND j.package_id = :pkg"
            "              AND j.action = 'install' AND (i.state IN ('pending', 'sending')"
            "                   OR (i.state = 'retrying' AND i.next_attempt_at <= :now))))"
            " ORDER BY s.name",
            {"pkg": package_id, "now": now},
        ).fetchall()
        return [SwarmMember(r[0], r[1], _labels(r[2]), r[3], bool(r[4])) for r in rows]

    def record_heartbeat(
        self,
        server: str,
        boot_id: str,
        disk_free: int | None,
        installed: list[str],
        now: float,
        offline_after: float,
    ) -> int:
        with self._tx() as db:
            row = db.execute(
                "SELECT last_seen, boot_id FROM servers WHERE name = ? AND removed = 0", (server,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no server named {server}")
            came_back = (
                row["last_seen"] is None
                or now - row["last_seen"] > offline_after
                or row["boot_id"] != boot_id
            )
            db.execute(
                "UPDATE servers SET last_seen = ?, boot_id = ?, disk_free = ?,"
                " back_at = CASE WHEN ? THEN ? ELSE back_at END WHERE name = ?",
                (now, boot_id, disk_free, came_back, now, server),
            )
            # What the server holds, as it reports it: only changes are written.
            recorded = {
                r[0]
                for r in db.execute(
                    "SELECT package_id FROM server_packages WHERE server = ?", (server,)
                )
            }
            reported = set(installed)
            gone = recorded - reported
            new = [p for p in reported - recorded if self.package_by_id(p) is not None]
            db.executemany(
                "DELETE FROM server_packages WHERE server = ? AND package_id = ?",
                [(server, p) for p in gone],
            )
            db.executemany(
                "INSERT OR IGNORE INTO server_packages (server, package_id, installed_at)"
                " VALUES (?, ?, ?)",
                [(server, p, now) for p in new],
            )
            if not came_back:
                return 0
            woken = db.execute(
                "UPDATE instructions SET next_attempt_at = ?, updated_at = ?"
                f" WHERE server = ? AND state IN ({_in('wake')}) AND next_attempt_at > ?",
                (now, now, server, now),
            ).rowcount
            why = (
                "restarted"
                if row["last_seen"] is not None and row["boot_id"] != boot_id
                else "online"
            )
            self._event(
                "server",
                f"server {server} is {why}"
                + (f"; {woken} retrying instruction(s) woken" if woken else ""),
                server=server,
                now=now,
            )
            return woken

    # --- jobs -----------------------------------------------------------------------------

    def add_job(
        self,
        package_id: str,
        servers: list[str],
        max_attempts: int | None,
        deadline: float | None,
        options: dict[str, Any],
        now: float,
        action: str = "install",
    ) -> str:
        with self._tx():
            return self._add_job(package_id, servers, max_attempts, deadline, options, now, action)

    def package_holders(self, package_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT sp.server FROM server_packages sp JOIN servers s ON s.name = sp.server"
            " WHERE sp.package_id = :pkg AND s.removed = 0"
            " UNION SELECT i.server FROM instructions i JOIN jobs j ON j.id = i.job_id"
            " JOIN servers s ON s.name = i.server"
            " WHERE j.package_id = :pkg AND j.action = 'install' AND s.removed = 0"
            f" AND i.state IN ({_in('cancel')}) ORDER BY 1",
            {"pkg": package_id},
        ).fetchall()
        return [r[0] for r in rows]

    def _add_job(
        self,
        package_id: str,
        servers: list[str],
        max_attempts: int | None,
        deadline: float | None,
        options: dict[str, Any],
        now: float,
        action: str = "install",
    ) -> str:
        """The job and its instructions (inside the caller's transaction)."""
        db = self._db
        if action not in states.DONE:
            raise ValueError(f"unknown job action {action!r}")
        targets = list(dict.fromkeys(servers))
        if not targets:
            raise NoTargets("a job needs at least one target server")
        job_id = secrets.token_hex(6)
        pkg = self.package_by_id(package_id)
        if pkg is None:
            raise NotFound(f"no package with id {package_id[:12]}…")
        known = {s.name for s in self._servers()}
        unknown = [s for s in targets if s not in known]
        if unknown:
            raise NotFound(f"unknown server(s): {', '.join(unknown)}")
        self._supersede(package_id, targets, action, job_id, now)
        db.execute(
            "INSERT INTO jobs (id, package_id, created_at, max_attempts, deadline, options,"
            " action) VALUES (?,?,?,?,?,?,?)",
            (job_id, package_id, now, max_attempts, deadline, json.dumps(options), action),
        )
        size = pkg.size if action == "install" else 0  # a removal moves no package bytes
        db.executemany(
            "INSERT INTO instructions (job_id, server, state, next_attempt_at, updated_at,"
            " bytes_total) VALUES (?, ?, 'pending', ?, ?, ?)",
            [(job_id, s, now, now, size) for s in targets],
        )
        what = f"{pkg.ref} to" if action == "install" else f"remove {pkg.ref} from"
        self._event("created", f"job created: {what} {', '.join(targets)}", job_id, now=now)
        return job_id

    def _supersede(
        self, package_id: str, servers: list[str], action: str, job_id: str, now: float
    ) -> None:
        """Cancel the opposite unfinished work for this package on these servers (inside the
        caller's transaction): the newest intent wins, the older one never runs after it.

        An opposite attempt already under way ('sending': the agent is doing it) runs to its
        end, and the newer instruction is not claimed until it has (``claim_ready``): the
        two never cross on the agent. If that attempt fails, it is cancelled, not retried
        (:meth:`_settle_superseded`)."""
        opposite = "install" if action == "remove" else "remove"
        why = f"superseded by {'removal' if action == 'remove' else 'install'} job {job_id}"
        marks = ",".join("?" * len(servers))
        of_package = (
            f" AND server IN ({marks})"
            " AND job_id IN (SELECT id FROM jobs WHERE package_id = ? AND action = ?)"
        )
        rows = self._db.execute(
            "UPDATE instructions SET state = 'cancelled', updated_at = ?, finished_at = ?,"
            " last_error = ?, lease_owner = NULL, lease_expires_at = NULL"
            " WHERE state IN ('pending', 'retrying')" + of_package + " RETURNING job_id, server",
            (now, now, why, *servers, package_id, opposite),
        ).fetchall()
        for r in rows:
            self._event("cancelled", why, r["job_id"], r["server"], now=now)
        rows = self._db.execute(
            "UPDATE instructions SET superseded_by = ? WHERE state = 'sending'"
            + of_package
            + " RETURNING job_id, server",
            (job_id, *servers, package_id, opposite),
        ).fetchall()
        for r in rows:
            self._event(
                "superseded",
                f"{why}; the attempt under way ends first",
                r["job_id"],
                r["server"],
                now=now,
            )

    def _settle_superseded(self, now: float) -> None:
        """Instructions superseded during an attempt that did not succeed: cancelled, never
        retried (inside the caller's transaction)."""
        rows = self._db.execute(
            "UPDATE instructions SET state = 'cancelled', finished_at = :now, updated_at = :now,"
            " last_error = 'superseded by ' || (SELECT CASE j.action WHEN 'remove' THEN"
            " 'removal' ELSE 'install' END FROM jobs j WHERE j.id = superseded_by)"
            " || ' job ' || superseded_by, lease_owner = NULL, lease_expires_at = NULL"
            " WHERE state = 'retrying' AND superseded_by IS NOT NULL"
            " RETURNING job_id, server, last_error",
            {"now": now},
        ).fetchall()
        for r in rows:
            self._event("cancelled", r["last_error"], r["job_id"], r["server"], now=now)

    def _instructions(self, job_id: str) -> tuple[InstructionRecord, ...]:
        rows = self._db.execute(
            "SELECT id, job_id, server, state, attempts, last_error, next_attempt_at,"
            " bytes_sent, bytes_total, updated_at, finished_at, bytes_from_peers, bytes_done"
            " FROM instructions WHERE job_id = ? ORDER BY server",
            (job_id,),
        ).fetchall()
        return tuple(
            InstructionRecord(
                r["id"],
                r["job_id"],
                r["server"],
                S(r["state"]),
                r["attempts"],
                r["last_error"],
                r["next_attempt_at"],
                r["bytes_sent"],
                r["bytes_total"],
                r["updated_at"],
                r["finished_at"],
                r["bytes_from_peers"],
                r["bytes_done"],
            )
            for r in rows
        )

    def _job(self, row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            row["id"],
            row["package_id"],
            f"{row['name']}@{row['version']}",
            row["created_at"],
            row["max_attempts"],
            row["deadline"],
            json.loads(row["options"]),
            self._instructions(row["id"]),
            row["action"],
        )

    _JOB_SELECT = "SELECT j.*, p.name, p.version FROM jobs j JOIN packages p ON p.id = j.package_id"

    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.execute(f"{self._JOB_SELECT} WHERE j.id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return self._job(row)

    def list_jobs(self, limit: int = 100) -> list[JobRecord]:
        rows = self._db.execute(
            f"{self._JOB_SELECT} ORDER BY j.created_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._job(r) for r in rows]

    def cancel_job(self, job_id: str, now: float) -> int:
        with self._tx() as db:
            self.get_job(job_id)
            n = db.execute(
                "UPDATE instructions SET state = 'cancelled', updated_at = ?, finished_at = ?,"
                f" lease_owner = NULL WHERE job_id = ? AND state IN ({_in('cancel')})",
                (now, now, job_id),
            ).rowcount
            self._event("cancelled", f"job cancelled ({n} instruction(s))", job_id, now=now)
        return n

    def retry_job(self, job_id: str, now: float) -> int:
        with self._tx() as db:
            job = self.get_job(job_id)
            revived = [
                r[0]
                for r in db.execute(
                    "UPDATE instructions SET state = 'pending', next_attempt_at = ?,"
                    " updated_at = ?, finished_at = NULL, attempts_base = attempts"
                    f" WHERE job_id = ? AND state IN ({_in('operator_retry')})"
                    # a removed server's instruction would stay pending forever: leave it
                    " AND server IN (SELECT name FROM servers WHERE removed = 0)"
                    " RETURNING server",
                    (now, now, job_id),
                ).fetchall()
            ]
            if revived:  # the retried intent is now the newest: it supersedes the opposite
                self._supersede(job.package_id, revived, job.action, job_id, now)
            n = len(revived)
            # Instructions still waiting for their backoff are made due now as well.
            n += db.execute(
                "UPDATE instructions SET next_attempt_at = ?, updated_at = ?"
                f" WHERE job_id = ? AND state IN ({_in('wake')})",
                (now, now, job_id),
            ).rowcount
            self._event("retry", f"operator retry ({n} instruction(s))", job_id, now=now)
        return n

    # --- despooler ------------------------------------------------------------------------

    def claim_ready(self, owner: str, lease_seconds: float, limit: int, now: float) -> list[Claim]:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE instructions SET state = 'sending', attempts = attempts + 1,"
                " lease_owner = :owner, lease_expires_at = :until, updated_at = :now,"
                " claimed_at = :now WHERE id IN (SELECT i.id FROM instructions i JOIN servers s ON s.name = i.server"
                f"   WHERE i.state IN ({_in('claim')}) AND i.next_attempt_at <= :now"
                "    AND s.removed = 0"
                # not while an opposite attempt for the same version and server is under way
                "    AND NOT EXISTS (SELECT 1 FROM instructions o"
                "      JOIN jobs oj ON oj.id = o.job_id JOIN jobs ij ON ij.id = i.job_id"
                "      WHERE o.server = i.server AND o.state = 'sending'"
                "      AND oj.package_id = ij.package_id AND oj.action != ij.action)"
                "    ORDER BY i.next_attempt_at LIMIT :limit)"
                " RETURNING id",
                {"owner": owner, "until": now + lease_seconds, "now": now, "limit": limit},
            ).fetchall()
            ids = [r[0] for r in rows]
            claims = []
            for iid in ids:
                r = db.execute(
                    "SELECT i.id, i.job_id, i.server, s.url, j.package_id, p.name, p.version,"
                    " i.attempts, i.attempts_base, j.created_at, j.max_attempts, j.deadline,"
                    " j.options, sp.corrupt, j.action"
                    " FROM instructions i JOIN jobs j ON j.id = i.job_id"
                    " JOIN servers s ON s.name = i.server JOIN packages p ON p.id = j.package_id"
                    " LEFT JOIN server_packages sp"
                    "   ON sp.server = i.server AND sp.package_id = j.package_id"
                    " WHERE i.id = ?",
                    (iid,),
                ).fetchone()
                claims.append(
                    Claim(
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        r[4],
                        f"{r[5]}@{r[6]}",
                        r[7],
                        r[8],
                        r[9],
                        r[10],
                        r[11],
                        owner,
                        # a copy known corrupt is repaired by any install job, not taken as
                        # installed
                        {
                            **json.loads(r[12] or "{}"),
                            **({"repair": True} if r[13] and r[14] == "install" else {}),
                        },
                        r[14],
                    )
                )
                self._event("attempt", f"attempt {r[7]} to {r[2]}", r[1], r[2], now=now)
        return claims

    def renew_lease(
        self,
        instruction_id: int,
        owner: str,
        until: float,
        bytes_sent: int,
        bytes_total: int,
        bytes_from_peers: int = 0,
        bytes_done: int = 0,
    ) -> bool:
        with self._tx() as db:
            n = db.execute(
                "UPDATE instructions SET lease_expires_at = ?, bytes_sent = max(bytes_sent, ?),"
                " bytes_total = ?, bytes_from_peers = max(bytes_from_peers, ?),"
                " bytes_done = max(bytes_done, ?)"
                " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                (
                    until,
                    bytes_sent,
                    bytes_total,
                    bytes_from_peers,
                    bytes_done,
                    instruction_id,
                    owner,
                ),
            ).rowcount
        return n == 1

    def mark_installed(self, instruction_id: int, owner: str, now: float) -> None:
        with self._tx() as db:
            row = self._transition(
                instruction_id,
                "installed",
                owner,
                now,
                {
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "finished_at": now,
                    "last_error": None,
                },
                action="install",
            )
            pkg = db.execute(
                "SELECT package_id FROM jobs WHERE id = ?", (row["job_id"],)
            ).fetchone()[0]
            db.execute(  # a verified install: whatever validation found before is mended
                "INSERT OR REPLACE INTO server_packages (server, package_id, installed_at,"
                " corrupt) VALUES (?, ?, ?, NULL)",
                (row["server"], pkg, now),
            )
            self._event(
                "installed",
                f"installed on {row['server']} (verified)",
                row["job_id"],
                row["server"],
                now=now,
            )

    def mark_removed(self, instruction_id: int, owner: str, now: float) -> None:
        with self._tx() as db:
            row = self._transition(
                instruction_id,
                "removed",
                owner,
                now,
                {
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "finished_at": now,
                    "last_error": None,
                },
                action="remove",
            )
            pkg = db.execute(
                "SELECT package_id FROM jobs WHERE id = ?", (row["job_id"],)
            ).fetchone()[0]
            db.execute(  # the agent confirmed: the copy is gone (its next heartbeat agrees)
                "DELETE FROM server_packages WHERE server = ? AND package_id = ?",
                (row["server"], pkg),
            )
            self._event(
                "removed",
                f"removed from {row['server']}",
                row["job_id"],
                row["server"],
                now=now,
            )

    def schedule_retry(
        self, instruction_id: int, owner: str, error: str, retry_at: float, now: float
    ) -> None:
        with self._tx() as db:
            row = self._transition(
                instruction_id,
                "retry",
                owner,
                now,
                {
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "last_error": error,
                    "next_attempt_at": retry_at,
                },
            )
            came_back = db.execute(
                "UPDATE instructions SET next_attempt_at = :now WHERE id = :id AND claimed_at <"
                " (SELECT back_at FROM servers s WHERE s.name = instructions.server)",
                {"now": now, "id": instruction_id},
            ).rowcount
            when = (
                "server came back during the attempt: retry now"
                if came_back
                else f"retry in {max(0.0, retry_at - now):.1f}s"
            )
            self._event(
                "failure",
                f"{error}; {when}",
                row["job_id"],
                row["server"],
                now=now,
            )
            self._settle_superseded(now)

    def mark_failed(self, instruction_id: int, owner: str, error: str, now: float) -> None:
        with self._tx():
            row = self._transition(
                instruction_id,
                "fail",
                owner,
                now,
                {
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "last_error": error,
                    "finished_at": now,
                },
            )
            self._event("failed", error, row["job_id"], row["server"], now=now)

    def recover_expired_leases(self, now: float) -> int:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE instructions SET state = 'retrying', lease_owner = NULL,"
                " lease_expires_at = NULL, next_attempt_at = :now, updated_at = :now,"
                " last_error = 'attempt interrupted: its despooler worker stopped or stalled"
                " (lease expired)'"
                f" WHERE state IN ({_in('lease_expired')}) AND lease_expires_at < :now"
                " RETURNING job_id, server",
                {"now": now},
            ).fetchall()
            for r in rows:
                self._event(
                    "recovered",
                    "lease expired; returned to the queue",
                    r["job_id"],
                    r["server"],
                    now=now,
                )
            self._settle_superseded(now)
        return len(rows)

    def release_leases(self, owner: str, now: float) -> int:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE instructions SET state = 'retrying', lease_owner = NULL,"
                " lease_expires_at = NULL, next_attempt_at = :now, updated_at = :now"
                f" WHERE state IN ({_in('lease_expired')})"
                " AND (lease_owner = :owner OR lease_owner LIKE :prefix ESCAPE '!')"
                " RETURNING job_id, server",
                {"now": now, "owner": owner, "prefix": _like_prefix(owner)},
            ).fetchall()
            for r in rows:
                self._event(
                    "recovered",
                    "site stopping; attempt handed back to the queue",
                    r["job_id"],
                    r["server"],
                    now=now,
                )
            self._settle_superseded(now)
        return len(rows)

    def next_due_at(self) -> float | None:
        row = self._db.execute(
            f"SELECT min(next_attempt_at) FROM instructions WHERE state IN ({_in('claim')})"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # --- validation -----------------------------------------------------------------------

    def record_validation(
        self, server: str, package_id: str, problems: list[dict[str, str]], now: float
    ) -> str | None:
        with self._tx() as db:
            pkg = self.package_by_id(package_id)
            if pkg is None or not self._servers("AND s.name = ?", (server,)):
                return None  # not a package of this site, or a server since removed
            if not problems:
                healed = db.execute(
                    "UPDATE server_packages SET corrupt = NULL"
                    " WHERE server = ? AND package_id = ? AND corrupt IS NOT NULL",
                    (server, package_id),
                ).rowcount
                if healed:
                    self._event(
                        "validated",
                        f"{pkg.ref} on {server} verifies again",
                        server=server,
                        now=now,
                    )
                return None
            words = describe_problems(problems)
            removing = db.execute(
                "SELECT i.job_id FROM instructions i JOIN jobs j ON j.id = i.job_id"
                " WHERE i.server = ? AND j.package_id = ? AND j.action = 'remove'"
                f" AND i.state IN ({_in('cancel')})",
                (server, package_id),
            ).fetchone()
            if removing is not None:  # the copy is on its way out: nothing to repair
                self._event(
                    "corrupt",
                    f"{pkg.ref} corrupt on {server}: {words}; removal job {removing[0]}"
                    " under way, no repair",
                    removing[0],
                    server,
                    now=now,
                )
                return None
            db.execute(
                "INSERT INTO server_packages (server, package_id, installed_at, corrupt)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (server, package_id)"
                " DO UPDATE SET corrupt = excluded.corrupt",
                (server, package_id, now, words),
            )
            pending = db.execute(
                "SELECT i.job_id FROM instructions i JOIN jobs j ON j.id = i.job_id"
                " WHERE i.server = ? AND j.package_id = ? AND j.action = 'install'"
                f" AND i.state IN ({_in('cancel')})"
                " AND json_extract(j.options, '$.repair') = 1",
                (server, package_id),
            ).fetchone()
            if pending is not None:  # a repair is already queued or under way
                self._event(
                    "corrupt",
                    f"{pkg.ref} corrupt on {server}: {words}; repair job {pending[0]} under way",
                    pending[0],
                    server,
                    now=now,
                )
                return None
            job_id = self._add_job(package_id, [server], None, None, {"repair": True}, now)
            self._event(
                "corrupt",
                f"{pkg.ref} corrupt on {server}: {words}; repair queued (job {job_id})",
                job_id,
                server,
                now=now,
            )
            return job_id

    # --- views ----------------------------------------------------------------------------

    def status_matrix(self) -> dict[str, dict[str, str]]:
        matrix: dict[str, dict[str, str]] = {}
        for r in self._db.execute(
            "SELECT p.name || '@' || p.version AS ref, sp.server, sp.corrupt"
            " FROM server_packages sp"
            " JOIN packages p ON p.id = sp.package_id JOIN servers s ON s.name = sp.server"
            " WHERE s.removed = 0"
        ):
            matrix.setdefault(r["ref"], {})[r["server"]] = (
                "corrupt" if r["corrupt"] is not None else "installed"
            )
        # Unfinished work shows where nothing is installed yet; the newest job wins. A copy
        # found corrupt stays "corrupt" until its repair is installed (verified). After a
        # removal job (the newest), nothing shows where nothing is installed.
        newest: dict[tuple[str, str], sqlite3.Row] = {}
        for r in self._db.execute(
            "SELECT p.name || '@' || p.version AS ref, i.server, i.state, j.action"
            " FROM instructions i"
            " JOIN jobs j ON j.id = i.job_id JOIN packages p ON p.id = j.package_id"
            " JOIN servers s ON s.name = i.server WHERE s.removed = 0"
            " ORDER BY j.created_at, i.id"
        ):
            newest[(r["ref"], r["server"])] = r
        for (ref, server), r in newest.items():
            if r["action"] == "remove" or r["state"] == "installed":
                continue
            cell = matrix.setdefault(ref, {})
            if cell.get(server) not in ("installed", "corrupt"):
                cell[server] = r["state"]
        return {ref: cells for ref, cells in matrix.items() if cells}

    def events(self, job_id: str | None = None, after_id: int = 0) -> list[EventRecord]:
        sql = "SELECT id, at, job_id, server, kind, message FROM events WHERE id > ?"
        params: list[Any] = [after_id]
        if job_id is not None:
            sql += " AND job_id = ?"
            params.append(job_id)
        return [EventRecord(*r) for r in self._db.execute(sql + " ORDER BY id", params)]

    def close(self) -> None:
        self._db.close()

    # --- operator views (dashboard, metrics, events) ---------------------------------------

    def status_cells(self) -> list[StatusCell]:
        installed = {
            (r["server"], r["package_id"]): r["corrupt"]
            for r in self._db.execute(
                "SELECT sp.server, sp.package_id, sp.corrupt FROM server_packages sp"
                " JOIN servers s ON s.name = sp.server WHERE s.removed = 0"
            )
        }
        refs = {
            r["id"]: f"{r['name']}@{r['version']}"
            for r in self._db.execute("SELECT id, name, version FROM packages")
        }
        newest: dict[tuple[str, str], sqlite3.Row] = {}
        for r in self._db.execute(  # oldest first: the newest job of a pair wins
            "SELECT j.package_id, i.server, i.state, i.job_id, i.attempts, i.last_error,"
            " i.next_attempt_at, i.bytes_sent, i.bytes_total, i.updated_at, j.action"
            " FROM instructions i JOIN jobs j ON j.id = i.job_id"
            " JOIN servers s ON s.name = i.server WHERE s.removed = 0"
            " ORDER BY j.created_at, i.id"
        ):
            newest[(r["server"], r["package_id"])] = r
        cells = []
        for server, pid in installed.keys() | newest.keys():
            r = newest.get((server, pid))
            cells.append(
                StatusCell(
                    refs.get(pid, pid[:12]),
                    pid,
                    server,
                    (server, pid) in installed,
                    S(r["state"]) if r else None,
                    r["job_id"] if r else None,
                    r["attempts"] if r else 0,
                    r["last_error"] if r else None,
                    r["next_attempt_at"] if r else None,
                    r["bytes_sent"] if r else 0,
                    r["bytes_total"] if r else 0,
                    r["updated_at"] if r else None,
                    installed.get((server, pid)),
                    r["action"] if r else "install",
                )
            )
        return sorted(cells, key=lambda c: (c.package_ref, c.server))

    def recent_events(self, limit: int, job_id: str | None = None) -> list[EventRecord]:
        sql = "SELECT id, at, job_id, server, kind, message FROM events"
        params: list[Any] = []
        if job_id is not None:
            sql += " WHERE job_id = ?"
            params.append(job_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        rows = self._db.execute(sql, params).fetchall()
        return [EventRecord(*r) for r in reversed(rows)]

    def metrics_totals(self, transfer_bounds: tuple[float, ...]) -> MetricsTotals:
        db = self._db
        instructions = {s.value: 0 for s in S}
        for r in db.execute("SELECT state, count(*) FROM instructions GROUP BY state"):
            instructions[r[0]] = r[1]
        attempts, bytes_sent = db.execute(
            "SELECT coalesce(sum(attempts), 0), coalesce(sum(bytes_sent), 0) FROM instructions"
        ).fetchone()
        per_job: dict[str, list[InstructionState]] = {}
        actions: dict[str, str] = {}
        for r in db.execute(
            "SELECT i.job_id, i.state, j.action FROM instructions i JOIN jobs j ON j.id = i.job_id"
        ):
            per_job.setdefault(r[0], []).append(S(r[1]))
            actions[r[0]] = r[2]
        jobs = {s.value: 0 for s in states.JobState}
        for job_id, job_states in per_job.items():
            jobs[states.job_state(job_states, actions[job_id]).value] += 1
        events = {r[0]: r[1] for r in db.execute("SELECT kind, count(*) FROM events GROUP BY kind")}
        buckets = ", ".join(f"coalesce(sum(d <= {float(b)!r}), 0)" for b in transfer_bounds)
        row = db.execute(
            f"SELECT count(*), coalesce(sum(d), 0.0){', ' + buckets if buckets else ''}"
            " FROM (SELECT max(0.0, finished_at - claimed_at) AS d FROM instructions"
            "  WHERE state = 'installed' AND claimed_at IS NOT NULL AND finished_at IS NOT NULL)"
        ).fetchone()
        return MetricsTotals(
            instructions,
            jobs,
            int(attempts),
            int(bytes_sent),
            events,
            tuple(transfer_bounds),
            tuple(int(x) for x in row[2:]),
            int(row[0]),
            float(row[1]),
        )
