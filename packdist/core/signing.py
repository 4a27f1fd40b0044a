"""Ed25519 keys of a site: it signs manifests and agent credentials, agents verify them."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from packdist.errors import BadSignature, PackdistError


class SigningKey:
    """A site's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PackdistError(f"cannot read signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise PackdistError(f"{path} is not an Ed25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key in PEM form, readable by its owner only (mode 0600)."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def public(self) -> VerifyKey:
        return VerifyKey(self._key.public_key())


class VerifyKey:
    """A site's public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_hex(cls, text: str) -> VerifyKey:
        try:
            return cls(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text)))
        except ValueError as exc:
            raise PackdistError(f"not an Ed25519 public key: {text[:80]!r}") from exc

    @property
    def hex(self) -> str:
        return self._key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()

    def verify(self, signature: bytes, data: bytes, what: str = "manifest") -> None:
        try:
            self._key.verify(signature, data)
        except InvalidSignature as exc:
            raise BadSignature(f"{what} signature does not verify with the site key") from exc
