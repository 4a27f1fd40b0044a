"""Operators: named people with a role and a credential, for the dashboard and its API.

``site init`` creates the operator ``admin`` (role admin) and prints its credential once;
``packdist operator add NAME --role viewer|operator|admin`` adds more (see
:mod:`packdist.site.operator_book`). A role is what its holder may do over HTTP:

* ``viewer``: the dashboard's pages, the JSON API's reads, ``/metrics``; changes nothing;
* ``operator``: also the JSON API's write routes (cancel and retry a job), recorded in the
  events under the operator's name;
* ``admin``: everything. Adding and removing operators stays in the CLI on the site host:
  whoever can write the home can read ``site.key`` already.

A credential is ``pdo_<name>_<24 random characters>``: it names its operator, so a check
costs one scrypt against that operator's hash, never one per operator. The credential is
accepted in the login form and as ``Authorization: Bearer <credential>``. (A site made
before named operators has one password ``pdo_<24 characters>``: it stays the credential
of ``admin`` until replaced.)

Where they are kept: ``operator.json`` in the site home (mode 0600, beside ``site.key``),
not the store. Only scrypt hashes, and a random secret per operator that signs its
dashboard sessions. The home rather than the database because: the hashes stay off the
database's wider paths (a PostgreSQL store's other users, its dumps and replicas); managing
operators is an act on the site host, as ``site.key`` is; the running site notices a change
by one ``stat`` per request, with no query on the store thread heartbeats and claims share;
and every ``site serve`` of one site shares its home already. Removing an operator, or
replacing its credential, drops or replaces its session secret: its sessions end at once,
also on a running site.

Files of version 1 (one password, no names) are read as the operator ``admin``; the next
change writes version 2.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from packdist.auth import b64, unb64
from packdist.core.fsutil import write_atomic
from packdist.errors import InvalidName, UserError

FILE_NAME = "operator.json"
PASSWORD_PREFIX = "pdo_"
ADMIN = "admin"  # the operator ``site init`` and ``site operator-password`` make
MAX_NAME = 64
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SECRET_LEN = 24  # characters of a credential's random part (18 bytes, URL-safe base64)
_NAME_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}"
_NAME = re.compile(_NAME_PATTERN)
_TOKEN = r"[A-Za-z0-9_-]"
#: ``pdo_<name>_<secret>``; and the password of a version-1 site, ``pdo_<secret>``
_PASSWORD = re.compile(re.escape(PASSWORD_PREFIX) + f"(?:{_NAME_PATTERN}_)?{_TOKEN}{{24}}")
#: a session cookie: "v2.<name>.<expires>.<nonce>.<mac>", all ASCII (checked before any MAC)
_SESSION = re.compile(rf"v2\.{_NAME_PATTERN}\.[0-9]{{1,12}}\.{_TOKEN}{{1,64}}\.{_TOKEN}{{43}}")


class Role(StrEnum):
    VIEWER = "viewer"  # reads: the dashboard, the JSON API's reads, /metrics
    OPERATOR = "operator"  # also acts: the JSON API's write routes (cancel, retry)
    ADMIN = "admin"  # everything (managing operators stays in the CLI on the site host)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise UserError(
            f"unknown role {text!r}: one of {', '.join(r.value for r in Role)}"
        ) from None


def check_name(name: str) -> str:
    """An operator's name: what the events say did an action, what a credential names."""
    if not _NAME.fullmatch(name):
        shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
        raise InvalidName(
            f"operator name {shown} must be 1 to {MAX_NAME} letters, digits and . _ -"
            " (starting with a letter or digit)"
        )
    return name


def new_password(name: str) -> str:
    return f"{PASSWORD_PREFIX}{name}_{secrets.token_urlsafe(18)}"


def looks_like_password(text: str) -> bool:
    """Whether ``text`` has the shape of an operator credential: anything else is refused
    without the cost of an scrypt."""
    return _PASSWORD.fullmatch(text) is not None


def named_in(password: str) -> str | None:
    """The operator a credential names (None: a version-1 password, which names nobody)."""
    middle = password[len(PASSWORD_PREFIX) : -_SECRET_LEN]
    return middle[:-1] if middle.endswith("_") else None


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **_SCRYPT
    )


@dataclass(frozen=True)
class OperatorCredential:
    """One operator: its name, its role, and what checks its credential and sessions."""

    name: str
    role: Role
    salt: bytes = field(repr=False)  # secrets stay out of a repr, so out of any log
    password_hash: bytes = field(repr=False)
    session_secret: bytes = field(repr=False)
    created_at: float
    legacy: bool = False  # a version-1 password (``pdo_<secret>``) is this operator's

    @staticmethod
    def make(name: str, role: Role, now: float | None = None) -> tuple[OperatorCredential, str]:
        """A new operator and its credential (returned once, kept nowhere in clear)."""
        password = new_password(name)
        salt = secrets.token_bytes(16)
        made = OperatorCredential(
            name,
            role,
            salt,
            _scrypt(password, salt),
            secrets.token_bytes(32),
            time.time() if now is None else now,
        )
        return made, password

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt), self.password_hash)

    # --- sessions: "v2.<name>.<expires>.<nonce>.<mac>" signed with this operator's secret --

    def new_session(self, ttl: float, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + ttl)
        body = f"v2.{self.name}.{expires}.{secrets.token_urlsafe(9)}"
        return f"{body}.{self._mac(body)}"

    def check_session(self, cookie: str, now: float | None = None) -> bool:
        """Whether ``cookie`` is a live session of this operator; False (never an
        exception) for anything else, whatever characters it holds."""
        if session_name(cookie) != self.name:
            return False
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return (time.time() if now is None else now) < int(body.rsplit(".", 2)[1])

    def _mac(self, body: str) -> str:
        return b64(hmac.new(self.session_secret, body.encode(), hashlib.sha256).digest())

    def doc(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "role": self.role.value,
            "salt": b64(self.salt),
            "password_hash": b64(self.password_hash),
            "session_secret": b64(self.session_secret),
            "created_at": self.created_at,
        }
        if self.legacy:
            found["legacy"] = True
        return found


