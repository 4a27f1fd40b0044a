"""Digest as a validated value type, and validation of names, versions and references."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.core.digest import DIGEST_SIZE, Digest
from packdist.core.names import (
    MAX_LEN,
    check_group_name,
    check_label_key,
    check_package_name,
    check_server_name,
    check_version,
    parse_label,
    parse_ref,
)
from packdist.errors import HashMismatch, InvalidName, UserError

# --- Digest -------------------------------------------------------------------------------


def test_digest_of_is_blake3_256() -> None:
    d = Digest.of(b"hello")
    assert d.raw == blake3.blake3(b"hello").digest()
    assert len(d.raw) == DIGEST_SIZE
    assert d.hex == blake3.blake3(b"hello").hexdigest()
    assert str(d) == d.hex


def test_digest_accepts_bytearray_and_memoryview() -> None:
    assert Digest.of(bytearray(b"abc")) == Digest.of(b"abc")
    assert Digest.of(memoryview(b"xabcx")[1:4]) == Digest.of(b"abc")


@given(st.binary(max_size=2048))
def test_digest_hex_round_trip(data: bytes) -> None:
    d = Digest.of(data)
    assert Digest.parse(d.hex) == d
    assert len(d.hex) == 64
    assert d.hex == d.hex.lower()


def test_digest_shard_and_short_are_hex_prefixes() -> None:
    d = Digest.of(b"shard me")
    assert d.shard == d.hex[:2]
    assert d.short == d.hex[:12]
    assert d.short in repr(d)


@given(st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE))
def test_digest_shard_covers_all_256_folders(raw: bytes) -> None:
    d = Digest(raw)
    assert d.shard == f"{raw[0]:02x}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ab",
        "0" * 63,
        "0" * 65,
        "A" * 64,  # upper case is not the canonical form
        "g" * 64,
        " " + "0" * 63,
        "0" * 63 + "\n",
        "0x" + "0" * 62,
    ],
)
def test_digest_parse_refuses_malformed_hex(text: str) -> None:
    with pytest.raises(UserError, match="not a digest"):
        Digest.parse(text)


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_digest_refuses_wrong_raw_length(size: int) -> None:
    with pytest.raises(ValueError):
        Digest(b"\0" * size)


def test_digest_verify_accepts_matching_content() -> None:
    Digest.of(b"payload").verify(b"payload")
    Digest.of(b"payload").verify(memoryview(b"payload"))


@given(st.binary(min_size=1, max_size=512), st.data())
def test_digest_verify_detects_any_flipped_byte(data: bytes, draw: st.DataObject) -> None:
    d = Digest.of(data)
    i = draw.draw(st.integers(0, len(data) - 1))
    bit = draw.draw(st.integers(0, 7))
    corrupt = bytearray(data)
    corrupt[i] ^= 1 << bit
    with pytest.raises(HashMismatch, match=d.short):
        d.verify(bytes(corrupt), what="chunk")


def test_digest_verify_detects_truncation_and_names_what() -> None:
    d = Digest.of(b"0123456789")
    with pytest.raises(HashMismatch, match="file"):
        d.verify(b"012345678", what="file")


def test_digest_is_hashable_and_ordered() -> None:
    a, b = Digest.of(b"a"), Digest.of(b"b")
    assert len({a, b, Digest.parse(a.hex)}) == 2
    assert sorted([a, b]) == sorted([b, a])
    assert (a < b) == (a.raw < b.raw)


def test_digest_is_immutable() -> None:
    d = Digest.of(b"x")
    with pytest.raises(AttributeError):
        d.raw = b"\0" * 32  # type: ignore[misc]


# --- names --------------------------------------------------------------------------------

CHECKERS = [check_package_name, check_version, check_server_name, check_group_name]

VALID = ["app", "App-2", "1.0", "1.0.0-rc.1+build.5", "a", "x_y", "0", "a" * MAX_LEN]
INVALID = [
    "",
    "a/b",
    "/abs",
    "..",
    ".",
    "a..b",
    "..a",
    "a/../b",
    ".hidden",
    "-flag",
    "+x",
    "_x",
    "a b",
    "a\tb",
    "a\nb",
    "1.0\n",  # a trailing newline: `$` alone matches before it
    "app\n",
    "\napp",
    "1.0\r",
    "1.0\n\n",
    "١٢٣",  # Arabic-Indic digits: str.isdigit, not [0-9]
    "a\\b",
    "a@b",
    "é",
    "a\0b",
    "a" * (MAX_LEN + 1),
]


@pytest.mark.parametrize("check", CHECKERS)
@pytest.mark.parametrize("value", VALID)
def test_valid_names_are_returned_unchanged(check: object, value: str) -> None:
    assert check(value) == value  # type: ignore[operator]


@pytest.mark.parametrize("check", CHECKERS)
@pytest.mark.parametrize("value", INVALID)
def test_invalid_names_are_refused(check: object, value: str) -> None:
    with pytest.raises(InvalidName):
        check(value)  # type: ignore[operator]


def test_invalid_name_is_a_user_error() -> None:
    assert issubclass(InvalidName, UserError)


def test_name_messages_name_the_value() -> None:
    with pytest.raises(InvalidName, match="'a/b'"):
        check_package_name("a/b")
    with pytest.raises(InvalidName, match=r"version '1\.\.2'"):
        check_version("1..2")
    with pytest.raises(InvalidName, match="longer than"):
        check_package_name("x" * 200)


@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,60}\Z"))
def test_any_name_of_the_grammar_is_accepted_unless_it_holds_dotdot(value: str) -> None:
    if ".." in value:
        with pytest.raises(InvalidName):
            check_package_name(value)
    else:
        assert check_package_name(value) == value


@given(st.text(max_size=40), st.text(max_size=40))
def test_names_with_a_slash_are_always_refused(left: str, right: str) -> None:
    with pytest.raises(InvalidName):
        check_package_name(f"{left}/{right}")
    with pytest.raises(InvalidName):
        check_version(f"{left}/{right}")


def test_labels_servers_and_refs_refuse_a_trailing_newline() -> None:
    with pytest.raises(InvalidName):
        parse_label("site=berlin\n")
    with pytest.raises(InvalidName):
        parse_label("site\n=berlin")
    with pytest.raises(InvalidName):
        parse_ref("app@1.0\n")
    with pytest.raises(InvalidName):
        check_label_key("site\n")
    assert parse_label("site=berlin") == ("site", "berlin")


def test_parse_ref_splits_and_validates() -> None:
    assert parse_ref("app@1.0") == ("app", "1.0")
    assert parse_ref("my-app@2024.01.02+b7") == ("my-app", "2024.01.02+b7")


@pytest.mark.parametrize(
    "ref", ["app", "app@", "@1.0", "app@1/0", "a/b@1", "app@..", "app@1@2", "", "@"]
)
def test_parse_ref_refuses_malformed_references(ref: str) -> None:
    with pytest.raises(InvalidName):
        parse_ref(ref)


def test_a_listen_port_must_be_ascii_digits() -> None:
    from packdist.core.names import split_listen

    assert split_listen("127.0.0.1:8700") == ("127.0.0.1", 8700)
    for bad in ("h:٨٧٠٠", "h:8700\n", "h: 8700"):
        with pytest.raises(ValueError):
            split_listen(bad)


def test_a_chunk_holds_only_its_own_content() -> None:
    digest = Digest.of(b"chunk")
    assert digest.holds(b"chunk") and digest.holds(memoryview(b"chunk"))
    assert not digest.holds(b"chunK") and not digest.holds(b"") and not digest.holds(None)
