"""Use cases of the fleet: packages and servers enrolled, heartbeats, validation, repairs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from packdist import states
from packdist.core.digest import Digest
from packdist.core.names import url_host
from packdist.core.words import counted
from packdist.errors import NotFound
from packdist.service.attempts import AttemptUseCases
from packdist.service.jobs import UNFINISHED, cancelled
from packdist.store.core import Store
from packdist.store.records import PackageRecord, describe_problems

if TYPE_CHECKING:
    from packdist.core.manifest import Manifest


class FleetUseCases(AttemptUseCases):
    def add_package(
        self, manifest: Manifest, signature: bytes, new_chunks: dict[Digest, int], now: float
    ) -> PackageRecord:
        store = self.store
        with store.transaction():
            record = store.add_package(manifest, signature, new_chunks, now)
            message = f"package {manifest.ref} created ({manifest.id.short}…){self._by()}"
            store.add_event("package", message, now=now, actor=self.actor)
        return record

    def add_server(
        self,
        name: str,
        url: str,
        token_hash: str,
        groups: list[str],
        labels: dict[str, str] | None,
        now: float,
    ) -> None:
        store = self.store
        with store.transaction():
            store.add_server(name, url, token_hash, groups, labels, now)
            message = f"server {name} added ({url}){self._by()}"
            store.add_event("server", message, server=name, now=now, actor=self.actor)

    def remove_server(self, name: str, now: float) -> int:
        """Remove a server (its token revoked), cancelling its unfinished instructions;
        returns how many."""
        store = self.store
        with store.transaction():
            n = self._remove_server(name, now, "server removed")
            message = f"server {name} removed{self._by()}"
            store.add_event("server", message, server=name, now=now, actor=self.actor)
        return n

    def _remove_server(self, name: str, now: float, why: str) -> int:
        """The server gone (its token revoked) and its unfinished instructions cancelled
        with ``why``; how many."""
        store = self.store
        store.mark_server_removed(name, now)
        ids = store.server_instructions(name, states.sources("server_removed"))
        return len(store.apply("server_removed", ids, now, **cancelled(now, why)))

    def sync_holdings(
        self, server: str, recorded: set[str], reported: Iterable[str], now: float
    ) -> bool:
        """What a server holds, as it (or its child site) reports it: only changes written,
        packages this site does not know left out; whether it holds one more than before."""
        store, wanted = self.store, set(reported)
        for gone in sorted(recorded - wanted):
            store.drop_holding(server, gone)
        gained = False
        for new in sorted(wanted - recorded):
            if store.package_by_id(new) is not None:
                store.add_holding(server, new, now)
                gained = True
        return gained

    def package_holders(self, package_id: str) -> list[str]:
        """Servers (not removed) that hold the package, as last reported, or have an
        unfinished install instruction for it: the targets of ``remove --everywhere``."""
        return self.store.package_holders(package_id, sorted(s.value for s in UNFINISHED))

    def record_heartbeat(
        self,
        server: str,
        boot_id: str,
        disk_free: int | None,
        installed: list[str],
        now: float,
        offline_after: float,
        reached_again: bool = False,
        active: list[str] | None = None,
    ) -> int:
        """Record a heartbeat. If the server was silent (or restarted), wake its retrying
        instructions so they are due now; returns how many were woken. ``reached_again``:
        a call to the server failed since its last heartbeat (a cable pulled for a moment):
        its retrying instructions wake too, though it does not count as having been offline."""
        store = self.store
        with store.transaction():
            seen = store.server_liveness(server)
            if seen is None:
                raise NotFound(f"no server named {server}")
            came_back = (
                seen["last_seen"] is None
                or now - seen["last_seen"] > offline_after
                or seen["boot_id"] != boot_id
            )
            store.record_liveness(server, boot_id, disk_free, now, came_back)
            if came_back:  # its next silence is a going offline again
                store.mark_server_online(server)
            # What the server holds, as it reports it: only changes are written.
            self.sync_holdings(server, store.holdings(server), installed, now)
            if came_back and active:  # the agent's own word, after a restart or an absence
                self.record_reported_active(server, active, now)
            if not came_back and not reached_again:
                return 0
            woken = len(
                store.apply("wake", store.waiting_retries(server, now), now, next_attempt_at=now)
            )
            if not came_back:  # it never left: no "online" event, only work that goes again
                if woken:
                    store.add_event(
                        "server",
                        f"server {server} answers again; {counted(woken, 'retrying instruction')} woken",
                        server=server,
                        now=now,
                    )
                    store.notify()
                return woken
            why = (
                "restarted"
                if seen["last_seen"] is not None and seen["boot_id"] != boot_id
                else "online"
            )
            woke = f"; {counted(woken, 'retrying instruction')} woken" if woken else ""
            store.add_event("server", f"server {server} is {why}{woke}", server=server, now=now)
            if woken:
                store.notify()
            return woken

    def record_offline(self, names: list[str], before: float, now: float) -> list[str]:
        """Servers this site process stopped hearing from (none since ``before``): each
        not marked yet is marked offline, with one ``server`` event; returns those."""
        store = self.store
        with store.transaction():
            gone = store.mark_servers_offline(names, before, now)
            for name, last_seen in gone:
                silent = f"{now - last_seen:.0f}s" if last_seen is not None else "ever"
                message = f"server {name} went offline: no heartbeat for {silent}"
                store.add_event("server", message, server=name, now=now)
        return [name for name, _ in gone]

    def record_quiet_heartbeats(
        self, heard: list[tuple[str, float, int | None]], now: float
    ) -> list[str]:
        """Write a batch of heartbeats that said nothing new (``(server, last_seen,
        disk_free)``). A server among them marked offline before the heartbeat written was
        heard (by a worker that had not heard it) is online again, with its event, so
        that its next silence is told too; returns those. Its retrying work is not woken:
        it was never away (a server truly back is recorded in full, and wakes it)."""
        store = self.store
        with store.transaction():
            store.touch_servers(heard)
            back = store.mark_servers_heard([name for name, _, _ in heard])
            for name in back:
                store.add_event("server", f"server {name} is online", server=name, now=now)
        return back

    def reissue_token(self, name: str, token_hash: str, now: float) -> None:
        """A new enrollment token for ``name``: the old one stops working (a running site
        refuses it within seconds); the server's work goes on, nothing is cancelled."""
        store = self.store
        with store.transaction():
            if not store.replace_token_hash(name, token_hash):
                raise NotFound(f"no server named {name}")
            store.refusals_forgotten(name)  # the mended token: its refusals are history
            message = f"server {name}: new enrollment token, the old one no longer works"
            store.add_event("server", message + self._by(), server=name, now=now, actor=self.actor)

    def record_refused(self, claim: str, remote: str, port: int | None, now: float) -> str | None:
        """An agent was refused for a token of no server: kept for the server it was taken
        for (the name it claims, else the one whose URL is its address and port), with an
        event the first time in a while; returns that server (None: nobody's)."""
        store = self.store
        with store.transaction():
            server = refused_server(store, claim, remote, port)
            if server is None:
                return None
            if store.agent_refused(server, now, remote, "wrong token", now - REFUSAL_SHOWN):
                words = refusal_words(server, now, remote)
                store.add_event("server", words, server=server, now=now)
        return server

    def record_active(self, server: str, package_id: str, now: float) -> str | None:
        """The agent confirmed ``package_id`` active on ``server``: recorded, with the one
        it replaced as its previous. Returns the words of the change (None: no change)."""
        store = self.store
        pkg = store.package_by_id(package_id)
        if pkg is None:
            return None
        before = store.active_versions(server).get(pkg.name)
        if not store.set_active(server, pkg.name, package_id, now):
            return None
        was = None if before is None else store.package_by_id(before.package_id)
        return f"{pkg.ref} active on {server}" + (f" (was {was.version})" if was else "")

    def record_reported_active(self, server: str, active: list[str], now: float) -> None:
        """What a heartbeat says is active (after a restart, or a first heartbeat):
        taken where it differs from what the site recorded."""
        for package_id in active:
            words = self.record_active(server, package_id, now)
            if words is not None:
                self.store.add_event("active", words, server=server, now=now)

    def record_validation(
        self, server: str, package_id: str, problems: list[dict[str, str]], now: float
    ) -> str | None:
        """Record what a validation found for one copy. With problems: mark the copy
        corrupt (the matrix shows it until a verified install clears it), write a
        ``corrupt`` event naming the paths and queue a repair job (options
        ``{"repair": true}``) unless one is unfinished; returns the new job's id. Without:
        clear an earlier mark. Unknown packages and removed servers are ignored (None)."""
        store = self.store
        with store.transaction():
            pkg = store.package_by_id(package_id)
            if pkg is None or store.server(server) is None:
                return None  # not a package of this site, or a server since removed
            if not problems:
                if store.clear_corrupt(server, package_id):
                    store.add_event(
                        "validated", f"{pkg.ref} on {server} verifies again", server=server, now=now
                    )
                return None
            words = describe_problems(problems)
            removing = store.unfinished_of_package(package_id, [server], "remove", UNFINISHED)
            if removing:  # the copy is on its way out: nothing to repair
                job = removing[0]["job_id"]
                message = f"{pkg.ref} corrupt on {server}: {words}; removal job {job} under way, no repair"
                store.add_event("corrupt", message, job, server, now=now)
                return None
            store.mark_corrupt(server, package_id, words, now)
            pending = self.repairs_under_way(server, package_id)
            if pending is not None:  # a repair is already queued or under way
                message = f"{pkg.ref} corrupt on {server}: {words}; repair job {pending} under way"
                store.add_event("corrupt", message, pending, server, now=now)
                return None
            job_id = self.add_job(package_id, [server], None, None, {"repair": True}, now)
            message = f"{pkg.ref} corrupt on {server}: {words}; repair queued (job {job_id})"
            store.add_event("corrupt", message, job_id, server, now=now)
            return job_id


