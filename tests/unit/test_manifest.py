"""The manifest: canonical form, round trip, signature, and the validation an agent relies on."""

from __future__ import annotations

import json
import posixpath
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packdist.core.chunking import DEFAULT_PARAMS, ChunkerParams
from packdist.core.digest import Digest
from packdist.core.manifest import (
    FORMAT,
    ChunkRef,
    Entry,
    EntryType,
    Manifest,
    ManifestError,
    SignedManifest,
    check_relative_path,
    symlink_stays_inside,
)
from packdist.core.signing import SigningKey
from packdist.errors import BadSignature, IntegrityError, InvalidName

SMALL = ChunkerParams(avg=1024, min=256, max=4096)


def _file(path: str, *parts: bytes, executable: bool = False, mtime_ns: int = 7) -> Entry:
    chunks = tuple(ChunkRef(Digest.of(p), len(p)) for p in parts)
    return Entry(
        path,
        EntryType.FILE,
        size=sum(len(p) for p in parts),
        executable=executable,
        mtime_ns=mtime_ns,
        chunks=chunks,
    )


def _dir(path: str) -> Entry:
    return Entry(path, EntryType.DIR)


def _link(path: str, target: str) -> Entry:
    return Entry(path, EntryType.SYMLINK, target=target)


def _sample_entries() -> list[Entry]:
    return [
        _dir("bin"),
        _file("bin/run", b"#!/bin/sh\necho hi\n", executable=True),
        _dir("empty"),
        _dir("lib"),
        _file("lib/data.bin", b"a" * 300, b"b" * 500),
        _link("lib/current", "data.bin"),
        _link("run", "bin/run"),
        _file("README", b"read me"),
        _file("zero", mtime_ns=0),
        _file("naïve €.txt", b"unicode"),
    ]


def _sample() -> Manifest:
    return Manifest.build("app", "1.0", _sample_entries(), DEFAULT_PARAMS)


def _canonical_doc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_sample().canonical())
    return doc


# --- round trip and canonical form --------------------------------------------------------


def test_build_canonical_parse_round_trip() -> None:
    m = _sample()
    parsed = Manifest.parse(m.canonical())
    assert parsed == m
    assert parsed.canonical() == m.canonical()
    assert parsed.id == m.id


def test_canonical_form_is_sorted_compact_utf8() -> None:
    data = _sample().canonical()
    assert data == _canonical_doc(json.loads(data))
    assert b"\n" not in data
    assert b'": ' not in data
    assert b", " not in data
    assert "naïve €.txt".encode() in data  # UTF-8, not \u escapes
    doc = json.loads(data)
    assert list(doc) == sorted(doc)
    for entry in doc["entries"]:
        assert list(entry) == sorted(entry)
    assert doc["format"] == FORMAT
    assert doc["chunker"] == DEFAULT_PARAMS.to_json()


def test_build_sorts_entries_given_in_any_order() -> None:
    entries = _sample_entries()
    expected = _sample().canonical()
    rng = random.Random(1)
    for _ in range(10):
        rng.shuffle(entries)
        assert Manifest.build("app", "1.0", entries, DEFAULT_PARAMS).canonical() == expected


def test_entries_are_ordered_by_utf8_bytes_of_the_path() -> None:
    paths = [e.path for e in _sample().entries]
    assert paths == sorted(paths, key=lambda p: p.encode())


def test_package_id_is_the_digest_of_the_canonical_form() -> None:
    m = _sample()
    assert m.id == Digest.of(m.canonical())
    assert m.ref == "app@1.0"


def test_any_change_changes_the_id() -> None:
    base = _sample()
    entries = _sample_entries()
    variants = [
        Manifest.build("app", "1.1", entries, DEFAULT_PARAMS),
        Manifest.build("app2", "1.0", entries, DEFAULT_PARAMS),
        Manifest.build("app", "1.0", entries, SMALL),
        Manifest.build("app", "1.0", [*entries, _dir("more")], DEFAULT_PARAMS),
        Manifest.build(
            "app",
            "1.0",
            [*entries[:1], _file("bin/run", b"x", executable=True), *entries[2:]],
            DEFAULT_PARAMS,
        ),
    ]
    ids = {base.id, *(v.id for v in variants)}
    assert len(ids) == 1 + len(variants)


