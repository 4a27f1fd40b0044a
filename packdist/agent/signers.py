"""Whose signature makes a manifest installable here: the trust chain, as the agent sees it.

A manifest is accepted if it verifies with the site's own key or with a key of a site above
it (parent, grandparent, ...), which the site names in its answers (``trusted_keys``, read
by :func:`packdist.protocol.pace.trusted_keys_of`). :class:`TrustedSigners` is the one check
of a manifest's signature on the agent.

It is a manifest check and nothing else: it has no method a credential check could take
for a key (``auth.check_site_assertion`` wants a :class:`VerifyKey`, and the agent gives it
the site's own), so a parent's key lets a manifest be installed and never authorizes a
request.
"""

from __future__ import annotations

from dataclasses import dataclass

from packdist.core.manifest import Manifest
from packdist.core.signing import VerifyKey
from packdist.errors import BadSignature


@dataclass(frozen=True)
class TrustedSigners:
    """The keys a manifest may be signed with: the site's own, then those above it."""

    site: VerifyKey
    above: tuple[VerifyKey, ...] = ()

    @classmethod
    def of(cls, site: VerifyKey, above_hex: tuple[str, ...] = ()) -> TrustedSigners:
        """From the site's key and the hex keys of the sites above (checked as read)."""
        return cls(site, tuple(VerifyKey.from_hex(k) for k in above_hex))

    @property
    def above_hex(self) -> tuple[str, ...]:
        return tuple(k.hex for k in self.above)

    def verify_manifest(self, data: bytes, signature: bytes) -> Manifest:
        """The manifest of ``data`` once its signature verifies with one of the keys
        (checked first: nothing unsigned is even parsed); else BadSignature, with the words
        of a site key's refusal."""
        refused: BadSignature | None = None
        for key in (self.site, *self.above):
            try:
                key.verify(signature, data)
            except BadSignature as exc:
                refused = refused or exc  # the site key's words: what is said today
                continue
            return Manifest.parse(data)
        assert refused is not None
        raise refused