#: seconds a refused agent is shown (server list, job show, the dashboard's events)
REFUSAL_SHOWN = 600.0


def refusal_words(server: str, at: float, remote: str | None = None) -> str:
    when = time.strftime("%H:%M", time.gmtime(at))
    where = f" (from {remote})" if remote else ""  # its claim is its own word: where it was
    return f"{server}: an agent tried to enroll with a wrong token at {when}{where}"


def refused_server(store: Store, claim: str, remote: str, port: int | None) -> str | None:
    """The server a refused agent is taken for: the enrolled one it names, else the one
    server whose URL is at its address and port."""
    if claim and store.server(claim) is not None:
        return claim
    if port is None:
        return None
    local = {"127.0.0.1", "::1", "localhost"}
    found = []
    for name, url in store.servers_with_url_port(port):
        try:
            host = url_host(url) or ""
        except ValueError:
            continue
        if host == remote or (host in local and remote in local):
            found.append(name)
    return found[0] if len(found) == 1 else None


def refusals_shown(store: Store, now: float) -> dict[str, str]:
    """server -> what to say of the agent refused lately as that server's (the latest)."""
    found = store.agents_refused_since(now - REFUSAL_SHOWN)
    if not found:
        return {}
    # a server heard from since (its agent with the right token): the refusal is over
    heard = {s.name: s.last_seen for s in store.servers_named(sorted(found))}
    return {
        name: refusal_words(name, r.at, r.remote)
        for name, r in found.items()
        if (heard.get(name) or 0.0) < r.at
    }
