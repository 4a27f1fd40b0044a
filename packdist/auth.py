"""Credentials.

* Enrollment tokens: one per distribution server, shown once by ``server add``, stored on
  the site only as a SHA-256 hash. An agent presents it to the site (``Authorization:
  Bearer``) for heartbeats and chunk fetches.
* Site credentials: short-lived assertions signed with the site's Ed25519 key, naming the
  server they are meant for. An agent accepts requests only with one it can verify against
  the site key it learned at enrollment; nobody else's key, no expired or misdirected ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from packdist.core.signing import SigningKey, VerifyKey
from packdist.errors import AuthError, BadSignature

TOKEN_PREFIX = "pdt_"
ASSERTION_TTL = 120.0


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str:
    if not header or not header.startswith("Bearer "):
        raise AuthError("missing credential")
    return header[len("Bearer ") :].strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def site_assertion(key: SigningKey, audience: str, now: float | None = None) -> str:
    """A credential the site presents to the agent of server ``audience``."""
    now = time.time() if now is None else now
    claims = {"aud": audience, "iat": int(now), "exp": int(now + ASSERTION_TTL)}
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(key.sign(payload))}"


def check_site_assertion(
    token: str, key: VerifyKey, audience: str, now: float | None = None
) -> None:
    now = time.time() if now is None else now
    try:
        payload_b64, sig_b64 = token.split(".")
        payload, sig = _unb64(payload_b64), _unb64(sig_b64)
        key.verify(sig, payload, "credential")
        claims = json.loads(payload)
    except (ValueError, BadSignature) as exc:
        raise AuthError("credential refused") from exc
    if not hmac.compare_digest(str(claims.get("aud", "")), audience):
        raise AuthError("credential is for another server")
    if not (claims.get("iat", 0) - 60 <= now <= claims.get("exp", 0)):
        raise AuthError("credential expired")
