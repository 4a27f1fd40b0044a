"""What a client (``packdist fetch``) and its site say to each other, typed once.

* ``POST /v1/client/sources`` (client token): :class:`SourcesRequest` ->
  :class:`SourcesAnswer`, the package's signed manifest, its sources nearest first and the
  credential the agents among them take (:func:`packdist.auth.client_assertion`).
* ``POST /v1/client/report`` (client token): :class:`FetchReport`, what a fetch took from
  each source, once it is in place.

Chunks then come from agents (``POST /v1/peer/chunks``, the peers' route) and from the
site (``POST /v1/chunks``, with the client token and the package named), as frames of
:mod:`packdist.http`. Each ``from_json`` checks what it reads: a malformed message is a
UserError (an HTTP 400), never a 500.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Self

from packdist.core.names import parse_ref
from packdist.errors import UserError
from packdist.protocol.messages import _b64, _object

SOURCES_PATH = "/v1/client/sources"
REPORT_PATH = "/v1/client/report"
SITE = "site"  # the name of the site among a client's sources
MAX_SOURCES = 64


@dataclass(frozen=True)
class SourcesRequest:
    ref: str  # NAME@VERSION

    def to_json(self) -> dict[str, Any]:
        return {"package": self.ref}

    @classmethod
    def from_json(cls, body: Any) -> Self:
        body = _object(body, "sources request")
        ref = body.get("package")
        if not isinstance(ref, str):
            raise UserError('sources request must be {"package": "NAME@VERSION"}')
        parse_ref(ref)  # InvalidName (a UserError) naming what is wrong
        return cls(ref)


@dataclass(frozen=True)
class Source:
    """Where a client may fetch the package's chunks: an agent, or the site itself."""

    name: str  # a server's name, or SITE
    url: str
    location: str | None = None  # its location label, if it has one
    is_site: bool = False  # the site itself (its chunk route), not an agent

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "location": self.location, "site": self.is_site}


@dataclass(frozen=True)
class SourcesAnswer:
    client: str
    package_id: str
    manifest: bytes  # canonical form
    signature: bytes  # the site's, over ``manifest``
    site_public_key: str  # hex: what ``signature`` verifies with
    #: the servers that hold it, nearest first; the site itself comes after them, at the
    #: URL the client asked (which the site cannot know: a proxy, a NAT)
    sources: tuple[Source, ...]
    credential: str  # for the agents among ``sources``
    #: hex keys of the sites above (a package a child site pulled keeps its parent's
    #: signature): ``signature`` may verify with one of them instead
    trusted_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "trusted_keys": list(self.trusted_keys),
            "client": self.client,
            "package_id": self.package_id,
            "manifest": base64.b64encode(self.manifest).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "site_public_key": self.site_public_key,
            "sources": [s.to_json() for s in self.sources],
            "credential": self.credential,
        }

    @classmethod
    def from_json(cls, body: Any) -> Self:
        what = "sources answer"
        body = _object(body, what)
        texts = {}
        for key in ("client", "package_id", "site_public_key", "credential"):
            value = body.get(key)
            if not isinstance(value, str):
                raise UserError(f"malformed {what}: {key} must be text")
            texts[key] = value
        listed = body.get("sources")
        if not isinstance(listed, list) or len(listed) > MAX_SOURCES:
            raise UserError(f"malformed {what}: sources must be a list of at most {MAX_SOURCES}")
        sources = []
        for item in listed:
            if not isinstance(item, dict):
                raise UserError(f"malformed {what}: a source is not an object")
            name, url, location = item.get("name"), item.get("url"), item.get("location")
            if not isinstance(name, str) or not isinstance(url, str):
                raise UserError(f"malformed {what}: a source needs a name and a URL")
            if not url.startswith(("http://", "https://")):
                raise UserError(f"malformed {what}: source {name[:40]!r} is not http(s)")
            here = location if isinstance(location, str) else None
            sources.append(Source(name, url.rstrip("/"), here, item.get("site") is True))
        return cls(
            client=texts["client"],
            package_id=texts["package_id"],
            manifest=_b64(body, "manifest", what),
            signature=_b64(body, "signature", what),
            site_public_key=texts["site_public_key"],
            sources=tuple(sources),
            credential=texts["credential"],
            trusted_keys=_keys(body.get("trusted_keys", []), what),
        )


@dataclass(frozen=True)
class FetchReport:
    """What one fetch took from each source (bytes fetched; chunks found locally count
    under ``local``, not sent)."""

    package_id: str
    by_source: dict[str, int]  # source name -> bytes fetched from it
    local: int = 0  # bytes found in DIR or in the staging left by an earlier attempt
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "package_id": self.package_id,
            "sources": dict(self.by_source),
            "local": self.local,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, body: Any) -> Self:
        what = "fetch report"
        body = _object(body, what)
        pid, sources = body.get("package_id"), body.get("sources")
        if not isinstance(pid, str) or not isinstance(sources, dict):
            raise UserError(f'{what} must be {{"package_id": id, "sources": {{name: bytes}}}}')
        if len(sources) > MAX_SOURCES + 1:
            raise UserError(f"malformed {what}: too many sources")
        by_source: dict[str, int] = {}
        for name, n in sources.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise UserError(f"malformed {what}: bytes of {str(name)[:40]!r}")
            by_source[str(name)] = n
        local, seconds = body.get("local", 0), body.get("seconds", 0.0)
        if not isinstance(local, int) or isinstance(local, bool) or local < 0:
            raise UserError(f"malformed {what}: local must be a count of bytes")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise UserError(f"malformed {what}: seconds")
        return cls(pid, by_source, local, float(seconds))


def _keys(value: Any, what: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_SOURCES
        or not all(isinstance(k, str) and len(k) <= 128 for k in value)
    ):
        raise UserError(f"malformed {what}: trusted_keys must be a short list of keys")
    return tuple(value)
