"""Fuzz every HTTP route of a real ``packdist site serve`` with hypothesis: random methods,
paths, headers and bodies, sent as raw bytes, with and without a credential (an agent's
enrollment token, the operator password, a dashboard session; right, wrong and garbled).

Whatever arrives, the site answers below 500 (or closes a connection it cannot parse),
stays up, logs no traceback and no ERROR, and writes nothing outside its home (its working
directory, HOME and TMPDIR are empty directories checked afterwards).

``PACKDIST_FUZZ_EXAMPLES=N`` sets the examples per surface (default 150, a few seconds
each; 50 for the login form, where every wrong password waits out the site's second of
failed-login delay); the counts tried are printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import collections
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import harness as h
from tests.integration.hostile import log_problems, raw_request

EXAMPLES = int(os.environ.get("PACKDIST_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
#: the login form: a third of the examples, as each that gets as far as a wrong password
#: (one in five or so) waits out the site's FAILED_LOGIN_DELAY, a second; 150 took 30-40 s
LOGIN_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("PACKDIST_FUZZ_EXAMPLES", "50")))
TRIED: collections.Counter[str] = collections.Counter()
STATUSES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


@dataclass
class Target:
    site: h.Site
    token: str  # dp1's enrollment token
    session: str  # a dashboard session cookie (name=value)
    package_id: str
    digest: str
    job_id: str
    outside: list[Path]  # directories the site must leave empty


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    outside = [root / name for name in ("cwd", "home", "tmp")]
    for d in outside:
        d.mkdir()
    site = h.make_site(root, tls=False)  # raw HTTP bytes on a socket: the layer under TLS
    token = site.add_server("dp1", "http://127.0.0.1:9")
    tree = h.make_tree(root / "src", {"data/blob.bin": 300_000}, seed=3)
    package = site.create_package(tree, "app", "1.0")
    job = site.distribute("app@1.0", ["dp1"])  # a job that retries: nobody serves dp1
    site.cwd = outside[0]
    site.env = {"HOME": str(outside[1]), "TMPDIR": str(outside[2])}
    site.start()
    form = urllib.parse.urlencode({"password": site.operator_password, "next": "/"}).encode()
    status, answer = raw_request(
        site.url,
        b"POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(form)).encode() + b"\r\n\r\n" + form,
    )
    assert status == 303, answer
    found = re.search(rb"Set-Cookie: ([^;]+);", answer)
    assert found, answer
    yield Target(
        site,
        token,
        found.group(1).decode(),
        str(package["id"]),
        site.library_chunks()[0].name,
        job,
        outside,
    )
    site.close()


# --- what a request may be made of ------------------------------------------------------------

ANY_BYTES = st.binary(max_size=40)
TEXT = st.text(max_size=30)


def seg(s: str) -> bytes:
    return urllib.parse.quote(s, safe="").encode()


def segment() -> st.SearchStrategy[bytes]:
    """A path segment: quoted text, raw UTF-8, or tricks (dots, encoded slashes)."""
    return st.one_of(
        TEXT.map(seg),
        TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")).filter(
            lambda b: not re.search(rb"[\s?#]", b)
        ),
        st.sampled_from([b"..", b".", b"%2e%2e", b"%2F", b"..%2F..", b"%00", b"a" * 300, b"~"]),
    )


def query(
    names: tuple[str, ...] = ("next", "job", "after", "limit", "wait", "x", ""),
) -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(names)
    edges = ["-1", "0", "1e999", "NaN", "9223372036854775808", "-9223372036854775809"]
    values = st.one_of(
        st.sampled_from([*edges, "99999999999999999999", "/%09/evil.example", "\uff11"]),
        TEXT,
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
    )
    pair = st.tuples(keys, values).map(lambda kv: f"{seg(kv[0]).decode()}={seg(kv[1]).decode()}")
    return st.lists(pair, max_size=3).map(lambda p: ("?" + "&".join(p)).encode() if p else b"")


def events_query() -> st.SearchStrategy[bytes]:
    """``?after=&limit=&job=`` with numbers at the edges (each may be left out)."""
    number = st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
        st.sampled_from(["9223372036854775808", "-9223372036854775809", "1e3", "0x10", " 1"]),
    )
    fields = st.fixed_dictionaries(
        {}, optional={"after": number, "limit": number, "job": TEXT | st.just("0")}
    )
    return fields.map(lambda f: ("?" + urllib.parse.urlencode(f)).encode() if f else b"")


def json_value() -> st.SearchStrategy[object]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
        st.sampled_from(["ab" * 32, "zz" * 32, "raw", "zstd", "zstd-base"]),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(
                st.sampled_from(["digests", "accept", "bases", "boot_id", "disk_free", "installed"])
                | TEXT,
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )


def body() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        ANY_BYTES,
        json_value().map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"{", b"[]", b'{"digests": "x"}', b"\xff\xfe{}", b"null", b"1e99999"]),
    )


def content_type() -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.none(),
        st.sampled_from(
            [
                b"application/json",
                b"application/json; charset=bogus",
                b"application/x-www-form-urlencoded",
                b"application/x-www-form-urlencoded; charset=latin-1",
                b"multipart/form-data; boundary=zz",
                b"multipart/form-data",
                b"text/plain; charset=\xff",
                b";;;",
            ]
        ),
        ANY_BYTES.filter(lambda b: b"\r" not in b and b"\n" not in b),
    )


def credential(t: Target) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Headers carrying a credential: right, wrong, garbled or none."""
    pw = t.site.operator_password.encode()
    name = t.session.split("=", 1)[0].encode()
    options = [
        [],
        [(b"Authorization", b"Bearer " + t.token.encode())],
        [(b"Authorization", b"Bearer pdt_" + b"A" * 43)],
        [(b"Authorization", b"Bearer " + pw)],
        [(b"Authorization", b"Bearer " + pw[:-1] + b"x")],
        [(b"Authorization", b"bearer " + pw)],
        [(b"Authorization", b"Basic " + pw)],
        [(b"Cookie", t.session.encode())],
        [(b"Cookie", name + b"=v1.99999999999.x." + b"A" * 43)],
        [(b"Cookie", name + "=v1.1.é.ü".encode())],
    ]
    garbled = ANY_BYTES.filter(lambda b: b"\r" not in b and b"\n" not in b).flatmap(
        lambda b: st.sampled_from(
            [[(b"Authorization", b"Bearer " + b)], [(b"Cookie", name + b"=" + b)]]
        )
    )
    right = [options[1], options[3], options[7]]  # most code sits behind these: try them often
    return st.one_of(st.sampled_from(right), st.sampled_from(options), garbled)


