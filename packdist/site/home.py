"""The site home: database, content library, signing key and certificate authority, side by
side.

The database is ``site.db`` (SQLite) unless the site was made with ``--store
postgresql://…``: the home then keeps that URL in ``store.url`` (mode 0600: it may hold a
password), and several ``site serve`` processes may share the home and the database.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packdist.core.fsutil import write_atomic
from packdist.core.names import check_server_name
from packdist.errors import AlreadyExists, UserError
from packdist.site.library import ContentLibrary
from packdist.store import Store, is_store_url, open_store
from packdist.store.postgres import redacted

if TYPE_CHECKING:
    from packdist.core.signing import SigningKey
    from packdist.site.authority import SiteAuthority

DB_NAME = "site.db"
STORE_URL_NAME = "store.url"
KEY_NAME = "site.key"
AGENT_MARKER = "agent.json"
PARTS = ("library", "tls")  # folders of a site: one left over refuses a new site


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

    @property
    def store_url_path(self) -> Path:
        return self.root / STORE_URL_NAME

    def store_url(self) -> str | None:
        """The PostgreSQL URL of this site's store (None: SQLite in the home)."""
        try:
            return self.store_url_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def exists(self) -> bool:
        return self.db_path.exists() or self.store_url_path.exists()

    @classmethod
    def init(cls, root: Path, name: str | None, store_url: str | None = None) -> SiteHome:
        """Create a site. Refuses a home that already holds a site (or an agent), and a
        database that already holds one."""
        home = cls(root)
        site_name = check_server_name(name or socket.gethostname().split(".")[0] or "site")
        if home.exists() or home.key_path.exists() or any((root / d).exists() for d in PARTS):
            raise AlreadyExists(f"{root} already holds a site")
        if (root / AGENT_MARKER).exists():
            raise AlreadyExists(f"{root} is an agent's home; a site and an agent never share one")
        if store_url is not None and not is_store_url(store_url):
            raise UserError(f"--store takes a postgresql:// URL, not {redacted(store_url)}")
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        # Keys and library first, database last: the database marks a complete site.
        from packdist.core.signing import SigningKey  # cryptography: only where needed

        SigningKey.generate().save(home.key_path)
        try:
            from packdist.site.authority import SiteAuthority  # x509: only where needed

            SiteAuthority.create(root, site_name, time.time())
            home.library.create()
            home._init_store(site_name, store_url)
        except BaseException:  # refused (a database that holds a site already): undo
            home.key_path.unlink(missing_ok=True)
            for part in PARTS:
                shutil.rmtree(home.root / part, ignore_errors=True)
            home.db_path.unlink(missing_ok=True)
            raise
        return home

    def _init_store(self, site_name: str, store_url: str | None) -> None:
        store = open_store(self.db_path if store_url is None else store_url)
        try:
            store.init_site(site_name, time.time())
        finally:
            store.close()
        if store_url is not None:  # the URL marks a complete site, so it comes last
            write_atomic(self.store_url_path, store_url.encode() + b"\n", mode=0o600)

    @classmethod
    def open(cls, root: Path) -> SiteHome:
        home = cls(root)
        if not home.exists():
            raise UserError(f"no site in {root} (run 'packdist site init' first)")
        return home

    def store(self) -> Store:
        url = self.store_url()
        return open_store(url if url is not None else self.db_path)

    def signing_key(self) -> SigningKey:
        from packdist.core.signing import SigningKey

        return SigningKey.load(self.key_path)

    def authority(self) -> SiteAuthority:
        from packdist.site.authority import (
            SiteAuthority,  # x509: the CLI's store commands need none
        )

        """The site's certificate authority; a home made before sites had one gets it now
        (once: workers starting together wait on the same lock, then load it)."""
        if not SiteAuthority.paths(self.root)[1].parent.exists():
            store = self.store()
            try:
                name = store.site_name()
            finally:
                store.close()
            try:
                return SiteAuthority.create(self.root, name, time.time())
            except AlreadyExists:  # another worker made it first
                pass
        return SiteAuthority.load(self.root)