def session_name(cookie: str) -> str | None:
    """The operator a session cookie claims to be (None: not the shape of a session)."""
    if not _SESSION.fullmatch(cookie):
        return None
    return cookie[3:].rsplit(".", 3)[0]


@dataclass(frozen=True)
class Operators:
    """Every operator of a site, by name, as the home keeps them."""

    by_name: dict[str, OperatorCredential]

    def get(self, name: str) -> OperatorCredential | None:
        return self.by_name.get(name)

    def for_password(self, password: str) -> OperatorCredential | None:
        """The operator a credential of the right shape names: the one to check it
        against (not checked here: that is the scrypt)."""
        name = named_in(password)
        if name is not None:
            return self.by_name.get(name)
        return next((o for o in self.by_name.values() if o.legacy), None)

    def for_session(self, cookie: str, now: float | None = None) -> OperatorCredential | None:
        """The operator whose live session ``cookie`` is, or None."""
        name = session_name(cookie)
        found = self.by_name.get(name) if name is not None else None
        return found if found is not None and found.check_session(cookie, now) else None

    def doc(self) -> dict[str, Any]:
        return {
            "version": 2,
            "kdf": "scrypt",
            "kdf_params": _SCRYPT,
            "operators": {name: o.doc() for name, o in sorted(self.by_name.items())},
        }


def path_in(home: Path) -> Path:
    return home / FILE_NAME


def _operator(name: str, doc: dict[str, Any], legacy: bool = False) -> OperatorCredential:
    return OperatorCredential(
        check_name(name),
        Role(doc["role"]),
        unb64(doc["salt"]),
        unb64(doc["password_hash"]),
        unb64(doc["session_secret"]),
        float(doc["created_at"]),
        legacy or bool(doc.get("legacy", False)),
    )


def parse(doc: Any) -> Operators:
    """The operators of a file's JSON document, version 2 or 1 (read as ``admin``)."""
    if doc.get("version") == 1:
        return Operators({ADMIN: _operator(ADMIN, {**doc, "role": "admin"}, legacy=True)})
    if doc.get("version") != 2:
        raise ValueError(f"unknown version {doc.get('version')!r}")
    return Operators({name: _operator(name, o) for name, o in doc["operators"].items()})


def load(home: Path) -> Operators | None:
    """The site's operators, or None if it has no operator file yet."""
    try:
        return parse(json.loads(path_in(home).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, UserError) as exc:
        raise UserError(
            f"{path_in(home)} is damaged ({exc}); replace it with 'packdist site operator-password'"
            " (that leaves only the operator admin)"
        ) from exc


def save(home: Path, operators: Operators) -> None:
    write_atomic(path_in(home), json.dumps(operators.doc()).encode(), 0o600)


def create(home: Path) -> str:
    """Create (or replace) the credential of the operator ``admin`` (role admin) of the
    site in ``home``, keeping every other operator; returns the new credential. A damaged
    file is replaced by one holding ``admin`` only (the way out its error names)."""
    from packdist.site.operator_book import set_operator

    return set_operator(home, ADMIN, Role.ADMIN, replace=True, damaged_ok=True)


class CredentialCache:
    """The operators as the running site sees them: re-read when the file changes (an
    operator added, removed or reset takes effect without a restart); bearer checks
    remembered so a scraper polling every few seconds costs one scrypt, not one per
    request."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stamp: tuple[int, int, int] | None = None
        self._operators: Operators | None = None
        self._good_bearers: dict[bytes, str] = {}  # MAC of a bearer -> its operator

    def get(self) -> Operators | None:
        try:
            st = path_in(self.home).stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._operators = load(self.home) if stamp is not None else None
            self._stamp = stamp
            self._good_bearers.clear()
        return self._operators

    def _key(self, op: OperatorCredential, token: str) -> bytes:
        return hmac.new(op.session_secret, token.encode(), hashlib.sha256).digest()

    def remembered(self, token: str) -> OperatorCredential | None:
        """The operator of a bearer already found correct (no scrypt: a MAC), or None."""
        op = self._operators.for_password(token) if self._operators is not None else None
        if op is not None and self._good_bearers.get(self._key(op, token)) == op.name:
            return op
        return None

    def remember(self, token: str, op: OperatorCredential) -> None:
        if len(self._good_bearers) > 64:
            self._good_bearers.clear()
        self._good_bearers[self._key(op, token)] = op.name

    def check_bearer(self, token: str) -> OperatorCredential | None:
        """The operator whose credential ``token`` is, or None (one scrypt, unless
        remembered; the site runs this within :class:`packdist.site.gate.PasswordGate`)."""
        operators = self.get()
        if operators is None or not looks_like_password(token):
            return None
        op = operators.for_password(token)
        if op is None:
            return None
        if self.remembered(token) is op:
            return op
        if op.check_password(token):
            self.remember(token, op)
            return op
        return None
