"""The messages between a site and its agents, typed once.

Each message is a frozen dataclass with ``to_json()`` and ``from_json()``. ``from_json``
checks everything it reads: what is not the message it should be is a
:class:`~packdist.errors.UserError` naming the problem (an HTTP 400), never an exception
that escapes as a 500. Answers read by the site (``InstallStatus``) tolerate fields an older
agent does not send. Chunk streams are framed in :mod:`packdist.http` (``Frame``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from packdist.errors import ErrorKind, PackdistError, UserError, kind_named

MAX_INSTALLED = 100_000  # package ids a heartbeat may list


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UserError(f"{what} must be a JSON object")
    return body


def _b64(body: dict[str, Any], key: str, what: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, str):
        raise UserError(f"malformed {what}: {key} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"malformed {what}: {key} is not base64 ({exc})") from None


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class InstallRequest:
    """The site to an agent: install this signed manifest (``POST /v1/install``)."""

    manifest: bytes
    signature: bytes
    repair: bool = False  # rebuild an installed version, fetching only its damaged chunks
    peers: list[dict[str, Any]] = field(default_factory=list)  # other sources
    #: the credential for every peer of ``peers`` that brings none of its own (one signature
    #: per install, not one per peer, and not repeated in each entry)
    peer_token: str = ""
    #: the job asking: its later attempts join the install once it ended (its bytes are
    #: theirs); another job's request for a version held already is answered afresh
    job: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "manifest": base64.b64encode(self.manifest).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.job:
            body["job"] = self.job
        if self.repair:
            body["repair"] = True
        if self.peers:
            body["peers"] = self.peers
        if self.peer_token:
            body["peer_token"] = self.peer_token
        return body

    @classmethod
    def from_json(cls, body: Any) -> InstallRequest:
        what = "install request"
        body = _object(body, what)
        repair = body.get("repair", False)
        if not isinstance(repair, bool):
            raise UserError(f"malformed {what}: repair must be true or false")
        peers = body.get("peers", [])
        if not isinstance(peers, list):
            raise UserError(f"malformed {what}: peers must be a list")
        token = body.get("peer_token", "")
        if not isinstance(token, str):
            raise UserError(f"malformed {what}: peer_token must be a string")
        job = body.get("job", "")
        if not isinstance(job, str) or len(job) > 64:
            raise UserError(f"malformed {what}: job must be a job id")
        manifest, signature = _b64(body, "manifest", what), _b64(body, "signature", what)
        return cls(manifest, signature, repair, peers, token, job)


@dataclass(frozen=True)
class InstallStatus:
    """An agent's account of one install (its answer to install, status and cancel)."""

    package_id: str
    state: str  # installing | installed | failed | cancelled
    package: str | None = None
    error: str | None = None
    error_kind: str | None = None  # packdist.errors.ErrorKind of the failure
    error_chunk: str | None = None  # the chunk that failed to verify, if one did
    bytes_received: int = 0
    bytes_wire: int = 0  # what crossed the wire (compressed, or a delta)
    bytes_from_peers: int = 0
    bytes_done: int = 0  # how much of the package the agent holds so far
    bytes_total: int = 0
    phase: str | None = None
    progress: int = 0  # grows while the install moves

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> InstallStatus:
        body = _object(body, "install status")
        return cls(
            package_id=_text(body, "package_id") or "",
            state=_text(body, "state") or "",
            package=_text(body, "package"),
            error=_text(body, "error"),
            error_kind=_text(body, "error_kind"),
            error_chunk=_text(body, "error_chunk"),
            # agents before wire counting: chunk bytes
            bytes_received=_int(body, "bytes_received"),
            bytes_wire=_int(body, "bytes_wire" if "bytes_wire" in body else "bytes_received"),
            bytes_from_peers=_int(body, "bytes_from_peers"),
            bytes_done=_int(body, "bytes_done"),
            bytes_total=_int(body, "bytes_total"),
            phase=_text(body, "phase"),
            progress=_int(body, "progress"),
        )

    @property
    def kind(self) -> ErrorKind:
        return kind_named(self.error_kind)


@dataclass(frozen=True)
class Heartbeat:
    """An agent to its site, every few seconds (``POST /v1/agent/heartbeat``)."""

    boot_id: str
    disk_free: int | None
    installed: list[str]  # package ids held, verified
    active: list[str] = field(default_factory=list)  # of those, the active versions' ids

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> Heartbeat:
        body = _object(body, "heartbeat body")
        boot_id = body.get("boot_id", "")
        if not isinstance(boot_id, str):
            raise UserError("heartbeat boot_id must be a string")
        disk_free = body.get("disk_free")
        if disk_free is not None and (
            isinstance(disk_free, bool) or not isinstance(disk_free, int) or disk_free < 0
        ):
            raise UserError("heartbeat disk_free must be a non-negative integer or null")
        installed = body.get("installed", [])
        if not isinstance(installed, list) or not all(isinstance(x, str) for x in installed):
            raise UserError("heartbeat installed must be a list of strings")
        active = body.get("active", [])  # an older agent sends none
        if not isinstance(active, list) or not all(isinstance(x, str) for x in active):
            raise UserError("heartbeat active must be a list of strings")
        return cls(boot_id, disk_free, installed[:MAX_INSTALLED], active[:MAX_INSTALLED])


