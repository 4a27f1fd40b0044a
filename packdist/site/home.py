"""The site home: database, content library and signing key, side by side."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from packdist.core.names import check_server_name
from packdist.core.signing import SigningKey
from packdist.errors import AlreadyExists, UserError
from packdist.site.library import ContentLibrary
from packdist.store import Store, open_store

DB_NAME = "site.db"
KEY_NAME = "site.key"
AGENT_MARKER = "agent.json"


@dataclass
class SiteHome:
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def key_path(self) -> Path:
        return self.root / KEY_NAME

    @property
    def library(self) -> ContentLibrary:
        return ContentLibrary(self.root / "library")

    def exists(self) -> bool:
        return self.db_path.exists()

    @classmethod
    def init(cls, root: Path, name: str | None) -> SiteHome:
        """Create a site. Refuses a home that already holds a site (or an agent)."""
        home = cls(root)
        site_name = check_server_name(name or socket.gethostname().split(".")[0] or "site")
        if home.exists() or home.key_path.exists() or (root / "library").exists():
            raise AlreadyExists(f"{root} already holds a site")
        if (root / AGENT_MARKER).exists():
            raise AlreadyExists(f"{root} is an agent's home; a site and an agent never share one")
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        # Key and library first, database last: the database marks a complete site.
        SigningKey.generate().save(home.key_path)
        home.library.create()
        store = open_store(home.db_path)
        try:
            store.init_site(site_name, time.time())
        finally:
            store.close()
        return home

    @classmethod
    def open(cls, root: Path) -> SiteHome:
        home = cls(root)
        if not home.exists():
            raise UserError(f"no site in {root} (run 'packdist site init' first)")
        return home

    def store(self) -> Store:
        return open_store(self.db_path)

    def signing_key(self) -> SigningKey:
        return SigningKey.load(self.key_path)