def test_derived_facts() -> None:
    m = _sample()
    assert m.file_count == 5
    assert m.total_size == len(b"#!/bin/sh\necho hi\n") + 800 + 7 + 0 + 7
    sizes = m.chunk_sizes()
    assert sizes[Digest.of(b"a" * 300)] == 300
    assert len(sizes) == 5  # bin/run, two parts of lib/data.bin, README, naïve; zero has none
    assert [e.path for e in m.files()] == sorted(
        ["bin/run", "lib/data.bin", "README", "zero", "naïve €.txt"], key=str.encode
    )


def test_same_content_ignores_only_mtimes() -> None:
    m = _sample()
    retimed = [
        Entry(e.path, e.type, e.size, e.executable, e.mtime_ns + 10**9, e.chunks, e.target)
        for e in _sample_entries()
    ]
    assert m.same_content(Manifest.build("app", "1.0", retimed, DEFAULT_PARAMS))
    flipped = [
        Entry(e.path, e.type, e.size, not e.executable, e.mtime_ns, e.chunks, e.target)
        if e.path == "README"
        else e
        for e in _sample_entries()
    ]
    assert not m.same_content(Manifest.build("app", "1.0", flipped, DEFAULT_PARAMS))
    assert not m.same_content(Manifest.build("app", "2.0", _sample_entries(), DEFAULT_PARAMS))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda doc: json.dumps(doc, sort_keys=True).encode(), id="default-separators"),
        pytest.param(
            lambda doc: json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False).encode(),
            id="indented",
        ),
        pytest.param(
            lambda doc: json.dumps(
                {k: doc[k] for k in reversed(doc)}, separators=(",", ":"), ensure_ascii=False
            ).encode(),
            id="keys-not-sorted",
        ),
        pytest.param(
            lambda doc: json.dumps(
                doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True
            ).encode(),
            id="ascii-escapes",
        ),
        pytest.param(lambda doc: _canonical_doc(doc) + b"\n", id="trailing-newline"),
        pytest.param(lambda doc: b" " + _canonical_doc(doc), id="leading-space"),
        pytest.param(lambda doc: _canonical_doc(doc).replace(b'":', b'": ', 1), id="one-space"),
        pytest.param(
            lambda doc: _canonical_doc(doc).replace(b'"size":800', b'"size":800.0', 1),
            id="float-for-int",
        ),
    ],
)
def test_parse_refuses_non_canonical_bytes(mangle: Any) -> None:
    data = mangle(_doc())
    assert data != _sample().canonical()
    with pytest.raises(ManifestError):
        Manifest.parse(data)


def test_parse_refuses_bytes_that_are_not_json_or_utf8() -> None:
    for data in (b"", b"{", b"\xff\xfe", b"[]", b"null", b'"x"'):
        with pytest.raises(ManifestError):
            Manifest.parse(data)


def test_manifest_error_is_an_integrity_error() -> None:
    assert issubclass(ManifestError, IntegrityError)


# --- signature ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def test_signed_manifest_verifies(key: SigningKey) -> None:
    m = _sample()
    signed = SignedManifest.sign(m, key)
    checked = SignedManifest.verify(m.canonical(), signed.signature, key.public)
    assert checked.manifest == m
    assert checked.signature == signed.signature


