"""Validation of package names, versions and server names."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from packdist.errors import InvalidName, UserError

MAX_LEN = 128
# Matched whole (fullmatch): with ``match`` and ``$``, a trailing newline slips through
# ("1.0\n" would become a directory name). ASCII only: \w and str.isdigit take far more.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check(kind: str, value: str) -> str:
    if not value:
        raise InvalidName(f"{kind} must not be empty")
    if len(value) > MAX_LEN:
        raise InvalidName(f"{kind} {value[:40]!r}… is longer than {MAX_LEN} characters")
    if value in (".", "..") or ".." in value:
        raise InvalidName(f"{kind} {value!r} must not contain '..'")
    if not _NAME.fullmatch(value):
        raise InvalidName(
            f"{kind} {value!r} may only use letters, digits and . _ + - "
            "(and must start with a letter or digit)"
        )
    return value


def check_package_name(value: str) -> str:
    return _check("package name", value)


#: ``packages/NAME/current`` names the active version on a server: no version is called so
CURRENT = "current"


def check_version(value: str) -> str:
    if value == CURRENT:
        raise InvalidName(
            f"version {CURRENT!r} is reserved: packages/NAME/{CURRENT} names the active version"
        )
    return _check("version", value)


def check_server_name(value: str) -> str:
    return _check("server name", value)


#: names no new server may take: a client's fetch names the site itself so among its sources
RESERVED_SERVER_NAMES = frozenset({"site"})


def check_new_server_name(value: str) -> str:
    """A name for a server being enrolled: valid, and not one the project reserves."""
    _check("server name", value)
    if value.lower() in RESERVED_SERVER_NAMES:
        raise InvalidName(
            f"server name {value!r} is reserved: a client's fetch names the site so among its sources"
        )
    return value


def check_group_name(value: str) -> str:
    return _check("group name", value)


def check_label_key(value: str) -> str:
    return _check("label key", value)


def parse_label(text: str) -> tuple[str, str]:
    """Split a server label ``KEY=VALUE`` (e.g. ``site=berlin``) into its validated parts."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidName(f"label {text!r} must be KEY=VALUE, e.g. site=berlin")
    return check_label_key(key), _check("label value", value)


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``NAME@VERSION`` into its validated parts."""
    name, sep, version = ref.partition("@")
    if not sep:
        raise InvalidName(f"package reference {ref!r} must be NAME@VERSION")
    return check_package_name(name), check_version(version)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); an empty host means every address.
    Raises ``ValueError`` naming the problem."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port between 1 and 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_listen(listen: str, option: str = "--listen") -> tuple[str, int]:
    """``split_listen`` for a command's option: UserError, one line, naming it."""
    try:
        return split_listen(listen)
    except ValueError as exc:
        raise UserError(f"{option} {listen!r} {exc} (e.g. 0.0.0.0:8700)") from None


def check_site_url(url: str, option: str = "--site") -> str:
    """A URL a command dials (``--site``, ``--url``, ``--parent``): ``http(s)://HOST[:PORT]``
    with nothing after but a path, else UserError, one line, naming the option."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"{option} {url!r} is not a URL: give https://HOST:PORT (or http:// with --plain-http)"
        )
    try:
        parts.port  # noqa: B018 -- raises on a port that is no number
    except ValueError:
        raise UserError(f"{option} {url!r}: its port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise UserError(f"{option} {url!r} names no host")
    return url.strip().rstrip("/")


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> str:
    """``host`` as a certificate can name it (lower case, brackets off an IPv6 address), or
    a UserError: an address, or a DNS name of ASCII labels; no wildcard, nothing empty."""
    plain = host.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(plain))
    except ValueError:
        pass
    labels = plain.removesuffix(".").split(".")
    if len(plain) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise UserError(
            f"host {host!r} cannot be named in a certificate: an IP address or a DNS name of"
            " letters, digits and hyphens (IDNA-encoded), no wildcard"
        )
    return ".".join(labels)


def url_host(url: str) -> str | None:
    """The host of ``url`` (None: it names none); ValueError for a URL that does not parse."""
    return urlsplit(url).hostname


#: levels of child sites under one site: a reported name has at most this many parts
MAX_DEPTH = 8


def check_reported_name(name: Any) -> str:
    """A server's name as a child reports it: ``dp1`` or ``GRANDCHILD/…/dp1``, each part a
    valid server name; UserError otherwise."""
    if not isinstance(name, str) or not name:
        raise UserError("a reported server's name must be a non-empty string")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise UserError(f"reported server {name[:80]!r}: more than {MAX_DEPTH} levels of sites")
    for part in parts:
        check_server_name(part)
    return name