def build(
    method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], data: bytes, ctype: bytes | None
) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if ctype is not None:
        lines.append(b"Content-Type: " + ctype)
    lines += [k + b": " + v for k, v in headers]
    if data:
        lines.append(b"Content-Length: " + str(len(data)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def send(t: Target, surface: str, request: bytes) -> None:
    TRIED[surface] += 1
    status, answer = raw_request(t.site.url, request, timeout=15)
    STATUSES[surface][str(status)] += 1
    assert status is None or status < 500, (request[:300], answer[:500])
    assert b"Traceback" not in answer


METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])


# --- the surfaces -------------------------------------------------------------------------------


def agent_paths(t: Target) -> st.SearchStrategy[bytes]:
    real = [
        b"/healthz",
        b"/v1/agent/hello",
        b"/v1/agent/heartbeat",
        b"/v1/chunks",
        b"/v1/chunks/" + t.digest.encode(),
        b"/v1/packages/" + t.package_id.encode() + b"/manifest",
    ]
    templated = st.one_of(
        segment().map(lambda s: b"/v1/chunks/" + s),
        segment().map(lambda s: b"/v1/packages/" + s + b"/manifest"),
        segment().map(lambda s: b"/v1/agent/" + s),
    )
    real_paths = st.sampled_from(real)
    return st.tuples(st.one_of(real_paths, real_paths, templated), query()).map(b"".join)


@FUZZ
@given(data=st.data())
def test_fuzzed_agent_routes_never_answer_5xx(target: Target, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from([b"GET", b"POST"]) | METHODS)
    path = data.draw(agent_paths(target))
    headers = data.draw(credential(target))
    request = build(method, path, headers, data.draw(agent_body(target)), b"application/json")
    send(target, "agent routes", request)


def agent_body(t: Target) -> st.SearchStrategy[bytes]:
    """Bodies shaped like a chunk request or a heartbeat, with odd values in them."""
    digests = st.lists(st.sampled_from([t.digest, "ab" * 32, "AB" * 32, "x"]), max_size=5)
    chunks = st.fixed_dictionaries(
        {"digests": digests},
        optional={
            "accept": st.lists(st.sampled_from(["raw", "zstd", "zstd-base", "x", ""]) | TEXT),
            "bases": st.dictionaries(
                st.sampled_from([t.digest, "ab" * 32]), digests | json_value()
            ),
        },
    )
    beat = st.fixed_dictionaries(
        {},
        optional={
            "boot_id": json_value(),
            "disk_free": st.integers(min_value=-1, max_value=2**70) | json_value(),
            "installed": st.lists(st.sampled_from([t.package_id, "x"]) | TEXT, max_size=3),
        },
    )
    shaped = st.one_of(chunks, beat).map(lambda v: json.dumps(v).encode())
    return st.one_of(shaped, shaped, body())