def test_signature_from_another_key_is_refused(key: SigningKey) -> None:
    m = _sample()
    signed = SignedManifest.sign(m, SigningKey.generate())
    with pytest.raises(BadSignature):
        SignedManifest.verify(m.canonical(), signed.signature, key.public)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_flipped_byte_in_data_or_signature_is_detected(
    key: SigningKey, data: st.DataObject
) -> None:
    m = _sample()
    canonical = m.canonical()
    signature = SignedManifest.sign(m, key).signature
    target = data.draw(st.sampled_from(["data", "signature"]))
    blob = bytearray(canonical if target == "data" else signature)
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(BadSignature):
        if target == "data":
            SignedManifest.verify(bytes(blob), signature, key.public)
        else:
            SignedManifest.verify(canonical, bytes(blob), key.public)


def test_truncated_signature_is_refused(key: SigningKey) -> None:
    m = _sample()
    signature = SignedManifest.sign(m, key).signature
    for bad in (b"", signature[:-1], signature + b"\0"):
        with pytest.raises(BadSignature):
            SignedManifest.verify(m.canonical(), bad, key.public)


def test_signature_is_checked_before_parsing(key: SigningKey) -> None:
    """Unsigned garbage is refused as a bad signature, never handed to the parser."""
    with pytest.raises(BadSignature):
        SignedManifest.verify(b"{not json", b"\0" * 64, key.public)


def test_verify_key_hex_round_trip(key: SigningKey) -> None:
    from packdist.core.signing import VerifyKey

    m = _sample()
    signature = SignedManifest.sign(m, key).signature
    public = VerifyKey.from_hex(key.public.hex)
    assert SignedManifest.verify(m.canonical(), signature, public).manifest == m


# --- path and entry validation ------------------------------------------------------------

