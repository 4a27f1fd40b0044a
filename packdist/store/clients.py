"""The store's clients: machines that fetch packages into a directory of their own
(``packdist fetch``), each with a token (only its hash is kept) and location labels; and
what they fetched, counted by package and source for ``/metrics``.

Plain reads and writes by intent, as in :mod:`packdist.store.catalog`; which sources a
client is offered, nearest first, is decided in :mod:`packdist.service.clients`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from packdist.errors import AlreadyExists, NotFound
from packdist.store.catalog import labels_of
from packdist.store.db import Database, Row

SITE_SOURCE = ""  # the source column of a package's own counts (requests, fetches)


@dataclass(frozen=True)
class ClientRecord:
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by key
    created_at: float
    last_fetch: float | None  # its last sources request

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class ClientTotal:
    package_id: str
    ref: str  # NAME@VERSION
    source: str  # a server's name, "site", or SITE_SOURCE for the package's own counts
    requests: int
    fetches: int
    bytes: int


class ClientQueries:
    db: Database

    def add_client(self, name: str, token_hash: str, labels: dict[str, str], now: float) -> None:
        """Register a client; AlreadyExists if one has that name."""
        with self.db.transaction():
            if self.db.value("client_exists", name=name) is not None:
                raise AlreadyExists(f"client {name} already exists")
            self.db.run(
                "insert_client",
                name=name,
                token_hash=token_hash,
                labels=json.dumps(labels, sort_keys=True),
                now=now,
            )

    def remove_client(self, name: str) -> None:
        """Forget a client (its token is refused from now on); NotFound if there is none."""
        if not self.db.run("delete_client", name=name):
            raise NotFound(f"no client named {name}")

    def client_by_token_hash(self, token_hash: str) -> ClientRecord | None:
        row = self.db.row("client_by_token", token_hash=token_hash)
        return None if row is None else _client(row)

    def list_clients(self) -> list[ClientRecord]:
        return [_client(r) for r in self.db.rows("list_clients")]

    def client_fetching(self, name: str, now: float) -> None:
        self.db.run("client_fetching", name=name, now=now)

    def count_client(
        self, package_id: str, source: str, requests: int = 0, fetches: int = 0, nbytes: int = 0
    ) -> None:
        self.db.run(
            "count_client_totals",
            package_id=package_id,
            source=source,
            requests=requests,
            fetches=fetches,
            bytes=nbytes,
        )

    def client_totals(self) -> list[ClientTotal]:
        return [
            ClientTotal(
                str(r["package_id"]),
                str(r["ref"]),
                str(r["source"]),
                int(r["requests"]),
                int(r["fetches"]),
                int(r["bytes"]),
            )
            for r in self.db.rows("client_totals")
        ]


def _client(r: Row) -> ClientRecord:
    return ClientRecord(
        name=str(r["name"]),
        labels=labels_of(r["labels"]),
        created_at=float(r["created_at"]),
        last_fetch=None if r["last_fetch"] is None else float(r["last_fetch"]),
    )
