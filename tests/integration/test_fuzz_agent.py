"""Fuzzing every HTTP endpoint of a real agent (``packdist agent serve`` enrolled with a real
site): random methods, paths, headers and bodies, with and without a valid credential.

Whatever arrives, the agent answers (no hang), never with a 5xx or a traceback, logs no
traceback, writes nothing outside its home and installs or removes nothing. Example counts:
tests/fuzzing.py (``PACKDIST_FUZZ_EXAMPLES=N`` for a long run).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.auth import PEER_CHUNKS_PATH, peer_assertion, site_assertion
from packdist.core.manifest import Manifest, SignedManifest
from packdist.core.signing import SigningKey
from tests import harness as h
from tests.fuzzing import fuzz, tried

REQUEST_TIMEOUT = 20.0  # an answer slower than this is a hang (peer waits are <= 4 s)


@dataclass
class World:
    cluster: h.Cluster
    agent: h.Agent
    key: SigningKey
    package_id: str
    manifest: bytes
    signature: bytes
    root: Path


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` (not below ``skip``) with its type and size."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for n in dirnames + filenames:
            st_ = os.lstat(here / n)
            out[str((here / n).relative_to(root))] = (st_.st_mode, st_.st_size)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fuzz-agent")
    tree = h.make_tree(root / "src", {"data/blob.bin": 300_000}, seed=5)
    # raw HTTP bytes on a socket: the layer under TLS
    c = h.start_cluster(root / "cluster", ["dp1"], tls=False)
    try:
        c.site.create_package(tree, "app", "1.0")
        job = c.site.distribute("app@1.0", ["dp1"])
        assert c.site.wait_job(job, 60) == 0, h.describe_job(c.site.job(job))
        package_id = c.site.job(job)["package_id"]
        agent = c.agents["dp1"]
        canonical = (agent.home / "state" / "manifests" / package_id).read_bytes()
        key = SigningKey.load(c.site.home / "site.key")
        signed = SignedManifest.sign(Manifest.parse(canonical), key)
        yield World(c, agent, key, package_id, canonical, signed.signature, root)
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


# --- what is sent ---------------------------------------------------------------------------

ROUTES = ["/healthz", "/v1/install", "/v1/installs/{pid}", "/v1/validate", "/v1/remove",
          PEER_CHUNKS_PATH, "/", "/v1/installs/", "/v1/peer", "/login", "/v1/installs/{pid}/x"]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "BREW", "get"]
NASTY_NUMBERS = [math.nan, math.inf, -math.inf, -1, -1e-9, 1e308, 10**40, 0, 0.001, 2.5, 31]
CONTENT_TYPES = ["application/json", "application/json; charset=bogus-8",
                 "application/json; charset=utf-16", "multipart/form-data; boundary=x",
                 "multipart/form-data", "text/plain", "application/x-www-form-urlencoded", ""]  # fmt: skip

# header values: no CR or LF (they would split the request itself, a test of nothing)
header_text = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=80
)
header_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(NASTY_NUMBERS)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


@st.composite
def hex_ids(draw: st.DrawFn, pid: str) -> str:
    return draw(st.sampled_from([pid, "cd" * 32, pid[:-1], pid.upper(), "", "../" * 10, "x" * 64]))


@st.composite
def route_bodies(draw: st.DrawFn, w: World, route: str) -> Any:
    """Bodies shaped like what the route expects, with fields mutated."""
    pid = w.package_id
    if route == "/v1/install":
        manifest = draw(st.sampled_from([w.manifest, w.manifest[:-1], w.manifest + b" ", b""]))
        if draw(st.booleans()):
            manifest = bytearray(manifest)
            if manifest:
                i = draw(st.integers(0, len(manifest) - 1))
                manifest[i] ^= draw(st.integers(1, 255))
            manifest = bytes(manifest)
        signature = draw(st.sampled_from([w.signature, w.signature[::-1], b"", b"x" * 64]))
        if manifest == w.manifest and signature == w.signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])  # never a valid install
        body = {
            "manifest": draw(st.sampled_from([base64.b64encode(manifest).decode(), "!!", 5])),
            "signature": base64.b64encode(signature).decode(),
        }
        if draw(st.booleans()):
            body["repair"] = draw(json_values)
        if draw(st.booleans()):
            body["peers"] = draw(
                st.lists(st.fixed_dictionaries({"name": json_values, "url": st.sampled_from(
                    ["http://127.0.0.1:9", "file:///etc/passwd", "", "http://[::1"]),
                    "token": json_values}), max_size=2) | json_values)  # fmt: skip
        return body
    if route == "/v1/remove":
        # never the installed version itself: removing it would be a valid request
        ref = draw(st.sampled_from(["app@2.0", "app@1.0\n", "../x@1", "app", "", "a@b@c"]))
        return {
            "package_id": draw(hex_ids(pid)),
            "package": draw(st.one_of(st.just(ref), json_values)),
        }
    if route == "/v1/validate":
        return {"package_ids": draw(st.one_of(st.lists(hex_ids(pid), max_size=3), json_values))}
    return {  # the peer route
        "package": draw(st.one_of(hex_ids(pid), json_values)),
        "digests": draw(
            st.one_of(st.lists(hex_ids(pid), max_size=4), json_values, st.just(["ab" * 32] * 300))
        ),
        "wait": draw(
            st.one_of(st.sampled_from([*NASTY_NUMBERS, "3", True, None, [1]]), json_values)
        ),
    }


@st.composite
def requests(draw: st.DrawFn, w: World) -> tuple[str, bytes, list[tuple[bytes, bytes]], bytes, str]:
    """(method, raw path, headers, body, what kind of credential) of one request."""
    template = draw(st.sampled_from(ROUTES))
    route = template.format(pid=draw(hex_ids(w.package_id)))
    method = draw(st.sampled_from(METHODS))
    path = route.encode()
    tail = draw(st.sampled_from([b"", b"?wait=nan", b"?wait=inf", b"?wait=-1", b"?wait=1e999",
                                 b"?wait=0.01", b"?wait=%ff", b"/..", b"/%2e%2e/%2e%2e/etc",
                                 b"%00", b"//", b"?" + b"a=" * 500, b"/\xff\xfe"]))  # fmt: skip
    if draw(st.booleans()):
        path += tail
    if draw(st.integers(0, 9)) == 0:
        path = draw(st.binary(min_size=1, max_size=60)).translate(None, b"\r\n ") or b"/"
    headers: list[tuple[bytes, bytes]] = []
    auth = draw(st.sampled_from(["none", "junk", "bytes", "valid", "other-path", "expired",
                                 "peer", "peer-other", "stranger"]))  # fmt: skip
    bare = route.split("?")[0]
    token: str | bytes | None = None
    if auth == "junk":
        token = "Bearer " + draw(header_text)
    elif auth == "bytes":
        token = b"Bearer " + draw(header_bytes)
    elif auth == "valid":
        token = "Bearer " + site_assertion(w.key, "dp1", method, bare)
    elif auth == "other-path":
        token = "Bearer " + site_assertion(w.key, "dp1", method, "/v1/validate")
    elif auth == "expired":
        token = "Bearer " + site_assertion(w.key, "dp1", method, bare, now=time.time() - 3600)
    elif auth == "peer":
        token = "Bearer " + peer_assertion(w.key, "dp9", w.package_id)
    elif auth == "peer-other":
        token = "Bearer " + peer_assertion(w.key, "dp9", "cd" * 32)
    elif auth == "stranger":
        token = "Bearer " + site_assertion(SigningKey.generate(), "dp1", method, bare)
    if token is not None:
        headers.append((b"Authorization", token if isinstance(token, bytes) else token.encode()))
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype:
        headers.append((b"Content-Type", ctype.encode()))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"X-Junk", b"Cookie", b"Accept-Encoding", b"Expect",
                                     b"Transfer-Encoding-X", b"Content-Encoding"]))  # fmt: skip
        headers.append((name, draw(header_bytes)))
    kind = draw(st.sampled_from(["none", "route", "json", "bytes", "deep"]))
    body = b""
    if kind == "route" and template in (
        "/v1/install",
        "/v1/remove",
        "/v1/validate",
        PEER_CHUNKS_PATH,
    ):
        body = json.dumps(draw(route_bodies(w, template))).encode()
    elif kind in ("route", "json"):
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
    elif kind == "deep":
        body = b"[" * 200_000 + b"]" * 200_000
    return method, path, headers, body, auth


def _send(url: str, method: str, path: bytes, headers: list[tuple[bytes, bytes]],
          body: bytes) -> tuple[int, bytes]:  # fmt: skip
    """One raw HTTP/1.1 request (bytes as given, nothing cleaned up); (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    head = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: " + host.encode()]
    head += [n + b": " + v for n, v in headers]
    head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        resp = http.client.HTTPResponse(sock, method=method.upper())
        resp.begin()
        data = resp.read()
        return resp.status, data


def _crashes(log: str) -> list[str]:
    """Every traceback the agent logged: even a request aiohttp's parser refuses is logged
    as one line (``packdist.serving``), so any traceback is a crash."""
    return [b[:3000] for b in log.split("Traceback (most recent call last):")[1:]]


def _home_state(w: World) -> dict[str, Any]:
    home = w.agent.home
    return {
        "installed": json.loads((home / "state" / "installed.json").read_text()),
        "trees": _snapshot(home, {home / "state", home / "staging", home / "cache"}),
        "outside": _snapshot(w.root, {w.cluster.site.home, home, w.root / "cluster" / "logs"}),
    }


def test_no_request_to_an_agent_crashes_it_or_changes_what_it_holds(world: World) -> None:
    before = _home_state(world)
    seen: dict[int, int] = {}

    @fuzz(400)
    @given(requests(world))
    def one(request: tuple[str, bytes, list[tuple[bytes, bytes]], bytes, str]) -> None:
        method, path, headers, body, _auth = request
        tried("agent HTTP endpoints")
        t0 = time.monotonic()
        status, data = _send(world.agent.url, method, path, headers, body)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (status, data[:300])
        assert b"Traceback" not in data
        assert time.monotonic() - t0 < REQUEST_TIMEOUT

    one()
    assert world.agent.running and world.agent.healthy()
    crashes = _crashes(world.agent.log_path.read_text(errors="replace"))
    assert not crashes, crashes[0]
    assert _home_state(world) == before, "a request changed what the agent holds"
    assert seen.get(401, 0) > 0 and any(400 <= s < 500 and s != 401 for s in seen), seen


@st.composite
def signed_requests(
    draw: st.DrawFn, w: World
) -> tuple[str, bytes, list[tuple[bytes, bytes]], bytes]:
    """Requests a credential the site signed lets through: each route's own method and path,
    with the route's body shape mutated (or any JSON), and a query now and then."""
    route = draw(st.sampled_from(["/v1/install", "/v1/remove", "/v1/validate", PEER_CHUNKS_PATH,
                                  "/v1/installs/{pid}"]))  # fmt: skip
    if route == "/v1/installs/{pid}":
        path = route.format(pid=draw(hex_ids(w.package_id)))
        query = draw(st.sampled_from(["", "?wait=0.01", "?wait=nan", "?wait=1e400", "?wait=-0",
                                      "?wait=%00", "?wait=1&wait=2", "?x=" + "9" * 5000]))  # fmt: skip
        token = site_assertion(w.key, "dp1", "GET", path)
        return "GET", (path + query).encode(), [(b"Authorization", f"Bearer {token}".encode())], b""
    if route == PEER_CHUNKS_PATH:
        pkg = draw(st.sampled_from([w.package_id, "cd" * 32]))
        token = peer_assertion(w.key, draw(st.sampled_from(["dp9", ""])), pkg)
    else:
        token = site_assertion(w.key, "dp1", "POST", route)
    if draw(st.integers(0, 3)):
        body = json.dumps(draw(route_bodies(w, route))).encode()
    else:
        body = json.dumps(draw(json_values)).encode()
    ctype = draw(st.sampled_from(CONTENT_TYPES)).encode()
    return "POST", route.encode(), [(b"Authorization", f"Bearer {token}".encode()),
                                    (b"Content-Type", ctype)], body  # fmt: skip


def test_no_signed_request_crashes_the_agent_or_changes_what_it_holds(world: World) -> None:
    before = _home_state(world)
    seen: dict[int, int] = {}

    @fuzz(300)
    @given(signed_requests(world))
    def one(request: tuple[str, bytes, list[tuple[bytes, bytes]], bytes]) -> None:
        tried("agent HTTP endpoints, with the site's credential")
        t0 = time.monotonic()
        status, data = _send(world.agent.url, *request)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (status, data[:300])
        assert b"Traceback" not in data
        assert time.monotonic() - t0 < REQUEST_TIMEOUT

    one()
    assert world.agent.running and world.agent.healthy()
    crashes = _crashes(world.agent.log_path.read_text(errors="replace"))
    assert not crashes, crashes[0]
    assert _home_state(world) == before, "a request changed what the agent holds"
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen


def test_a_peer_request_waiting_nan_or_forever_is_refused_at_once(world: World) -> None:
    """``"wait": NaN`` used to hold the request forever (NaN compares false with every
    deadline); every wait that is not a number of seconds from 0 to 30 is refused."""
    other = "cd" * 32  # a package this agent neither holds nor receives: it would wait
    token = peer_assertion(world.key, "dp9", other)
    for wait in ("NaN", "Infinity", "-Infinity", "-1", "1e308", '"3"', "true", "null", "[1]"):
        body = f'{{"package": "{other}", "digests": ["{"ab" * 32}"], "wait": {wait}}}'.encode()
        t0 = time.monotonic()
        status, data = _send(world.agent.url, "POST", PEER_CHUNKS_PATH.encode(),
                             [(b"Authorization", f"Bearer {token}".encode()),
                              (b"Content-Type", b"application/json")], body)  # fmt: skip
        assert status == 400, (wait, status, data)
        assert b"wait must be" in data and time.monotonic() - t0 < 5, (wait, data)
    for wait in ("nan", "-1", "inf", "x"):  # the site's long poll of an install, likewise
        path = f"/v1/installs/{world.package_id}"
        token = site_assertion(world.key, "dp1", "GET", path)
        status, data = _send(world.agent.url, "GET", f"{path}?wait={wait}".encode(),
                             [(b"Authorization", f"Bearer {token}".encode())], b"")  # fmt: skip
        assert status == 400 and b"wait must be" in data, (wait, status, data)


def test_an_install_with_a_bad_signature_is_refused_as_the_requests_fault(world: World) -> None:
    body = {"manifest": base64.b64encode(world.manifest).decode(),
            "signature": base64.b64encode(b"\0" * 64).decode()}  # fmt: skip
    token = site_assertion(world.key, "dp1", "POST", "/v1/install")
    status, data = _send(world.agent.url, "POST", b"/v1/install",
                         [(b"Authorization", f"Bearer {token}".encode())],
                         json.dumps(body).encode())  # fmt: skip
    assert status == 400 and b"signature" in data, (status, data)


def test_a_json_body_nested_too_deeply_is_refused(world: World) -> None:
    token = site_assertion(world.key, "dp1", "POST", "/v1/validate")
    status, data = _send(world.agent.url, "POST", b"/v1/validate",
                         [(b"Authorization", f"Bearer {token}".encode()),
                          (b"Content-Type", b"application/json")],
                         b"[" * 100_000 + b"]" * 100_000)  # fmt: skip
    assert status == 400 and b"nested too deeply" in data, (status, data)
    status, data = _send(world.agent.url, "POST", b"/v1/validate",
                         [(b"Authorization", f"Bearer {token}".encode()),
                          (b"Content-Type", b"application/json; charset=bogus-8")], b"{}")  # fmt: skip
    assert status == 200, (status, data)
