"""The operator credential: one random password per site, for the dashboard and its API.

``site init`` creates it and prints it once; ``site operator-password`` replaces it. The site
home keeps only an scrypt hash of it and a random secret that signs dashboard sessions, in
``operator.json`` (mode 0600, beside ``site.key``). Replacing the password replaces the
secret too, so every dashboard session signed before is refused from then on.

The password is accepted in the login form and as ``Authorization: Bearer <password>``
(``/metrics`` for Prometheus, the JSON API for scripts).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from packdist.auth import b64, unb64
from packdist.core.fsutil import write_atomic
from packdist.errors import UserError

FILE_NAME = "operator.json"
PASSWORD_PREFIX = "pdo_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


#: a session cookie: "v1.<expires>.<nonce>.<mac>", all ASCII (checked before any MAC)
_SESSION = re.compile(r"v1\.[0-9]{1,12}\.[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{43}")
_PASSWORD = re.compile(re.escape(PASSWORD_PREFIX) + r"[A-Za-z0-9_-]{24}")


def new_password() -> str:
    return PASSWORD_PREFIX + secrets.token_urlsafe(18)


def looks_like_password(text: str) -> bool:
    """Whether ``text`` has the shape of a password :func:`new_password` makes: anything
    else is refused without the cost of an scrypt."""
    return _PASSWORD.fullmatch(text) is not None


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **_SCRYPT
    )


@dataclass(frozen=True)
class OperatorCredential:
    salt: bytes
    password_hash: bytes
    session_secret: bytes
    created_at: float

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt), self.password_hash)

    # --- sessions: "v1.<expires>.<nonce>.<mac>" signed with the session secret -----------------

    def new_session(self, ttl: float, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + ttl)
        body = f"v1.{expires}.{secrets.token_urlsafe(9)}"
        return f"{body}.{self._mac(body)}"

    def check_session(self, cookie: str, now: float | None = None) -> bool:
        """Whether ``cookie`` is a live session of this credential; False (never an
        exception) for anything else, whatever characters it holds."""
        if not _SESSION.fullmatch(cookie):
            return False
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return (time.time() if now is None else now) < int(body.split(".")[1])

    def _mac(self, body: str) -> str:
        return b64(hmac.new(self.session_secret, body.encode(), hashlib.sha256).digest())


def path_in(home: Path) -> Path:
    return home / FILE_NAME


def create(home: Path) -> str:
    """Create (or replace) the operator credential of the site in ``home``; returns the new
    password, which is stored nowhere in clear."""
    password = new_password()
    salt = secrets.token_bytes(16)
    doc = {
        "version": 1,
        "kdf": "scrypt",
        "kdf_params": _SCRYPT,
        "salt": b64(salt),
        "password_hash": b64(_scrypt(password, salt)),
        "session_secret": b64(secrets.token_bytes(32)),
        "created_at": time.time(),
    }
    write_atomic(path_in(home), json.dumps(doc).encode(), 0o600)
    return password


def load(home: Path) -> OperatorCredential | None:
    """The site's operator credential, or None if it has none yet."""
    try:
        doc = json.loads(path_in(home).read_text(encoding="utf-8"))
        return OperatorCredential(
            unb64(doc["salt"]),
            unb64(doc["password_hash"]),
            unb64(doc["session_secret"]),
            float(doc["created_at"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path_in(home)} is damaged ({exc}); replace it with 'packdist site operator-password'"
        ) from exc


class CredentialCache:
    """The credential as the running site sees it: re-read when the file changes (a password
    reset takes effect without a restart); bearer checks remembered so a scraper polling
    every few seconds costs one scrypt, not one per request."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stamp: tuple[int, int] | None = None
        self._cred: OperatorCredential | None = None
        self._good_bearers: set[bytes] = set()

    def get(self) -> OperatorCredential | None:
        try:
            st = path_in(self.home).stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._cred = load(self.home) if stamp is not None else None
            self._stamp = stamp
            self._good_bearers.clear()
        return self._cred

    def _key(self, cred: OperatorCredential, token: str) -> bytes:
        return hmac.new(cred.session_secret, token.encode(), hashlib.sha256).digest()

    def remembered(self, token: str) -> bool:
        """Whether ``token`` is a bearer already found correct (no scrypt: a MAC)."""
        cred = self._cred
        return cred is not None and self._key(cred, token) in self._good_bearers

    def remember(self, token: str) -> None:
        cred = self._cred
        if cred is None:
            return
        if len(self._good_bearers) > 16:
            self._good_bearers.clear()
        self._good_bearers.add(self._key(cred, token))

    def check_bearer(self, token: str) -> bool:
        cred = self.get()
        if cred is None or not looks_like_password(token):
            return False
        if self.remembered(token):
            return True
        if cred.check_password(token):
            self.remember(token)
            return True
        return False
