"""An agent's home: installed packages, the chunk cache, staging and enrollment facts.

::

    HOME/agent.json                  enrollment: site URL, server name, site public key
    HOME/packages/NAME/VERSION/      installed trees (exactly the source tree)
    HOME/state/installed.json        NAME@VERSION -> package id, for what is installed
    HOME/cache/chunks/ab/ab12…       verified chunks, kept for resume and deltas
    HOME/staging/                    trees being built (same file system as packages/)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packdist.core.digest import Digest
from packdist.core.fsutil import write_atomic
from packdist.errors import AlreadyExists

ENROLLMENT = "agent.json"
SITE_MARKER = "site.db"


@dataclass
class AgentHome:
    root: Path

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def chunks(self) -> Path:
        return self.root / "cache" / "chunks"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def installed_file(self) -> Path:
        return self.root / "state" / "installed.json"

    def prepare(self) -> None:
        if (self.root / SITE_MARKER).exists():
            raise AlreadyExists(
                f"{self.root} is a site's home; a site and an agent never share one"
            )
        for d in (self.packages, self.chunks, self.staging, self.installed_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.chunks / f"{i:02x}").mkdir(exist_ok=True)

    def chunk_path(self, digest: Digest) -> Path:
        return self.chunks / digest.shard / digest.hex

    def package_dir(self, name: str, version: str) -> Path:
        return self.packages / name / version

    # --- enrollment -----------------------------------------------------------------------

    def load_enrollment(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.root / ENROLLMENT).read_text())
            return data
        except FileNotFoundError:
            return None

    def save_enrollment(self, data: dict[str, Any]) -> None:
        write_atomic(self.root / ENROLLMENT, json.dumps(data, indent=2).encode(), 0o600)

    # --- installed versions ---------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """NAME@VERSION -> package id, for versions whose tree is in place."""
        try:
            data: dict[str, str] = json.loads(self.installed_file.read_text())
        except FileNotFoundError:
            return {}
        return {
            ref: pid for ref, pid in data.items() if self.package_dir(*ref.split("@", 1)).is_dir()
        }

    def record_installed(self, ref: str, package_id: str) -> None:
        data = self.installed()
        data[ref] = package_id
        write_atomic(self.installed_file, json.dumps(data, indent=2, sort_keys=True).encode())

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
