"""The agent's home and installer: concurrent bookkeeping, replacing a version atomically,
recovery after a crash at each step, progress reporting, error wording, enrollment facts."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from packdist.agent.home import ENROLLMENT, AgentHome
from packdist.agent.installer import FETCH_ERROR_PREFIX, Install, Installer, InstallState
from packdist.agent.server import Agent
from packdist.agent.signers import TrustedSigners
from packdist.core.chunking import DEFAULT_PARAMS
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.fsutil import exchange, write_atomic
from packdist.core.manifest import ChunkRef, Entry, EntryType, Manifest, SignedManifest
from packdist.core.signing import SigningKey
from packdist.errors import ConnectError, UserError
from packdist.http import Frame
from packdist.protocol.chunk_stream import StreamStop

KEY = SigningKey.generate()
PIECE = 1000  # bytes per chunk in these manifests


class Crash(BaseException):
    """The agent process dies here (nothing after this line of the install runs)."""


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Package:
    signed: SignedManifest
    chunks: dict[Digest, bytes]
    files: dict[str, bytes]

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def id(self) -> str:
        return self.manifest.id.hex


def package(name: str, version: str, files: dict[str, bytes]) -> Package:
    """A signed manifest of ``files`` (parents made directories), cut into small chunks."""
    entries: dict[str, Entry] = {}
    chunks: dict[Digest, bytes] = {}
    for path, data in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            entries[d] = Entry(d, EntryType.DIR)
        pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
        refs = []
        for p in pieces:
            digest = Digest.of(p)
            chunks[digest] = p
            refs.append(ChunkRef(digest, len(p)))
        entries[path] = Entry(
            path, EntryType.FILE, size=len(data), mtime_ns=10**18, chunks=tuple(refs)
        )
    m = Manifest.build(name, version, list(entries.values()), DEFAULT_PARAMS)
    return Package(SignedManifest.sign(m, KEY), chunks, files)


def v(n: int) -> Package:
    """``app@1`` with content that depends on ``n`` (so ids differ, the ref does not)."""
    return package(
        "app",
        "1",
        {
            "README": f"version {n}\n".encode(),
            "lib/data.bin": bytes([n % 256]) * 5000 + os.urandom(20_000),
        },
    )


def raw_frame(digest: Digest, data: bytes) -> Frame:
    return Frame(digest, Encoding.RAW, len(data), data)


def serve(pkg: Package, delay: float = 0.0, calls: list[int] | None = None) -> Any:
    """A fetch function handing out ``pkg``'s chunks (``calls`` counts requests)."""

    def fetch(
        digests: list[Digest], bases: object = None, stop: StreamStop | None = None
    ) -> Iterator[Frame]:
        if calls is not None:
            calls.append(len(digests))
        for d in digests:
            if delay:
                time.sleep(delay)  # read in a worker thread, as the site's stream is
            if stop is not None:
                stop.check()
            yield raw_frame(d, pkg.chunks[d])

    return fetch


def no_fetch(digests: list[Digest], bases: object = None, stop: object = None) -> Iterator[Frame]:
    raise AssertionError(f"nothing should be fetched, asked for {len(digests)} chunk(s)")
    yield  # a generator


