"""A client's link to its site: the site verified over HTTPS with nothing but the token
(the fingerprint of the site's authority after its dot, as an agent's enrollment token
carries it), then its sources asked for and the fetch reported.

Discovery as the agent's (:mod:`packdist.agent.transport`): ``GET /v1/site/authority``
over TLS *without* verification, nothing else sent; the authority is kept only when its
fingerprint is the token's, and from then on every connection, to the site and to its
agents, verifies against it (the host dialled named in the certificate). The site's
certificate must be a site's, not any server's of the same authority. With an
``http://`` site URL (a lab on loopback) nothing is verified.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from packdist.auth import looks_like_token, token_fingerprint
from packdist.core import tls
from packdist.errors import AuthError, ConnectError, PackdistError, RemoteTimeout, UserError
from packdist.http import Timeouts, answer_error, holds, os_error, peer
from packdist.protocol.client_api import (
    REPORT_PATH,
    SOURCES_PATH,
    FetchReport,
    SourcesAnswer,
    SourcesRequest,
)

CONTROL = Timeouts(connect=3.0, read=10.0, total=None)
MAX_ANSWER = 512 * 1024 * 1024  # bytes of a sources answer (it carries the manifest)
AUTHORITY_PATH = "/v1/site/authority"


class SiteLink:
    def __init__(self, url: str, token: str, timeouts: Timeouts = CONTROL) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--site {url!r} must start with https:// (or http://)")
        try:
            urlsplit(url).port  # noqa: B018 (read to check it: a port out of range, in one line)
        except ValueError as exc:
            raise UserError(f"--site {url!r}: {exc}") from None
        token = token.strip()
        if not looks_like_token(token):  # never echoed: it is a secret even when wrong
            raise UserError("the token is not a client token (the whole text 'client add' printed)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeouts = timeouts
        self._tls: ssl.SSLContext | None = None

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")

    def tls(self) -> ssl.SSLContext:
        """What the site and its agents are dialled with: the site's authority, discovered
        once and checked against the token's fingerprint."""
        if self._tls is None:
            ctx = tls.client_context(None)
            if self.secure:
                pinned = token_fingerprint(self.token)
                if pinned is None:
                    raise UserError(
                        "the token carries no fingerprint of the site's authority: use the"
                        " whole token 'client add' printed"
                    )
                pem = self._authority()
                if not tls.matches_fingerprint(pem, pinned):
                    raise AuthError(
                        f"{peer(self.url)} shows a certificate authority that is not the one"
                        " the token names: refusing the site"
                    )
                try:
                    ctx.load_verify_locations(cadata=pem.decode())
                except (ssl.SSLError, ValueError) as exc:
                    raise AuthError(f"{peer(self.url)}: unusable certificate authority") from exc
            self._tls = ctx
        return self._tls

    def _authority(self) -> bytes:
        blind = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        blind.minimum_version = ssl.TLSVersion.TLSv1_3
        blind.check_hostname = False
        blind.verify_mode = ssl.CERT_NONE  # checked against the token's fingerprint instead
        return self._request("GET", AUTHORITY_PATH, None, blind, holder=None)

    def sources(self, ref: str) -> SourcesAnswer:
        raw = self._call(SOURCES_PATH, SourcesRequest(ref).to_json())
        try:
            return SourcesAnswer.from_json(json.loads(raw))
        except ValueError as exc:
            raise PackdistError(f"{peer(self.url)} answered something else than sources") from exc

    def report(self, report: FetchReport) -> str:
        """The site's words for the fetch, as its event says them."""
        raw = self._call(REPORT_PATH, report.to_json())
        try:
            doc = json.loads(raw)
            return str(doc.get("event", "")) if isinstance(doc, dict) else ""
        except ValueError:
            return ""

    def _call(self, path: str, body: dict[str, Any]) -> bytes:
        return self._request("POST", path, body, self.tls(), holder="site")

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ctx: ssl.SSLContext,
        holder: str | None,
    ) -> bytes:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port
        where = peer(self.url)
        conn: http.client.HTTPConnection
        if self.secure:
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.timeouts.connect, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeouts.connect)
        headers = {"Authorization": f"Bearer {self.token}"} if body is not None else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(self.timeouts.read)
                if holder is not None and isinstance(conn.sock, ssl.SSLSocket):
                    held = tls.holder(conn.sock.getpeercert())
                    if not holds(held, holder):
                        raise AuthError(
                            f"TLS: {where} holds the certificate of {held or 'no packdist'}"
                            " holder, not of a site: refusing it"
                        )
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(MAX_ANSWER)
            except TimeoutError as exc:
                raise RemoteTimeout(f"timeout talking to {where}") from exc
            except ssl.SSLCertVerificationError as exc:
                why = exc.verify_message or exc.reason
                raise ConnectError(
                    f"TLS: {where} is not verified by the site's authority ({why})"
                ) from exc
            except ssl.SSLError as exc:
                raise ConnectError(
                    f"TLS handshake with {where} failed ({exc.reason or exc})"
                ) from exc
            except socket.gaierror as exc:
                raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, OSError):
                    raise os_error(exc, where) from exc
                raise ConnectError(f"connection to {where} dropped") from exc
        finally:
            conn.close()
        if resp.status != 200:
            error = answer_error(resp.status, raw, resp.getheader("Retry-After"), self.url)
            if resp.status in (401, 403):  # the site's words alone: they say it all
                raise AuthError(f"the site refused the token: {_detail(raw)}") from error
            raise error
        return raw


def _detail(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    except ValueError:
        return raw[:200].decode(errors="replace")
