"""BLAKE3 digests as a validated value type.

A :class:`Digest` is only built by hashing bytes or by parsing its hex form, so a value of
this type is always 32 well-formed bytes. It owns its hex form, its shard prefix in the
content library and its database/JSON conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from packdist.errors import HashMismatch, UserError

DIGEST_SIZE = 32
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A BLAKE3-256 digest."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, got {len(self.raw)}")

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """Hash ``data``."""
        return cls(blake3.blake3(data).digest())

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse the 64-character lower-case hex form."""
        if len(text) != 2 * DIGEST_SIZE or not set(text) <= _HEX:
            raise UserError(f"not a digest: {text[:80]!r}")
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def short(self) -> str:
        """The first 12 hex digits, for messages."""
        return self.raw.hex()[:12]

    @property
    def shard(self) -> str:
        """The library sub-folder this digest is stored under."""
        return self.raw.hex()[:2]

    def holds(self, data: bytes | bytearray | memoryview | None) -> bool:
        """Whether ``data`` is the content of this digest (None never is): the one check
        of a chunk, whatever its source (site, peer, a local copy, the cache)."""
        return data is not None and blake3.blake3(data).digest() == self.raw

    def verify(self, data: bytes | bytearray | memoryview, what: str = "chunk") -> None:
        """Raise :class:`HashMismatch` unless ``data`` hashes to this digest (the check is
        :meth:`holds`; the content is hashed again only to say what it hashes to)."""
        if not self.holds(data):
            actual = Digest.of(data).short
            raise HashMismatch(
                f"hash mismatch in {what} {self.short}…: content hashes to {actual}…",
                digest=self.hex,
            )

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"Digest({self.short}…)"