def dashboard_paths(t: Target) -> st.SearchStrategy[bytes]:
    real = [
        b"/",
        b"/jobs/" + t.job_id.encode(),
        b"/api/overview",
        b"/api/jobs/" + t.job_id.encode(),
        b"/api/events",
        b"/metrics",
        b"/static/dashboard.js",
        b"/static/dashboard.css",
        b"/favicon.ico",
        b"/logout",
        b"/login",
    ]
    templated = st.one_of(
        query(("after", "limit", "job")).map(lambda q: b"/api/events" + q),
        segment().map(lambda s: b"/jobs/" + s),
        segment().map(lambda s: b"/api/jobs/" + s),
        segment().map(lambda s: b"/static/" + s),
    )
    real_paths = st.sampled_from(real)
    return st.tuples(st.one_of(real_paths, real_paths, templated), query()).map(b"".join)


@FUZZ
@given(data=st.data())
def test_fuzzed_dashboard_api_and_metrics_never_answer_5xx(
    target: Target, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from([b"GET"] * 6 + [b"POST", b"HEAD"]) | METHODS)
    path = data.draw(dashboard_paths(target))
    headers = data.draw(credential(target))
    send(target, "dashboard, API, metrics", build(method, path, headers, data.draw(body()), None))


@FUZZ
@given(data=st.data())
def test_fuzzed_api_queries_with_the_operator_credential_never_answer_5xx(
    target: Target, data: st.DataObject
) -> None:
    path = data.draw(
        st.one_of(
            events_query().map(lambda q: b"/api/events" + q),
            segment().map(lambda s: b"/api/jobs/" + s),
            segment().map(lambda s: b"/jobs/" + s),
            query(("next",)).map(lambda q: b"/login" + q),
        )
    )
    pw = target.site.operator_password.encode()
    headers = data.draw(
        st.sampled_from(
            [[(b"Authorization", b"Bearer " + pw)], [(b"Cookie", target.session.encode())]]
        )
    )
    send(target, "API queries, logged in", build(b"GET", path, headers, b"", None))


def login_body(t: Target) -> st.SearchStrategy[bytes]:
    password = st.one_of(
        TEXT,
        st.sampled_from(["", "pdo_" + "A" * 24, t.site.operator_password[:-1] + "x"]),
    )
    nxt = st.one_of(TEXT, st.sampled_from(["/", "//evil.example", "/%09/evil.example/x"]))
    form = st.tuples(password, nxt).map(
        lambda pn: urllib.parse.urlencode({"password": pn[0], "next": pn[1]}).encode()
    )
    return st.one_of(form, body(), st.binary(max_size=6000))


@LOGIN_FUZZ
@given(data=st.data())
def test_fuzzed_login_forms_never_answer_5xx(target: Target, data: st.DataObject) -> None:
    ctype = data.draw(
        st.sampled_from([b"application/x-www-form-urlencoded"]) | content_type(), label="ctype"
    )
    headers = data.draw(st.sampled_from([[], [(b"Cookie", target.session.encode())]]))
    request = build(
        b"POST", b"/login" + data.draw(query()), headers, data.draw(login_body(target)), ctype
    )
    send(target, "login", request)


HEADER_NAME = st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
HEADER_VALUE = ANY_BYTES.filter(lambda b: b"\r" not in b and b"\n" not in b)


@FUZZ
@given(data=st.data())
def test_fuzzed_requests_of_any_bytes_never_answer_5xx(target: Target, data: st.DataObject) -> None:
    method = data.draw(METHODS | st.binary(min_size=1, max_size=8))
    path = data.draw(
        st.one_of(
            st.lists(segment(), max_size=5).map(lambda p: b"/" + b"/".join(p)),
            ANY_BYTES.map(lambda b: b"/" + b),
            st.sampled_from([b"*", b"http://evil.example/", b"", b"/" + b"a" * 9000]),
        )
    )
    headers = data.draw(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4))
    headers += data.draw(credential(target))
    send(
        target,
        "any bytes",
        build(method, path, headers, data.draw(body()), data.draw(content_type())),
    )


def test_the_fuzzed_site_stayed_up_logged_no_error_and_wrote_nothing_outside_its_home(
    target: Target,
) -> None:
    print(f"\nfuzz examples tried per surface: {dict(TRIED)}")
    print(f"answers per surface: { {k: dict(v) for k, v in STATUSES.items()} }")
    assert h.http_get(f"{target.site.url}/healthz")[0] == 200
    assert target.site.running
    assert log_problems(target.site.log_path) == [], target.site.log_tail(60)
    for d in target.outside:
        assert list(d.iterdir()) == [], f"the site wrote into {d}"
