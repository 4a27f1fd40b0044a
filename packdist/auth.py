"""Credentials.

* Enrollment tokens: one per distribution server, shown once by ``server add``, stored on
  the site only as a SHA-256 hash. An agent presents it to the site (``Authorization:
  Bearer``) for heartbeats and chunk fetches. After a dot, a token carries the fingerprint
  of the site's certificate authority (as kubeadm's discovery hash): once the site serves
  TLS (not yet), what lets an agent given nothing but the token verify the site before it
  sends anything. Only the secret before the dot is a credential; the site takes a token
  with or without its fingerprint.
* Site credentials: short-lived assertions signed with the site's Ed25519 key, naming the
  server they are meant for (``aud``) and the one request they allow: its method (``htm``)
  and path without the query (``htu``). An agent accepts a request only with one it can
  verify against the site key it learned at enrollment and whose claims match the request
  it came with: nobody else's key, no expired or misdirected ones, and a credential seen in
  one request cannot be replayed on another route.
* Peer credentials: the same kind of assertion, handed by the site to an agent with the
  peers it may fetch from. It names the fetching server (``sub``) and the one package it
  may ask for (``pkg``), is good at any peer (``aud`` is ``ANY_PEER``) and only on the
  peer chunk route, and lives long enough for a transfer (``PEER_TTL``). Agents serve
  chunks to each other only with one of these, so a peer is exactly as authorized as the
  site made it. One credential per install, not one per peer: signing one for each of the
  (up to 72) peers offered cost the site more than the rest of an install at fleet scale.
  What it allows is what the site means ("``sub`` may read ``pkg``"): a peer that sees it
  is itself a holder or a receiver of that very package, so passing it on gains nothing.
* Client credentials: the same again, handed by the site to a client (``packdist fetch``)
  with its sources. ``role`` is ``client`` and ``sub`` names the client, so an agent takes
  it without a certificate (a client has none) yet a server's own credential, which names
  no role, still needs that server's certificate; it lives ``CLIENT_TTL``, and a fetch
  asks the site for a new one at half that age, so a client removed meanwhile is refused
  by the site at once and by agents once the one it holds expires.
  Client tokens are made and kept as enrollment tokens are (:func:`new_token`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from urllib.parse import urlsplit

from packdist.core.signing import SigningKey, VerifyKey
from packdist.core.tls import FINGERPRINT_PREFIX
from packdist.errors import AuthError, BadSignature

TOKEN_PREFIX = "pdt_"
ASSERTION_TTL = 30.0  # seconds a site credential lives
PEER_TTL = 4 * 3600.0  # seconds a peer credential lives: long enough for one transfer (a
# longer one falls back to the site for what is left; its next attempt gets new ones)
PEER_CHUNKS_PATH = "/v1/peer/chunks"
CLIENT_TTL = 120.0  # seconds a client credential lives (a fetch renews it at half its life)
CLIENT_ROLE = "client"  # the role claim of a client credential
ANY_PEER = "*"  # the audience of a peer credential: no server's name can be this
CLOCK_SKEW = 60.0  # how far ahead of the agent's clock the site's may be
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}(\.[A-Za-z0-9_-]{43})?")


def new_token(ca_fingerprint: str | None = None) -> str:
    """A new enrollment token; with ``ca_fingerprint`` (``sha256:…``), carrying it."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if ca_fingerprint is None:
        return secret
    if not ca_fingerprint.startswith(FINGERPRINT_PREFIX):
        raise ValueError(f"not a sha256 fingerprint: {ca_fingerprint!r}")
    return f"{secret}.{ca_fingerprint.removeprefix(FINGERPRINT_PREFIX)}"


def looks_like_token(token: str) -> bool:
    """Whether ``token`` has the shape :func:`new_token` gives (anything else is refused
    without a lookup)."""
    return _TOKEN.fullmatch(token) is not None


def token_secret(token: str) -> str:
    """The credential of an enrollment token: what comes before its fingerprint."""
    return token.split(".", 1)[0]


def token_fingerprint(token: str) -> str | None:
    """The site authority's fingerprint a token carries (``sha256:…``), if it carries one."""
    _, dot, rest = token.partition(".")
    return FINGERPRINT_PREFIX + rest if dot and looks_like_token(token) else None