@dataclass(frozen=True)
class RemoveRequest:
    """The site to an agent: remove this version (``POST /v1/remove``)."""

    package_id: str
    package: str  # NAME@VERSION

    what = "remove request"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> Self:
        from packdist.core.names import parse_ref

        body = _object(body, cls.what)
        pid, ref = body.get("package_id"), body.get("package")
        try:
            if not isinstance(pid, str) or len(pid) != 64 or not _is_hex(pid):
                raise UserError("package_id must be a package id (64 hex digits)")
            if not isinstance(ref, str):
                raise UserError("package must be NAME@VERSION")
            name, version = parse_ref(ref)
        except PackdistError as exc:
            raise UserError(f"malformed {cls.what}: {exc.message}") from None
        return cls(pid, f"{name}@{version}")


MAX_CHECK_WORDS = 64  # a health check's program and arguments, at most
MAX_CHECK_CHARS = 4096
MAX_CHECK_TIMEOUT = 3600.0  # seconds a health check may be given, at most


@dataclass(frozen=True)
class ActivateRequest(RemoveRequest):
    """The site to an agent: make this installed version the active one of its package
    (``POST /v1/activate``; ``packages/NAME/current``), once ``check`` (a program of the
    package and its arguments; empty: none) exited 0 in its tree within ``check_timeout``."""

    check: tuple[str, ...] = ()
    check_timeout: float = 60.0

    what = "activate request"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"package_id": self.package_id, "package": self.package}
        if self.check:
            doc |= {"check": list(self.check), "check_timeout": self.check_timeout}
        return doc

    @classmethod
    def from_json(cls, body: Any) -> Self:
        plain = super().from_json(body)  # its package, worded as an activate request
        check, timeout = body.get("check", []), body.get("check_timeout", 60.0)
        if (
            not isinstance(check, list)
            or len(check) > MAX_CHECK_WORDS
            or not all(isinstance(w, str) for w in check)
            or sum(len(w) for w in check) > MAX_CHECK_CHARS
        ):
            raise UserError(f"malformed {cls.what}: check must be a short list of words")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise UserError(f"malformed {cls.what}: check_timeout must be seconds")
        return cls(plain.package_id, plain.package, tuple(check), float(timeout))


@dataclass(frozen=True)
class ActivateAnswer:
    """The agent's answer: the version now active, and the one active before."""

    package: str  # NAME@VERSION
    previous: str | None  # VERSION, or None: no version was active
    checked: bool = False  # the request's health check ran and passed (an older agent: no)

    def to_json(self) -> dict[str, Any]:
        doc = {"state": "active", "package": self.package, "previous": self.previous}
        return doc | {"checked": True} if self.checked else doc

    @classmethod
    def from_json(cls, body: Any) -> ActivateAnswer:
        body = _object(body, "activate answer")
        package, previous = body.get("package"), body.get("previous")
        if body.get("state") != "active" or not isinstance(package, str):
            raise UserError("an activate answer says state active and names the package")
        if previous is not None and not isinstance(previous, str):
            raise UserError("an activate answer's previous is a version or null")
        return cls(package, previous, body.get("checked") is True)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


MAX_PEM = 16 * 1024  # characters of a certificate or a request, at most


def _pem(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if (
        not isinstance(value, str)
        or not value.isascii()  # PEM is ASCII; a lone surrogate would not even encode
        or not value.startswith("-----BEGIN ")
        or len(value) > MAX_PEM
    ):
        raise UserError(f"malformed {what}: {key} must be PEM text of at most {MAX_PEM} characters")
    return value


@dataclass(frozen=True)
class CertificateRequest:
    """An agent to the site: sign a certificate for my key (``POST /v1/agent/certificate``).
    What the request asks for beyond its key is ignored: the site names the server and the
    hosts (those of the URL the server was added with)."""

    request: str  # PEM certificate signing request

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request}

    @classmethod
    def from_json(cls, body: Any) -> CertificateRequest:
        return cls(_pem(_object(body, "certificate request"), "request", "certificate request"))


@dataclass(frozen=True)
class CertificateAnswer:
    """The site's answer: the agent's certificate and the site's authority (which the agent
    checks against the fingerprint its enrollment token carries)."""

    certificate: str  # PEM
    authority: str  # PEM
    not_after: float  # seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> CertificateAnswer:
        what = "certificate answer"
        body = _object(body, what)
        not_after = body.get("not_after")
        if not isinstance(not_after, int | float) or isinstance(not_after, bool):
            raise UserError(f"malformed {what}: not_after must be a number")
        return cls(_pem(body, "certificate", what), _pem(body, "authority", what), float(not_after))