def tree_of(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


async def start(installer: Installer, pkg: Package) -> Install:
    return await installer.start(
        pkg.manifest.canonical(), pkg.signed.signature, TrustedSigners(KEY.public)
    )


async def install(installer: Installer, pkg: Package) -> Install:
    inst = await start(installer, pkg)
    await inst.finished.wait()
    return inst


@pytest.fixture
def home(tmp_path: Path) -> AgentHome:
    h = AgentHome(tmp_path / "agent")
    h.prepare()
    return h


# --- installed.json and durable writes from many threads ----------------------------------


def _record_at_once(home: AgentHome, refs: dict[str, str]) -> list[BaseException]:
    """Record every ref from its own thread, all released at the same instant."""
    barrier = threading.Barrier(len(refs))
    errors: list[BaseException] = []

    def record(ref: str, pid: str) -> None:
        try:
            barrier.wait()
            home.record_installed(ref, pid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=record, args=item) for item in refs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_sixteen_threads_recording_installs_at_once_keep_every_ref(tmp_path: Path) -> None:
    for round_ in range(5):
        h = AgentHome(tmp_path / f"agent{round_}")
        h.prepare()
        refs = {f"p{i}@1": f"{i:064x}" for i in range(16)}
        for ref in refs:
            h.package_dir(*ref.split("@")).mkdir(parents=True)
        assert _record_at_once(h, refs) == []
        assert h.installed() == refs
        assert json.loads(h.installed_file.read_text()) == refs
        assert [p.name for p in h.installed_file.parent.iterdir() if p.name.startswith(".")] == []


def test_concurrent_atomic_writes_leave_one_whole_version_and_no_temporaries(
    tmp_path: Path,
) -> None:
    target = tmp_path / "file"
    versions = [bytes([i]) * 200_000 for i in range(16)]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            barrier.wait()
            write_atomic(target, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(d,)) for d in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in versions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- exchange -----------------------------------------------------------------------------


def test_exchange_swaps_two_trees(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "x").write_bytes(b"from a")
    b.mkdir()
    (b / "y").write_bytes(b"from b")
    ino_a, ino_b = a.stat().st_ino, b.stat().st_ino
    exchange(a, b)
    assert tree_of(a) == {"y": b"from b"}
    assert tree_of(b) == {"sub/x": b"from a"}
    assert (a.stat().st_ino, b.stat().st_ino) == (ino_b, ino_a)


def test_exchange_of_a_missing_name_raises_with_the_kernels_errno(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(OSError) as caught:
        exchange(tmp_path / "a", tmp_path / "missing")
    assert caught.value.errno == errno.ENOENT
    assert (tmp_path / "a").is_dir()  # nothing moved


# --- installing and replacing -------------------------------------------------------------


def test_install_puts_the_tree_in_place_and_reports_progress(home: AgentHome) -> None:
    pkg = v(1)
    seen: list[tuple[str, int]] = []

    async def main() -> Install:
        installer = Installer(home, serve(pkg, delay=0.002))
        inst = await start(installer, pkg)
        while not inst.finished.is_set():
            doc = inst.to_json()
            seen.append((str(doc["phase"]), int(str(doc["progress"]))))
            await asyncio.sleep(0.001)
        return inst

    inst = asyncio.run(main())
    assert inst.state is InstallState.INSTALLED, inst.error
    assert tree_of(home.package_dir("app", "1")) == pkg.files
    assert home.installed() == {"app@1": pkg.id}
    assert list(home.staging.iterdir()) == []

    doc = inst.to_json()
    assert set(doc) == {
        "package_id",
        "package",
        "state",
        "error",
        "error_kind",
        "error_chunk",
        "bytes_received",
        "bytes_wire",
        "bytes_from_peers",
        "bytes_done",
        "bytes_total",
        "phase",
        "progress",
    }
    assert doc["phase"] == "finish"
    # every chunk verified locally, fetched-and-written, plus every phase and entry
    assert int(str(doc["progress"])) >= 2 * len(pkg.chunks) + 4
    progress = [p for _, p in seen]
    assert progress == sorted(progress)  # it never goes back
    fetching = [p for phase, p in seen if phase == "fetch"]
    assert len(set(fetching)) > 5  # and it moves while chunks arrive
    phases = [phase for phase, _ in seen]
    assert phases.index("fetch") < phases.index("finish")


def test_replacing_a_tree_in_place_exchanges_it_whole(home: AgentHome) -> None:
    final = home.package_dir("app", "1")
    final.mkdir(parents=True)
    (final / "stale").write_bytes(b"an unrecorded tree from before")
    pkg = v(2)
    inst = asyncio.run(install(Installer(home, serve(pkg)), pkg))
    assert inst.state is InstallState.INSTALLED, inst.error
    assert tree_of(final) == pkg.files  # never a mix of the two
    assert home.installed() == {"app@1": pkg.id}
    assert list(home.staging.iterdir()) == []  # the replaced tree is gone


def test_crash_after_the_exchange_is_settled_at_restart(home: AgentHome) -> None:
    """Killed between the exchange and recording it: at restart the new version is in
    place and recorded, and only then is the replaced tree dropped."""
    old, new = v(1), v(2)
    asyncio.run(install(Installer(home, serve(old)), old))

    @dataclass
    class DiesWhenRecording(AgentHome):
        def record_installed(self, ref: str, package_id: str) -> None:
            raise Crash

    async def crashing() -> None:
        installer = Installer(DiesWhenRecording(home.root), serve(new))
        inst = await start(installer, new)
        assert inst.task is not None
        (outcome,) = await asyncio.gather(inst.task, return_exceptions=True)
        assert isinstance(outcome, Crash)

    asyncio.run(crashing())
    assert tree_of(home.package_dir("app", "1")) == new.files  # the exchange happened

    restarted = AgentHome(home.root)
    Installer(restarted, no_fetch).recover()
    assert restarted.installed() == {"app@1": new.id}
    assert tree_of(restarted.package_dir("app", "1")) == new.files
    assert list(restarted.staging.iterdir()) == []


def test_crash_just_before_the_exchange_keeps_both_versions(
    home: AgentHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with the new tree complete in staging: the old version stays installed, the
    new tree is kept, and the next request finishes it without fetching a byte."""
    old, new = v(1), v(2)
    asyncio.run(install(Installer(home, serve(old)), old))

    def dies(a: Path, b: Path) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr("packdist.agent.commit_stage.exchange", dies)

        async def crashing() -> None:
            inst = await start(Installer(home, serve(new)), new)
            assert inst.task is not None
            await asyncio.gather(inst.task, return_exceptions=True)

        asyncio.run(crashing())

    restarted = AgentHome(home.root)
    installer = Installer(restarted, no_fetch)
    installer.recover()
    assert restarted.installed() == {"app@1": old.id}
    assert tree_of(restarted.package_dir("app", "1")) == old.files
    assert [p.name for p in restarted.staging.iterdir()] == [new.id]  # kept, journal gone

    inst = asyncio.run(install(installer, new))
    assert inst.state is InstallState.INSTALLED, inst.error
    assert inst.bytes_received == 0
    assert restarted.installed() == {"app@1": new.id}
    assert tree_of(restarted.package_dir("app", "1")) == new.files
    assert list(restarted.staging.iterdir()) == []


def test_a_failure_to_record_is_settled_by_the_next_attempt(home: AgentHome) -> None:
    old, new = v(1), v(2)
    asyncio.run(install(Installer(home, serve(old)), old))

    @dataclass
    class FullStateDisk(AgentHome):
        fail: bool = True

        def record_installed(self, ref: str, package_id: str) -> None:
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device", "installed.json")
            super().record_installed(ref, package_id)

    flaky = FullStateDisk(home.root)
    installer = Installer(flaky, serve(new))
    first = asyncio.run(install(installer, new))
    assert first.state is InstallState.FAILED
    assert first.error is not None and "disk full" in first.error

    flaky.fail = False
    installer._fetch = no_fetch
    second = asyncio.run(install(installer, new))
    assert second.state is InstallState.INSTALLED, second.error
    assert flaky.installed() == {"app@1": new.id}
    assert tree_of(flaky.package_dir("app", "1")) == new.files
    assert list(flaky.staging.iterdir()) == []


def test_recover_drops_leftovers_but_keeps_an_unfinished_install(home: AgentHome) -> None:
    (home.staging / ("a" * 64)).mkdir()  # an unfinished install: resumes later
    (home.staging / f"{'b' * 64}.layout-0000").mkdir()
    (home.staging / f".{'c' * 64}.swap.tmp-1-2-3").write_bytes(b"{")
    Installer(home, no_fetch).recover()
    assert [p.name for p in home.staging.iterdir()] == ["a" * 64]


def test_two_requests_at_once_make_one_install(home: AgentHome) -> None:
    pkg = v(3)
    calls: list[int] = []

    async def main() -> tuple[Install, Install]:
        installer = Installer(home, serve(pkg, calls=calls))
        a, b = await asyncio.gather(start(installer, pkg), start(installer, pkg))
        await a.finished.wait()
        again = await start(installer, pkg)  # after the end: the finished install is joined
        assert again is a
        return a, b

    a, b = asyncio.run(main())
    assert a is b
    assert a.state is InstallState.INSTALLED
    assert sum(calls) == len(pkg.chunks)  # every chunk fetched once


def test_another_job_asking_for_a_version_held_is_answered_afresh_with_nothing_sent(
    home: AgentHome,
) -> None:
    """The job that brought the version joins its finished install (a cut attempt asking
    again sees the bytes it moved); a later job sees only that it is there."""
    pkg = v(6)
    calls: list[int] = []

    async def main() -> tuple[Install, Install, Install]:
        installer = Installer(home, serve(pkg, calls=calls))
        signers = TrustedSigners(KEY.public)
        data, signature = pkg.manifest.canonical(), pkg.signed.signature
        first = await installer.start(data, signature, signers, job="job1")
        await first.finished.wait()
        again = await installer.start(data, signature, signers, job="job1")
        later = await installer.start(data, signature, signers, job="job2")
        return first, again, later

    first, again, later = asyncio.run(main())
    assert again is first and first.bytes_wire > 0
    assert later is not first
    assert (later.state, later.bytes_wire, later.bytes_present) == (
        InstallState.INSTALLED,
        0,
        pkg.manifest.total_size,
    )
    assert sum(calls) == len(pkg.chunks)  # fetched once


# --- error wording ------------------------------------------------------------------------


def test_a_fetch_failure_says_the_agent_could_not_reach_the_site(home: AgentHome) -> None:
    pkg = v(4)

    def refused(
        digests: list[Digest], bases: object = None, stop: object = None
    ) -> Iterator[Frame]:
        raise ConnectError("connection refused by http://site:8700")
        yield  # a generator

    inst = asyncio.run(install(Installer(home, refused), pkg))
    assert inst.state is InstallState.FAILED
    assert inst.error == FETCH_ERROR_PREFIX + "connection refused by http://site:8700"
    assert inst.error.startswith("agent could not fetch chunks from the site: ")


def test_a_corrupt_chunk_is_reported_as_such_not_as_a_fetch_failure(home: AgentHome) -> None:
    pkg = v(5)

    def corrupt(
        digests: list[Digest], bases: object = None, stop: object = None
    ) -> Iterator[Frame]:
        for d in digests:
            yield raw_frame(d, b"x" * len(pkg.chunks[d]))

    inst = asyncio.run(install(Installer(home, corrupt), pkg))
    assert inst.state is InstallState.FAILED
    assert inst.error is not None and inst.error.startswith("hash mismatch")


def test_a_stream_is_closed_as_soon_as_the_install_gives_it_up(home: AgentHome) -> None:
    pkg = v(6)
    closed: list[bool] = []

    def stray(digests: list[Digest], bases: object = None, stop: object = None) -> Iterator[Frame]:
        try:
            yield raw_frame(Digest.of(b"not asked for"), b"not asked for")
            yield raw_frame(digests[0], pkg.chunks[digests[0]])
        finally:
            closed.append(True)

    async def main() -> Install:
        inst = await start(Installer(home, stray), pkg)
        await inst.finished.wait()
        assert closed == [True]  # closed before the install reported its end
        return inst

    inst = asyncio.run(main())
    assert inst.error is not None
    assert "not asked for" in inst.error


# --- enrollment facts ---------------------------------------------------------------------


def _enrollment(home: AgentHome, site_url: str) -> str:
    key_hex = KEY.public.hex
    home.save_enrollment(
        {"site_url": site_url, "server": "dp1", "site": "s", "site_public_key": key_hex}
    )
    return key_hex


def test_a_corrupt_enrollment_file_is_a_one_line_error_naming_it(home: AgentHome) -> None:
    for content in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"site_url": "x"}'):
        (home.root / ENROLLMENT).write_bytes(content)
        with pytest.raises(UserError) as caught:
            home.load_enrollment()
        assert str(home.root / ENROLLMENT) in caught.value.message
        assert "\n" not in caught.value.message
        with pytest.raises(UserError):
            Agent(home, "http://site:8700", "pdt_x")


def test_the_pinned_site_key_is_kept_when_site_is_spelled_differently(
    home: AgentHome,
) -> None:
    key_hex = _enrollment(home, "http://127.0.0.1:8700")
    agent = Agent(home, "http://localhost:8700", "pdt_x")
    assert agent.site_key is not None and agent.site_key.hex == key_hex
    assert agent.server_name == "dp1"


def test_the_bases_named_come_from_the_version_put_in_place_last(home: AgentHome) -> None:
    from packdist.agent.bases import choose_bases

    common = os.urandom(20_000)
    old_b = package("app", "b", {"lib/data.bin": b"b" * 4000 + common})  # sorts after "a"
    old_a = package("app", "a", {"lib/data.bin": b"a" * 4000 + common})
    new = package("app", "c", {"lib/data.bin": b"c" * 4000 + common})
    for pkg in (old_a, old_b):
        inst = asyncio.run(install(Installer(home, serve(pkg)), pkg))
        assert inst.state is InstallState.INSTALLED, inst.error
    placed = home.package_dir("app", "a").stat().st_mtime
    os.utime(home.package_dir("app", "b"), (placed + 10, placed + 10))  # b: in place last
    wanted = {d: place for d, place in _first_places(new.manifest).items() if d not in old_a.chunks}
    bases = choose_bases(home, new.manifest, wanted)
    named = {b.digest for bs in bases.values() for b in bs}
    assert named and named <= set(old_b.chunks), "the bases are b's, not a's (first by name)"


def _first_places(m: Manifest) -> dict[Digest, tuple[str, int, int]]:
    out: dict[Digest, tuple[str, int, int]] = {}
    for path, offset, c in m.chunk_places():
        out.setdefault(c.digest, (path, offset, c.size))
    return out
