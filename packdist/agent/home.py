"""An agent's home: installed packages, the chunk cache, staging and enrollment facts.

::

    HOME/agent.json                  enrollment: site URL, server name, site public key
    HOME/packages/NAME/VERSION/      installed trees (exactly the source tree)
    HOME/state/installed.json        NAME@VERSION -> package id, for what is installed
    HOME/state/manifests/<id>        canonical manifests of installed versions (local chunk
                                     sources for later versions)
    HOME/staging/<id>/               a version being built (same file system as packages/);
                                     kept across restarts so an install resumes
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packdist.core import fsutil
from packdist.core.fsutil import write_atomic
from packdist.errors import AlreadyExists, UserError

ENROLLMENT = "agent.json"
SITE_MARKER = "site.db"


@dataclass
class AgentHome:
    root: Path
    #: serialises read-modify-write of ``installed.json`` (installs finish in worker threads)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def manifests(self) -> Path:
        return self.root / "state" / "manifests"

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
        for d in (self.packages, self.staging, self.installed_file.parent, self.manifests):
            d.mkdir(parents=True, exist_ok=True)

    def package_dir(self, name: str, version: str) -> Path:
        return self.packages / name / version

    def ref_dir(self, ref: str) -> Path:
        """The folder of ``NAME@VERSION`` (a ref this agent recorded itself)."""
        name, _, version = ref.partition("@")
        return self.package_dir(name, version)

    # --- enrollment -----------------------------------------------------------------------

    def load_enrollment(self) -> dict[str, Any] | None:
        """What ``agent.json`` says (None before the first enrollment).

        A file that cannot be read as enrollment facts is a :class:`UserError` naming it: the
        agent must not silently forget the site key it pinned.
        """
        path = self.root / ENROLLMENT
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(
                f"{path}: corrupt enrollment file ({exc}); remove it to enroll again"
            ) from exc
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) for k in ("site_url", "server", "site_public_key")
        ):
            raise UserError(
                f"{path}: corrupt enrollment file (site_url, server and site_public_key are "
                "required); remove it to enroll again"
            )
        return data

    def save_enrollment(self, data: dict[str, Any]) -> None:
        write_atomic(self.root / ENROLLMENT, json.dumps(data, indent=2).encode(), 0o600)

    # --- installed versions ---------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """NAME@VERSION -> package id, for versions whose tree is in place."""
        try:
            data: dict[str, str] = json.loads(self.installed_file.read_text())
        except FileNotFoundError:
            return {}
        return {ref: pid for ref, pid in data.items() if self.ref_dir(ref).is_dir()}

    def record_installed(self, ref: str, package_id: str) -> None:
        """Record ``ref`` as installed with ``package_id`` (safe from several threads)."""
        with self._lock:
            data = self.installed()
            data[ref] = package_id
            write_atomic(self.installed_file, json.dumps(data, indent=2, sort_keys=True).encode())

    def save_manifest(self, package_id: str, canonical: bytes) -> None:
        write_atomic(self.manifests / package_id, canonical)

    def load_manifest(self, package_id: str) -> bytes | None:
        try:
            return (self.manifests / package_id).read_bytes()
        except FileNotFoundError:
            return None

    def free_bytes(self) -> int:
        return fsutil.free_bytes(self.root)
