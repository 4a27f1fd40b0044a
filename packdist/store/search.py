"""The store's search for the dashboard: servers and packages whose name holds the text,
jobs whose id starts with it. Bounded reads (``limit``), with LIKE's wildcards in the
text taken literally."""

from __future__ import annotations

from dataclasses import dataclass

from packdist.store.db import Database


@dataclass(frozen=True)
class Found:
    servers: list[str]
    packages: list[str]  # NAME@VERSION
    jobs: list[str]


def _literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SearchQueries:
    db: Database

    def search(self, text: str, limit: int = 50) -> Found:
        literal = _literal(text)
        servers = self.db.rows("search_servers", pattern=f"%{literal}%", limit=limit)
        packages = self.db.rows("search_packages", pattern=f"%{literal}%", text=text, limit=limit)
        jobs = self.db.rows("search_jobs", prefix=f"{literal}%", limit=limit)
        return Found(
            [r["name"] for r in servers],
            [f"{r['name']}@{r['version']}" for r in packages],
            [r["id"] for r in jobs],
        )

    def group_names(self, limit: int = 500) -> list[str]:
        """The groups of servers not removed, by name (for a page's choice of targets)."""
        return [r["grp"] for r in self.db.rows("group_names", limit=limit)]