def hash_token(token: str) -> str:
    """What the site stores of a token: the SHA-256 of its secret."""
    return hashlib.sha256(token_secret(token).encode()).hexdigest()


#: what a bearer credential may be made of (RFC 6750's b64token); anything else, such as
#: bytes that are not ASCII, is refused before any lookup or hashing
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_CREDENTIAL = 4096  # characters; ours are a few hundred at most


def bearer(header: str | None) -> str:
    """The credential of an ``Authorization: Bearer`` header, or AuthError: missing, another
    scheme, or not a well-formed token (never an exception of another kind, whatever bytes
    the header holds)."""
    if not header:
        raise AuthError("missing credential")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("missing credential (expected Authorization: Bearer)")
    token = token.strip()
    if len(token) > MAX_CREDENTIAL or not _B64TOKEN.fullmatch(token):
        raise AuthError("malformed credential")
    return token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def request_path(url_or_path: str) -> str:
    """The path a credential is bound to: a path as given, or a URL's path; without query or
    fragment either way."""
    if url_or_path.startswith("/"):
        return url_or_path.split("?", 1)[0].split("#", 1)[0]
    return urlsplit(url_or_path).path or "/"


def site_assertion(
    key: SigningKey,
    audience: str,
    method: str,
    path: str,
    now: float | None = None,
    ttl: float = ASSERTION_TTL,
    **extra: str,
) -> str:
    """A credential the site presents to the agent of server ``audience`` for one request:
    ``method`` on ``path`` (a URL or a path; any query is left out)."""
    now = time.time() if now is None else now
    claims: dict[str, object] = {
        **extra,
        "aud": audience,
        "htm": method.upper(),
        "htu": request_path(path),
        "iat": int(now),
        "exp": int(now + ttl),
    }
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return f"{b64(payload)}.{b64(key.sign(payload))}"


def check_site_assertion(
    token: str,
    key: VerifyKey,
    audience: str | tuple[str, ...],
    method: str,
    path: str,
    now: float | None = None,
) -> dict[str, object]:
    """Accept the credential for ``method`` on ``path`` (query ignored) and return its
    claims, or raise AuthError. ``audience``: the server it must name (or any of them)."""
    now = time.time() if now is None else now
    try:
        payload_b64, sig_b64 = token.split(".")
        payload, sig = unb64(payload_b64), unb64(sig_b64)
        key.verify(sig, payload, "credential")
        claims = json.loads(payload)
        if not isinstance(claims, dict):
            raise ValueError("claims are not an object")
        iat, exp = float(claims["iat"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError, BadSignature) as exc:
        raise AuthError("credential refused") from exc
    aud = str(claims.get("aud", ""))
    audiences = (audience,) if isinstance(audience, str) else audience
    if not any(hmac.compare_digest(aud, a) for a in audiences):
        raise AuthError("credential is for another server")
    if not hmac.compare_digest(str(claims.get("htm", "")), method.upper()):
        raise AuthError(f"credential is not for a {method.upper()} request")
    if not hmac.compare_digest(str(claims.get("htu", "")), request_path(path)):
        raise AuthError("credential is for another path")
    if not (iat - CLOCK_SKEW <= now <= exp):
        raise AuthError("credential expired")
    return claims


def peer_assertion(key: SigningKey, subject: str, package_id: str, now: float | None = None) -> str:
    """A credential for server ``subject`` to fetch chunks of one package from its peers."""
    return site_assertion(
        key, ANY_PEER, "POST", PEER_CHUNKS_PATH, now, ttl=PEER_TTL, sub=subject, pkg=package_id
    )


def client_assertion(
    key: SigningKey, client: str, package_id: str, now: float | None = None
) -> str:
    """A credential for client ``client`` to fetch chunks of one package from agents."""
    return site_assertion(
        key,
        ANY_PEER,
        "POST",
        PEER_CHUNKS_PATH,
        now,
        ttl=CLIENT_TTL,
        sub=client,
        pkg=package_id,
        role=CLIENT_ROLE,
    )