BAD_PATHS = [
    "",
    "/abs",
    "/",
    "..",
    "../x",
    "a/..",
    "a/../b",
    ".",
    "./a",
    "a/.",
    "a//b",
    "a/",
    "a\0b",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_check_relative_path_refuses(path: str) -> None:
    with pytest.raises(ManifestError):
        check_relative_path(path)


@pytest.mark.parametrize(
    "path", ["a", "a/b", "a/b/c.txt", "..a", "a..", ".hidden", "a b/é", "a\\b"]
)
def test_check_relative_path_accepts(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize("path", BAD_PATHS)
def test_build_refuses_bad_paths(path: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.build("app", "1.0", [_file(path, b"x")], DEFAULT_PARAMS)


@pytest.mark.parametrize(
    ("link", "target", "inside"),
    [
        ("l", "a", True),
        ("l", ".", True),
        ("d/l", "..", True),
        ("d/l", "../a", True),
        ("d/e/l", "../../a", True),
        ("d/l", "x/../../a", True),
        ("l", "..", False),
        ("l", "../a", False),
        ("d/l", "../..", False),
        ("d/l", "../../a", False),
        ("d/l", "x/../../../a", False),
        ("l", "/etc/passwd", False),
        ("l", "/", False),
        ("l", "", False),
        ("l", "a\0b", False),
    ],
)
def test_symlink_stays_inside(link: str, target: str, inside: bool) -> None:
    assert symlink_stays_inside(link, target) is inside


@pytest.mark.parametrize(
    ("link", "target"),
    [("l", "../outside"), ("d/l", "../../x"), ("l", "/etc/passwd"), ("d/l", "a/../../..")],
)
def test_build_refuses_escaping_symlinks(link: str, target: str) -> None:
    entries = [_dir("d"), _link(link, target)]
    with pytest.raises(ManifestError, match="leaves the package"):
        Manifest.build("app", "1.0", entries, DEFAULT_PARAMS)


def test_build_refuses_duplicate_paths() -> None:
    with pytest.raises(ManifestError, match="duplicated"):
        Manifest.build("app", "1.0", [_file("a", b"1"), _file("a", b"2")], DEFAULT_PARAMS)
    with pytest.raises(ManifestError, match="duplicated"):
        Manifest.build("app", "1.0", [_dir("a"), _file("a", b"2")], DEFAULT_PARAMS)


def test_parse_refuses_unsorted_entries() -> None:
    doc = _doc()
    doc["entries"][0], doc["entries"][1] = doc["entries"][1], doc["entries"][0]
    with pytest.raises(ManifestError, match="not sorted"):
        Manifest.parse(_canonical_doc(doc))


def test_parse_refuses_duplicated_entries() -> None:
    doc = _doc()
    doc["entries"].insert(1, doc["entries"][0])
    with pytest.raises(ManifestError, match="duplicated"):
        Manifest.parse(_canonical_doc(doc))


def test_build_refuses_a_missing_parent_directory() -> None:
    with pytest.raises(ManifestError, match="parent"):
        Manifest.build("app", "1.0", [_file("d/a", b"x")], DEFAULT_PARAMS)


def test_build_refuses_a_file_as_parent() -> None:
    with pytest.raises(ManifestError, match="parent"):
        Manifest.build("app", "1.0", [_file("d", b"x"), _file("d/a", b"y")], DEFAULT_PARAMS)


def test_build_refuses_a_symlink_as_parent() -> None:
    entries = [_dir("real"), _link("d", "real"), _file("d/a", b"y")]
    with pytest.raises(ManifestError, match="parent"):
        Manifest.build("app", "1.0", entries, DEFAULT_PARAMS)


def _with_first_file(mutate: Any) -> bytes:
    doc = _doc()
    entry = next(e for e in doc["entries"] if e["type"] == "file" and e["chunks"])
    mutate(entry)
    return _canonical_doc(doc)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.update(size=e["size"] + 1), "add up"),
        (lambda e: e.update(size=e["size"] - 1), "add up"),
        (lambda e: e["chunks"].append([Digest.of(b"extra").hex, 5]), "add up"),
        (lambda e: e["chunks"].__setitem__(0, [e["chunks"][0][0], 0]), "empty sizes"),
        (lambda e: e.update(size=-1, chunks=[]), "negative"),
        (lambda e: e["chunks"].__setitem__(0, ["zz" * 32, e["chunks"][0][1]]), "not a digest"),
        (lambda e: e["chunks"].__setitem__(0, [e["chunks"][0][0].upper(), 1]), "not a digest"),
        (lambda e: e.pop("size"), "malformed"),
        (lambda e: e.pop("chunks"), "malformed"),
        (lambda e: e.update(type="fifo"), "malformed"),
        (lambda e: e.update(path="../x"), "invalid path"),
        (lambda e: e.update(path="/etc/passwd"), "invalid path"),
    ],
)
def test_parse_refuses_malformed_file_entries(mutate: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(_with_first_file(mutate))


def test_build_refuses_chunk_sizes_not_adding_up() -> None:
    bad = Entry("a", EntryType.FILE, size=10, chunks=(ChunkRef(Digest.of(b"abc"), 3),))
    with pytest.raises(ManifestError, match="add up"):
        Manifest.build("app", "1.0", [bad], DEFAULT_PARAMS)


def test_parse_refuses_an_escaping_symlink() -> None:
    doc = _doc()
    link = next(e for e in doc["entries"] if e["type"] == "symlink")
    link["target"] = "../../../../etc/shadow"
    with pytest.raises(ManifestError, match="leaves the package"):
        Manifest.parse(_canonical_doc(doc))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format", "packdist-manifest/2"),
        ("name", "a/b"),
        ("name", ".."),
        ("version", "1/0"),
        ("version", ""),
        ("chunker", {"algorithm": "rabin", "avg": 1, "min": 1, "max": 1}),
        ("entries", None),
    ],
)
def test_parse_refuses_bad_top_level_fields(field: str, value: Any) -> None:
    doc = _doc()
    doc[field] = value
    with pytest.raises(ManifestError):
        Manifest.parse(_canonical_doc(doc))


@pytest.mark.parametrize("field", ["format", "name", "version", "chunker", "entries"])
def test_parse_refuses_missing_top_level_fields(field: str) -> None:
    doc = _doc()
    del doc[field]
    with pytest.raises(ManifestError):
        Manifest.parse(_canonical_doc(doc))


