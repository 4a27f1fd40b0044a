"""A removed server is refused by its peers: the peer credentials the site signed for it
before its removal (good for hours) stop working within seconds, though their signatures
still hold. Real ``site serve`` and ``agent serve`` processes."""

from __future__ import annotations

import ssl
import time
import urllib.error
from pathlib import Path

from packdist.auth import PEER_CHUNKS_PATH, peer_assertion
from packdist.core.signing import SigningKey
from tests import harness as h
from tests.conftest import run_packdist

REFUSED_WITHIN = 30.0  # seconds: issue 13's bound for every peer


def _ask_peer(
    url: str, credential: str, package_id: str, context: ssl.SSLContext | None
) -> tuple[int, bytes]:
    body = {"package": package_id, "digests": [], "wait": 0}
    try:
        return h.http_request(
            "POST",
            url + PEER_CHUNKS_PATH,
            body,
            headers={"Authorization": f"Bearer {credential}"},
            context=context,
        )
    except urllib.error.URLError as exc:  # over TLS, before enrollment: a temporary certificate
        return 0, str(exc.reason).encode()


def test_a_removed_server_is_refused_by_its_peers_within_seconds(tmp_path: Path) -> None:
    c = h.start_cluster(tmp_path, ["dp1", "dp2"])
    try:
        tree = h.make_tree(tmp_path / "src", {"a.bin": 1000}, seed=3)
        package_id = c.site.create_package(tree, "app", "1.0")["id"]
        key = SigningKey.load(c.site.home / "site.key")
        credential = peer_assertion(key, "dp2", package_id)  # as the site gave dp2 one
        as_dp2 = h.as_server(c.site.home, "dp2", tmp_path / "certs")  # and its certificate
        as_dp1 = h.as_server(c.site.home, "dp1", tmp_path / "certs")
        dp1 = c.agents["dp1"].url
        h.wait_until(  # good while dp2 is enrolled (once dp1 is enrolled itself)
            lambda: _ask_peer(dp1, credential, package_id, as_dp2)[0] == 200,
            15,
            message="dp1 enrolled",
        )
        run_packdist(c.site.home, "server", "remove", "dp2")
        removed_at = time.monotonic()
        h.wait_until(
            lambda: _ask_peer(dp1, credential, package_id, as_dp2)[0] == 401,
            REFUSED_WITHIN,
            message="dp1 to refuse the removed dp2's peer credential",
        )
        took = time.monotonic() - removed_at
        status, body = _ask_peer(dp1, credential, package_id, as_dp2)
        assert status == 401 and b"dp2 was removed" in body, body
        print(f"refused {took:.1f}s after the removal")
        other = peer_assertion(key, "dp1", package_id)  # an enrolled server's still works
        assert _ask_peer(c.agents["dp2"].url, other, package_id, as_dp1)[0] == 200
    finally:
        c.close()
