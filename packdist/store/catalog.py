"""The store's catalogue: the site, packages and chunks, servers and what they hold.

Plain reads and writes by intent; no rule of the domain is decided here (that is
:mod:`packdist.service`), and nothing here changes an instruction's state.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from packdist import states
from packdist.core.digest import Digest

if TYPE_CHECKING:
    from packdist.core.manifest import Manifest
from packdist.errors import AlreadyExists, NotFound, StoreError
from packdist.store.db import Database, Row
from packdist.store.records import PackageRecord, ServerRecord, SwarmMember

_CHUNK_BATCH = 500  # digests per query (SQLite's placeholders are limited)


def labels_of(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text or text == "{}":  # most servers: no JSON to parse
        return ()
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))


def _package(row: Row) -> PackageRecord:
    return PackageRecord(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        size=row["size"],
        file_count=row["file_count"],
        chunk_count=row["chunk_count"],
        created_at=row["created_at"],
    )


class CatalogQueries:
    db: Database

    # --- site -----------------------------------------------------------------------------

    def init_site(self, name: str, now: float) -> None:
        with self.db.transaction():
            if self.db.row("site_row") is not None:
                raise AlreadyExists("the database already holds a site")
            self.db.run("insert_site", name=name, now=now)

    def site_name(self) -> str:
        name = self.db.value("site_row")
        if name is None:
            raise StoreError("the database holds no site")
        return str(name)

    # --- packages and chunks --------------------------------------------------------------

    def known_chunks(self, digests: list[Digest]) -> set[Digest]:
        found: set[Digest] = set()
        for i in range(0, len(digests), _CHUNK_BATCH):
            batch = [d.raw for d in digests[i : i + _CHUNK_BATCH]]
            rows = self.db.rows("known_chunks", digests=batch)
            found.update(Digest(bytes(r["digest"])) for r in rows)
        return found

    def add_package(
        self, manifest: Manifest, signature: bytes, new_chunks: dict[Digest, int], now: float
    ) -> PackageRecord:
        """Record a package whose chunks are durably in the library (one transaction)."""
        record = PackageRecord(
            manifest.id.hex,
            manifest.name,
            manifest.version,
            manifest.total_size,
            manifest.file_count,
            len(manifest.chunk_sizes()),
            now,
        )
        with self.db.transaction():
            if self.db.row("package_exists", name=manifest.name, version=manifest.version):
                raise AlreadyExists(f"{manifest.ref} already exists")
            self.db.run_many(
                "insert_chunk", [{"digest": d.raw, "size": s} for d, s in new_chunks.items()]
            )
            self.db.run(
                "insert_package",
                id=record.id,
                name=record.name,
                version=record.version,
                manifest=manifest.canonical(),
                signature=signature,
                size=record.size,
                file_count=record.file_count,
                chunk_count=record.chunk_count,
                now=now,
            )
        return record

    def find_package(self, name: str, version: str) -> PackageRecord | None:
        row = self.db.row("package_by_name", name=name, version=version)
        return _package(row) if row else None

    def package_by_id(self, package_id: str) -> PackageRecord | None:
        row = self.db.row("package_by_id", id=package_id)
        return _package(row) if row else None

    def package_manifest(self, package_id: str) -> tuple[bytes, bytes]:
        """The canonical manifest and its signature."""
        row = self.db.row("package_manifest", id=package_id)
        if row is None:
            raise NotFound(f"no package with id {package_id[:12]}…")
        return bytes(row["manifest"]), bytes(row["signature"])

    def list_packages(self) -> list[PackageRecord]:
        return [_package(r) for r in self.db.rows("list_packages")]

    def package_refs(self) -> dict[str, str]:
        """package id -> ``name@version``."""
        return {r["id"]: f"{r['name']}@{r['version']}" for r in self.db.rows("package_refs")}

    # --- servers --------------------------------------------------------------------------

    def add_server(
        self,
        name: str,
        url: str,
        token_hash: str,
        groups: list[str],
        labels: dict[str, str] | None,
        now: float,
    ) -> None:
        """Enrol a server; a removed server of that name enrols again with no old state."""
        fields: dict[str, Any] = {
            "name": name,
            "url": url,
            "token_hash": token_hash,
            "now": now,
            "labels": json.dumps(labels or {}, sort_keys=True),
        }
        with self.db.transaction():
            removed = self.db.value("server_removed_flag", name=name)
            if removed is not None and not removed:
                raise AlreadyExists(f"server {name} already exists")
            if removed is None:
                self.db.run("insert_server", **fields)
            else:
                self.db.run("reenrol_server", **fields)
                self.db.run("clear_server_groups", name=name)
                self.db.run("clear_server_holdings", name=name)
            self.db.run_many("insert_server_group", [{"server": name, "grp": g} for g in groups])

    def mark_server_removed(self, name: str, now: float) -> None:
        """The server is gone (its token revoked); NotFound if it was not enrolled."""
        if not self.db.rows("mark_server_removed", name=name, now=now):
            raise NotFound(f"no server named {name}")

    def servers_removed_since(self, since: float, limit: int) -> list[str]:
        """The servers removed at ``since`` or later, newest first, at most ``limit``."""
        return [r["name"] for r in self.db.rows("servers_removed_since", since=since, limit=limit)]

    def _servers(self, rows: list[Row], groups: dict[str, list[str]]) -> list[ServerRecord]:
        return [
            ServerRecord(
                name=r["name"],
                url=r["url"],
                groups=tuple(groups.get(r["name"], ())),
                created_at=r["created_at"],
                last_seen=r["last_seen"],
                disk_free=r["disk_free"],
                labels=labels_of(r["labels"]),
            )
            for r in rows
        ]

    def _one_server(self, row: Row | None) -> ServerRecord | None:
        if row is None:
            return None
        groups = [g["grp"] for g in self.db.rows("groups_of_server", name=row["name"])]
        return self._servers([row], {row["name"]: groups})[0]

    def list_servers(self) -> list[ServerRecord]:
        groups = _group_map(self.db.rows("all_server_groups"))
        return self._servers(self.db.rows("live_servers"), groups)

    def servers_named(self, names: list[str]) -> list[ServerRecord]:
        """The enrolled servers among ``names``, by name: two queries, whatever the count
        (a page of the dashboard, not one query per server)."""
        if not names:
            return []
        groups = _group_map(self.db.rows("groups_of_servers", names=names))
        return self._servers(self.db.rows("live_servers_named", names=names), groups)

    def server(self, name: str) -> ServerRecord | None:
        """A server that is enrolled (not removed)."""
        return self._one_server(self.db.row("live_server_by_name", name=name))

    def server_by_token_hash(self, token_hash: str) -> ServerRecord | None:
        return self._one_server(self.db.row("live_server_by_token", token_hash=token_hash))

    def live_token_hashes(self, hashes: list[str]) -> set[str]:
        """Those of ``hashes`` that still belong to an enrolled server (not removed, not
        enrolled again with another token)."""
        return {r["token_hash"] for r in self.db.rows("live_token_hashes_among", hashes=hashes)}

    def server_names(self) -> list[str]:
        """The names of every enrolled server, in order (no other column read)."""
        return [r["name"] for r in self.db.rows("live_server_names")]

    def live_server_names(self, names: list[str]) -> set[str]:
        return {r["name"] for r in self.db.rows("live_server_names_among", names=names)}

    def servers_in_group(self, group: str) -> list[str]:
        return [r["server"] for r in self.db.rows("servers_in_group", grp=group)]

    def swarm(self, package_id: str, now: float) -> list[SwarmMember]:
        """Servers that hold ``package_id`` (installed and not known corrupt) or are about
        to receive it (an instruction pending, sending, or retrying and due), by name."""
        return [
            SwarmMember(
                r["name"], r["url"], labels_of(r["labels"]), r["last_seen"], bool(r["holder"])
            )
            for r in self.db.rows(
                "swarm",
                pkg=package_id,
                now=now,
                receiving=sorted(s.value for s in states.RECEIVING),
                backing_off=states.BACKING_OFF.value,
            )
        ]

    def server_liveness(self, name: str) -> Row | None:
        """``last_seen``, ``boot_id`` and ``back_at`` of an enrolled server."""
        return self.db.row("server_liveness", name=name)

    def record_liveness(
        self, name: str, boot_id: str, disk_free: int | None, now: float, came_back: bool
    ) -> None:
        self.db.run(
            "record_liveness",
            name=name,
            boot_id=boot_id,
            disk_free=disk_free,
            now=now,
            came_back=int(came_back),
        )

    def touch_servers(self, heard: list[tuple[str, float, int | None]]) -> None:
        """Write a batch of ``(server, last_seen, disk_free)`` in one transaction (times
        only move forward; removed servers are left alone)."""
        rows = [{"name": n, "last_seen": t, "disk_free": d} for n, t, d in heard]
        with self.db.transaction():
            self.db.run_many("touch_server", rows)

    # --- what servers hold ----------------------------------------------------------------

    def holdings(self, server: str) -> set[str]:
        return {r["package_id"] for r in self.db.rows("holdings_of_server", server=server)}

    def drop_holding(self, server: str, package_id: str) -> None:
        self.db.run("drop_holding", server=server, package_id=package_id)

    def add_holding(self, server: str, package_id: str, now: float) -> None:
        self.db.run("add_holding", server=server, package_id=package_id, now=now)

    def record_verified_install(self, server: str, package_id: str, now: float) -> None:
        self.db.run("install_holding", server=server, package_id=package_id, now=now)

    def mark_corrupt(self, server: str, package_id: str, words: str, now: float) -> None:
        self.db.run(
            "mark_holding_corrupt", server=server, package_id=package_id, now=now, corrupt=words
        )

    def clear_corrupt(self, server: str, package_id: str) -> bool:
        """True if the copy had been marked corrupt."""
        return self.db.run("clear_holding_corrupt", server=server, package_id=package_id) > 0

    def package_holders(self, package_id: str, unfinished: list[str]) -> list[str]:
        """Servers (not removed) that hold the package, as last reported, or have an install
        instruction for it in one of the ``unfinished`` states."""
        return [
            r["server"]
            for r in self.db.rows("package_holders", pkg=package_id, unfinished=unfinished)
        ]


def _group_map(rows: list[Row]) -> dict[str, list[str]]:
    """server -> its groups, from ``(server, grp)`` rows in order."""
    groups: dict[str, list[str]] = {}
    for g in rows:
        groups.setdefault(g["server"], []).append(g["grp"])
    return groups