def test_parse_refuses_unknown_extra_fields() -> None:
    """An extra key cannot ride along: it would not survive re-serialisation."""
    doc = _doc()
    doc["extra"] = 1
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(_canonical_doc(doc))
    doc = _doc()
    doc["entries"][0]["mode"] = "4755"
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(_canonical_doc(doc))


def test_build_validates_name_and_version() -> None:
    with pytest.raises(InvalidName, match="package name"):
        Manifest.build("a/b", "1.0", [_file("a", b"x")], DEFAULT_PARAMS)
    with pytest.raises(InvalidName, match="version"):
        Manifest.build("app", "..", [_file("a", b"x")], DEFAULT_PARAMS)


# --- random valid trees -------------------------------------------------------------------

COMPONENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\0", max_codepoint=0x1FFFF),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))

NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,20}\Z").filter(lambda s: ".." not in s)


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    """A random valid tree: nested dirs, files with chunk lists, in-tree symlinks."""
    leaves = draw(st.lists(st.lists(COMPONENT, min_size=1, max_size=4), min_size=1, max_size=20))
    paths = {"/".join(parts) for parts in leaves}
    dirs = {posixpath.dirname(p) for p in paths} - {""}
    for d in list(dirs):
        while d:
            dirs.add(d)
            d = posixpath.dirname(d)
    entries: list[Entry] = [_dir(d) for d in dirs]
    all_paths = sorted(paths | dirs)
    for p in sorted(paths - dirs):
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink"]))
        if kind == "dir":
            entries.append(_dir(p))
        elif kind == "symlink":
            target = draw(st.sampled_from(all_paths))
            rel = posixpath.relpath(target, posixpath.dirname(p) or ".")
            entries.append(_link(p, rel))
        else:
            sizes = draw(st.lists(st.integers(1, 1 << 40), max_size=5))
            chunks = tuple(
                ChunkRef(Digest(draw(st.binary(min_size=32, max_size=32))), s) for s in sizes
            )
            entries.append(
                Entry(
                    p,
                    EntryType.FILE,
                    size=sum(sizes),
                    executable=draw(st.booleans()),
                    mtime_ns=draw(st.integers(0, 2**63 - 1)),
                    chunks=chunks,
                )
            )
    return entries


@settings(max_examples=80, deadline=None)
@given(NAME, NAME, trees(), st.randoms(use_true_random=False))
def test_random_valid_trees_round_trip(
    name: str, version: str, entries: list[Entry], rng: random.Random
) -> None:
    m = Manifest.build(name, version, entries, SMALL)
    data = m.canonical()
    parsed = Manifest.parse(data)
    assert parsed == m
    assert parsed.canonical() == data
    assert {e.path for e in parsed.entries} == {e.path for e in entries}
    assert sorted(parsed.entries, key=lambda e: e.path) == sorted(entries, key=lambda e: e.path)
    rng.shuffle(entries)
    assert Manifest.build(name, version, entries, SMALL).canonical() == data


@settings(max_examples=50, deadline=None)
@given(trees(), st.data())
def test_random_trees_with_a_duplicate_are_refused(
    entries: list[Entry], data: st.DataObject
) -> None:
    twin = data.draw(st.sampled_from(entries))
    with pytest.raises(ManifestError):
        Manifest.build("app", "1.0", [*entries, twin], SMALL)


@settings(max_examples=50, deadline=None)
@given(trees(), st.data())
def test_random_trees_with_an_escaping_symlink_are_refused(
    entries: list[Entry], data: st.DataObject
) -> None:
    dirs = [e.path for e in entries if e.type is EntryType.DIR]
    folder = data.draw(st.sampled_from(["", *dirs]))
    depth = folder.count("/") + 1 if folder else 0
    escape = "../" * (depth + 1) + data.draw(COMPONENT)
    link = posixpath.join(folder, "\u2603escape")
    with pytest.raises(ManifestError, match="leaves the package"):
        Manifest.build("app", "1.0", [*entries, _link(link, escape)], SMALL)
