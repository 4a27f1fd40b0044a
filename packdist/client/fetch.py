"""``packdist fetch REF --into DIR --site URL --token TOKEN``: the stages in order.

1. the site's authority checked against the token, the sources asked for (a removed
   client, a bad token: refused here, nothing changed);
2. the manifest verified against the site's signature and the id the site named;
3. the staging tree laid out beside DIR, or resumed, and filled with what is here;
4. what is missing fetched from the sources nearest first, the site last;
5. DIR replaced in one step, and the fetch reported to the site (an event, ``/metrics``;
   a site that cannot take the report does not undo the fetch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packdist.client.commit import put_in_place
from packdist.client.link import SiteLink
from packdist.client.staging import Places, WritePlan, fill_locally, lay_out
from packdist.client.transfer import TIMEOUTS, Progress, Requester, fetch_missing
from packdist.core.manifest import SignedManifest
from packdist.core.names import parse_ref
from packdist.core.signing import VerifyKey
from packdist.errors import IntegrityError, PackdistError
from packdist.protocol.chunk_stream import ChunkStreams
from packdist.protocol.client_api import SITE, FetchReport, Source


@dataclass
class FetchResult:
    ref: str
    package_id: str
    into: Path
    by_source: dict[str, int]  # bytes fetched from each source
    local: int  # bytes found here (DIR's older version, a resumed staging tree)
    seconds: float
    sources: list[str]  # as offered, nearest first, the site last
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    reported: str | None = None  # the site's event words, or None if it took no report

    @property
    def fetched(self) -> int:
        return sum(self.by_source.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.ref,
            "package_id": self.package_id,
            "into": str(self.into),
            "bytes": self.by_source,
            "fetched": self.fetched,
            "local": self.local,
            "seconds": round(self.seconds, 3),
            "sources": self.sources,
            "dropped": [{"source": s, "error": why} for s, why in self.dropped],
            "reported": self.reported,
        }


def fetch(
    ref: str,
    into: Path,
    site_url: str,
    token: str,
    say: Callable[[str], None] = lambda words: None,
) -> FetchResult:
    started = time.monotonic()
    name, version = parse_ref(ref)
    places = Places.of(into)
    link = SiteLink(site_url, token)
    with places.locked():
        answer = link.sources(f"{name}@{version}")
        signed = _verified(ref, answer.manifest, answer.signature,
                           [answer.site_public_key, *answer.trusted_keys])  # fmt: skip
        manifest = signed.manifest
        if manifest.id.hex != answer.package_id or manifest.ref != f"{name}@{version}":
            raise IntegrityError(f"the site sent the manifest of another package than {ref}")
        sources = [*answer.sources, Source(SITE, link.url, None, is_site=True)]
        resumed = lay_out(places, manifest)
        plan = WritePlan(manifest, places.tree)
        progress = Progress()
        try:
            older = places.installed()
            local = fill_locally(plan, resumed, (older, places.into) if older else None)
            if plan.missing:
                streams = ChunkStreams(link.tls(), TIMEOUTS)
                try:
                    ask = Requester(
                        streams,
                        manifest.id.hex,
                        answer.credential,
                        token,
                        renew=lambda: link.sources(manifest.ref).credential,
                    )
                    fetch_missing(plan, sources, ask, progress, say)
                finally:
                    streams.close()
        finally:
            plan.close()
        put_in_place(places, manifest)
    seconds = time.monotonic() - started
    result = FetchResult(
        ref=manifest.ref,
        package_id=manifest.id.hex,
        into=places.into,
        by_source=progress.by_source,
        local=local,
        seconds=seconds,
        sources=[s.name for s in sources],
        dropped=progress.dropped,
    )
    try:
        result.reported = link.report(
            FetchReport(manifest.id.hex, progress.by_source, local, seconds)
        )
    except PackdistError as exc:
        say(f"the fetch is in place, but the site took no report of it: {exc.message}")
    return result


def _verified(ref: str, data: bytes, signature: bytes, keys: list[str]) -> SignedManifest:
    """The manifest, verified by the site's key or one of the sites' above it (a package a
    child site pulled from its parent keeps the parent's signature)."""
    why = "no key"
    for hex_key in keys:
        try:
            return SignedManifest.verify(data, signature, VerifyKey.from_hex(hex_key))
        except (PackdistError, ValueError) as exc:
            why = exc.message if isinstance(exc, PackdistError) else str(exc)
    raise IntegrityError(f"the manifest of {ref} does not verify: {why}")
