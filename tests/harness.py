"""A small component harness: real ``packdist`` processes driven through the CLI and HTTP.

Modelled on Kraken's ``test/python/components.py``: each deployable part is a
:class:`Component` with ``start`` (waits for ``GET /healthz``), ``stop`` (SIGTERM),
``kill`` (SIGKILL) and ``restart(wipe=...)``. Nothing here imports ``packdist``: tests see
the system exactly as an operator does, through ``packdist --home … --json`` and HTTP.

A component can run inside a network namespace (``netns="pdlab-dp1"``): its command is
prefixed with ``ip netns exec NS`` and its health probe runs there too, so the lab tier
(tests/lab) reuses everything here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.conftest import PACKDIST, run_packdist

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
T = TypeVar("T")


# --- small helpers --------------------------------------------------------------------------


_PORTS = random.SystemRandom()  # not the global generator, which tests may seed alike
_HANDED_OUT: set[int] = set()  # a port handed out once is not handed out again here


def _ephemeral_ports() -> range:
    """The ports the kernel hands out on its own (to ``bind(0)`` and outgoing connections)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a process started next to listen on.

    Chosen at random below the kernel's ephemeral range, never by ``bind(0)``: a port the
    kernel picked is one it may hand to any other process's ``bind(0)`` or outgoing
    connection between our check and the server's own bind ("address already in use")."""
    ephemeral = _ephemeral_ports()
    low, high = (20000, ephemeral.start - 1) if ephemeral.start > 21000 else (10000, 19999)
    for _ in range(200):
        port = _PORTS.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise AssertionError(f"no free port in {low}-{high} after 200 tries")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Raises ``AssertionError`` naming ``message`` (a string, or a callable for a
    description of the last state) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)


#: whether the harness's sites and agents serve HTTPS (as `site serve` and `agent serve` do
#: by default: so does the suite) or plain HTTP (`--plain-http`). PACKDIST_TEST_TLS=0 runs
#: every harness test in clear (to tell a TLS fault from another); `tls=False` on a
#: component runs that one in clear (tests that write raw HTTP to a socket).
TLS = os.environ.get("PACKDIST_TEST_TLS", "1") != "0"


#: what the harness's probes (and any urllib call of a test) verify ``https://`` answers
#: with: the authority of every site this process made (:meth:`Site.init`), the host checked
PROBES = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
urllib.request.install_opener(
    urllib.request.build_opener(urllib.request.HTTPSHandler(context=PROBES))
)


def unverified() -> ssl.SSLContext:
    """No verification: ``/healthz`` probes only (whether a component answers; an agent
    not enrolled yet serves a temporary certificate nobody trusts)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """What the harness dials ``https://`` with: ``ca`` when given, else :data:`PROBES`."""
    if ca is None:
        return PROBES
    return ssl.create_default_context(cafile=str(ca))


def as_server(site_home: Path, name: str, folder: Path) -> ssl.SSLContext:
    """A client context presenting a certificate the site's authority signed for server
    ``name`` (as that server's agent presents its own to a peer), verifying the site's."""
    from packdist.core import tls
    from packdist.site.authority import SiteAuthority

    folder.mkdir(parents=True, exist_ok=True)
    key = tls.new_private_key()
    tls.save_key(key, folder / f"{name}.key")
    issued = SiteAuthority.load(site_home).issue(
        tls.certificate_request(key), name, ["127.0.0.1"], time.time()
    )
    (folder / f"{name}.pem").write_bytes(issued.pem)
    ca = site_home / "tls" / "ca.pem"
    return tls.client_context(ca, folder / f"{name}.pem", folder / f"{name}.key")


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0, ca: Path | None = None
) -> tuple[int, bytes]:
    """GET ``url``; returns ``(status, body)`` for any HTTP answer (4xx/5xx included)."""
    return http_request("GET", url, headers=headers, timeout=timeout, ca=ca)


def http_request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    ca: Path | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """``method url`` with an optional JSON ``body``; ``(status, body)`` of any answer. An
    ``https://`` URL is dialled with ``context`` when given, else verified against ``ca``
    when given (see :func:`tls_context`)."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        if not url.startswith("https://"):
            context = None
        elif context is None:
            context = tls_context(ca)
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()


_PROBE = """
import ssl, sys, urllib.request
try:
    ctx = ssl._create_unverified_context()  # /healthz only: whether it answers
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]), context=ctx) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
"""


def netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def healthy(url: str, netns: str | None = None, timeout: float = 2.0) -> bool:
    """True when ``GET url`` answers 200 (seen from inside ``netns`` if given)."""
    if netns is None:
        context = unverified() if url.startswith("https://") else None
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
                return int(resp.status) == 200
        except (OSError, ValueError):  # HTTPError (an answer other than 200) included
            return False
    proc = subprocess.run(
        [*netns_prefix(netns), sys.executable, "-c", _PROBE, url, str(timeout)],
        capture_output=True,
        timeout=timeout + 10,
    )
    return proc.returncode == 0


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def run_cli(
    home: Path, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``packdist --home HOME ARGS`` in a subprocess (site commands need no network)."""
    return run_packdist(home, *args, check=check, timeout=timeout)


def run_json(home: Path, *args: str, timeout: float = 120) -> Any:
    proc = run_cli(home, *args, "--json", timeout=timeout)
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"packdist {' '.join(args)} --json printed no single JSON document:\n{proc.stdout!r}"
        ) from exc


# --- components -----------------------------------------------------------------------------


class Component:
    """One long-running ``packdist`` process with its own home, log and HTTP endpoint."""

    kind = "component"

    def __init__(
        self,
        name: str,
        home: Path,
        log_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        tls: bool | None = None,
    ) -> None:
        self.name = name
        self.tls = TLS if tls is None else tls  # HTTPS, or --plain-http
        self.home = home
        self.host = host
        # Inside a fresh namespace every port is free; outside, ask the kernel for one.
        self.port = port if port is not None else (8700 if netns else free_port(host))
        self.netns = netns
        self.log_path = log_dir / f"{self.kind}-{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}  # extra environment (PACKDIST_* settings)
        self.cwd: Path | None = None  # working directory (None: the test's)

    # What subclasses provide.
    def command(self) -> list[str]:
        raise NotImplementedError

    def wipe(self) -> None:
        """Forget everything on disk (``restart(wipe=True)``)."""
        shutil.rmtree(self.home, ignore_errors=True)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def plain_flag(self) -> list[str]:
        return [] if self.tls else ["--plain-http"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def healthy(self) -> bool:
        return healthy(f"{self.url}/healthz", self.netns)

    # Life cycle.
    def launch(self) -> None:
        """Start the process without waiting for it to be ready (see :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.kind} {self.name} is already running")
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if k != "PACKDIST_HOME"}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start #{self.starts} at {time.strftime('%X')} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*netns_prefix(self.netns), *self.command()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise AssertionError(
                    f"{self.kind} {self.name} exited ({code}) before answering /healthz;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.kind} {self.name} did not answer {self.url}/healthz within"
                    f" {timeout:g}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.launch()
        self.wait_ready(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            # ``ip netns exec`` execs the command, so the pid is packdist's own either way.
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"{self.kind} {self.name} ignored SIGTERM for {timeout:g}s (killed);"
                    f" log:\n{self.log_tail()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would: no clean-up runs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def restart(self, wipe: bool = False, graceful: bool = True) -> None:
        if graceful:
            self.stop()
        else:
            self.kill()
        if wipe:
            self.wipe()
        self.start()

    def close(self) -> None:
        """Tear-down: stop whatever is left, never raising."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(5)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.url} {state}>"


def start_all(components: Iterable[Component], timeout: float = START_TIMEOUT) -> None:
    """Launch several components at once, then wait until every one is ready."""
    items = list(components)
    for c in items:
        c.launch()
    for c in items:
        c.wait_ready(timeout)


class Site(Component):
    kind = "site"

    def __init__(self, *args: Any, site_name: str = "testsite", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site_name = site_name
        self.operator_password = ""  # printed once by ``site init``
        self.parent_url: str | None = None  # a child site: its parent (the token in env)
        self.serve_args: list[str] = []  # more options of ``site serve`` (``--workers 2``)

    def command(self) -> list[str]:
        parent = [] if self.parent_url is None else ["--parent", self.parent_url]
        return [
            *PACKDIST,
            "--home",
            str(self.home),
            "site",
            "serve",
            "--listen",
            self.listen,
            *parent,
            *self.plain_flag,
            *self.serve_args,
        ]

    def add_child(self, child: Site) -> str:
        """Register ``child`` here (``site add-child``) and make it join this site."""
        token = str(self.json("site", "add-child", child.name, "--url", child.url)["token"])
        child.parent_url = self.url
        child.env["PACKDIST_PARENT_TOKEN"] = token  # kept out of the process list
        return token

    def children(self) -> dict[str, Any]:
        """``site children --json``, by child name."""
        return {c["name"]: c for c in self.json("site", "children")["children"]}

    @property
    def ca(self) -> Path:
        """The site's certificate authority (what verifies its https:// answers)."""
        return self.home / "tls" / "ca.pem"

    def init(self) -> Site:
        doc = self.json("site", "init", "--name", self.site_name)
        self.operator_password = str(doc.get("operator_password") or "")
        PROBES.load_verify_locations(cafile=str(self.ca))  # this test's calls verify it
        return self

    def operator_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """``GET path`` on the running site with the operator credential (bearer)."""
        auth = {"Authorization": f"Bearer {self.operator_password}"}
        ca = self.ca if self.tls else None
        return http_get(f"{self.url}{path}", headers=auth, timeout=timeout, ca=ca)

    def wipe(self) -> None:
        raise RuntimeError("wiping a site loses every job; build a new Site instead")

    # Operator commands (they work on the home whether or not the site is running).
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, check=check)

    def json(self, *args: str) -> Any:
        return run_json(self.home, *args)

    def add_server(
        self,
        name: str,
        url: str,
        groups: Iterable[str] = (),
        labels: dict[str, str] | None = None,
    ) -> str:
        """Register a server; returns its enrollment token."""
        extra = [a for g in groups for a in ("--group", g)]
        extra += [a for k, v in (labels or {}).items() for a in ("--label", f"{k}={v}")]
        doc = self.json("server", "add", name, "--url", url, *extra)
        assert doc["name"] == name, doc
        return str(doc["token"])

    def create_package(self, tree: Path, name: str, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json(
            "package", "create", str(tree), "--name", name, "--version", version
        )
        return doc

    def distribute(self, ref: str, servers: Iterable[str]) -> str:
        doc = self.json("distribute", ref, "--to", ",".join(servers))
        return str(doc["job"])

    def job(self, job_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("job", "show", job_id)
        return doc

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.json("job", "list")["jobs"])

    def wait_job(self, job_id: str, timeout: float) -> int:
        """``job wait``; returns its exit code (0 installed, 1 failed, 75 timed out)."""
        return self.cli("job", "wait", job_id, "--timeout", str(timeout), check=False).returncode

    def server_seen(self, name: str) -> bool:
        """True once the site has heard from ``name``'s agent (a heartbeat arrived)."""
        for server in self.json("server", "list")["servers"]:
            if server["name"] == name:
                return bool(server.get("online") or server.get("last_seen"))
        raise AssertionError(f"no server {name} on the site")

    def library_chunks(self) -> list[Path]:
        return sorted(p for p in (self.home / "library").glob("??/*") if len(p.name) == 64)


class Agent(Component):
    kind = "agent"

    def __init__(self, *args: Any, site_url: str, token: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site_url = site_url
        self.token = token

    def command(self) -> list[str]:
        return [
            *PACKDIST,
            "--home",
            str(self.home),
            "agent",
            "serve",
            "--listen",
            self.listen,
            "--site",
            self.site_url,
            "--token",
            self.token,
            *self.plain_flag,
        ]

    def package_dir(self, name: str, version: str) -> Path:
        return self.home / "packages" / name / version

    def has_package(self, name: str, version: str) -> bool:
        return self.package_dir(name, version).is_dir()


class JobWatcher:
    """Polls ``job show --json`` on a background thread and keeps every distinct snapshot.

    A CLI call takes a fraction of a second; the watcher lets a test react quickly to other
    signals (bytes through a proxy) while still knowing the job's latest state, and check
    afterwards that something never happened (``history``).
    """

    def __init__(self, site: Site, job_id: str, interval: float = 0.1) -> None:
        self.site, self.job_id, self.interval = site, job_id, interval
        self.history: list[tuple[float, dict[str, Any]]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{job_id}", daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                doc = self.site.job(self.job_id)
            except AssertionError as exc:  # e.g. the database is busy while a site restarts
                self.errors.append(str(exc))
            else:
                with self._lock:
                    if not self.history or self.history[-1][1] != doc:
                        self.history.append((time.monotonic(), doc))
            self._stop.wait(self.interval)

    @property
    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self.history[-1][1] if self.history else None

    def snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [doc for _, doc in self.history]

    def states(self, server: str) -> list[str]:
        """Every state ``server``'s instruction was seen in, in order, without repeats."""
        seen: list[str] = []
        for doc in self.snapshots():
            state = instruction(doc, server)["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
        return seen


def job(site: Site, job_id: str) -> dict[str, Any]:
    """The parsed ``job show --json`` of ``job_id``."""
    return site.job(job_id)


def instruction(job_doc: dict[str, Any], server: str) -> dict[str, Any]:
    for i in job_doc["instructions"]:
        if i["server"] == server:
            return dict(i)
    raise AssertionError(f"job {job_doc['id']} has no instruction for {server}: {job_doc}")


def describe_job(job_doc: dict[str, Any]) -> str:
    parts = [
        f"{i['server']}={i['state']}(attempts={i['attempts']},sent={i['bytes_sent']},"
        f"error={i['last_error']!r})"
        for i in job_doc["instructions"]
    ]
    return f"job {job_doc['id']} {job_doc['state']}: " + ", ".join(parts)


# --- a cluster in one call ------------------------------------------------------------------


class Cluster:
    """A site and its agents; ``close()`` stops them all (use as a context manager)."""

    def __init__(
        self, site: Site, agents: dict[str, Agent], proxies: dict[str, ThrottledProxy] | None = None
    ) -> None:
        self.site = site
        self.agents = agents
        self.proxies = proxies or {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for c in [*self.agents.values(), self.site]:
            c.close()
        for p in self.proxies.values():
            p.close()

    def dump_logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {c.kind} {c.name} ---\n{c.log_tail(lines)}"
            for c in [self.site, *self.agents.values()]
        )


def make_site(
    root: Path, name: str = "testsite", netns: str | None = None, home: str = "site", **kw: Any
) -> Site:
    """An initialised (not yet started) site with its home in ``root/HOME``."""
    return Site(name, root / home, root / "logs", netns=netns, site_name=name, **kw).init()


def add_agents(
    site: Site,
    root: Path,
    names: Iterable[str],
    hosts: dict[str, str] | None = None,
    netns: dict[str, str] | None = None,
    port: int | None = None,
    site_url: str | None = None,
    site_urls: dict[str, str] | None = None,
    labels: dict[str, dict[str, str]] | None = None,
) -> dict[str, Agent]:
    """Register one server per name and build its agent (home ``root/agent-NAME``).

    ``hosts``/``netns`` map a name to its listen address / namespace (lab); by default every
    agent listens on 127.0.0.1 on a free port. ``site_urls`` gives some agents another way to
    the site (a :class:`ThrottledProxy`).
    """
    agents = {}
    for name in names:
        host = (hosts or {}).get(name, "127.0.0.1")
        ns = (netns or {}).get(name)
        agent = Agent(
            name,
            root / f"agent-{name}",
            root / "logs",
            host=host,
            port=port,
            netns=ns,
            site_url=(site_urls or {}).get(name) or site_url or site.url,
            tls=site.tls,
        )
        agent.token = site.add_server(name, agent.url, labels=(labels or {}).get(name))
        agents[name] = agent
    return agents


class LabHosts(Protocol):
    """What :func:`start_lab_cluster` needs of a network lab (tests/lab/netns.py ``Lab``)."""

    def addr(self, host: str) -> str: ...

    @staticmethod
    def ns(host: str) -> str: ...


def start_lab_cluster(
    lab: LabHosts,
    root: Path,
    servers: list[str],
    site_port: int = 8700,
    agent_port: int = 8701,
    timeout: float = 60,
    labels: dict[str, dict[str, str]] | None = None,
) -> Cluster:
    """The site (host ``site``) and one agent per server, each in its lab namespace,
    running and enrolled (13 processes on 2 cores take a while: ``timeout``)."""
    site = make_site(root, host=lab.addr("site"), port=site_port, netns=lab.ns("site"))
    agents = add_agents(
        site,
        root,
        servers,
        hosts={s: lab.addr(s) for s in servers},
        netns={s: lab.ns(s) for s in servers},
        port=agent_port,
        labels=labels,
    )
    cluster = Cluster(site, agents)
    try:
        start_all([site, *agents.values()], timeout=timeout)
        wait_until(
            lambda: all(site.server_seen(s) for s in servers), timeout, message="agents enrolled"
        )
    except BaseException:
        cluster.close()
        raise
    return cluster


def start_cluster(
    root: Path,
    servers: Iterable[str] = ("dp1", "dp2", "dp3"),
    throttle: dict[str, float] | None = None,
    tls: bool | None = None,
    labels: dict[str, dict[str, str]] | None = None,
) -> Cluster:
    """Site + one running agent per server name, all on 127.0.0.1.

    ``throttle`` maps some server names to a rate in bytes/s: those agents reach the site
    through their own :class:`ThrottledProxy` (``cluster.proxies[name]``).
    """
    site = make_site(root, tls=tls)
    proxies = {
        n: ThrottledProxy(site.host, site.port, rate, site.tls)
        for n, rate in (throttle or {}).items()
    }
    agents = add_agents(
        site, root, servers, site_urls={n: p.url for n, p in proxies.items()}, labels=labels
    )
    cluster = Cluster(site, agents, proxies)
    try:
        for p in proxies.values():
            p.start()
        start_all([site, *agents.values()])
    except BaseException:
        cluster.close()
        raise
    return cluster


# --- source trees ---------------------------------------------------------------------------


def make_tree(
    root: Path,
    sizes: dict[str, int] | None = None,
    seed: int = 1,
) -> Path:
    """A source tree with everything a package may hold.

    ``sizes`` maps relative file paths to sizes of random (incompressible) content; on top of
    those come a small text file, an executable script, an empty directory, a zero-byte file
    and in-tree symlinks (to a file and to a directory).
    """
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    for rel, size in (sizes or {"data/blob.bin": 3 * 1024 * 1024 + 17}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = size
            while left:
                n = min(left, 8 * 1024 * 1024)
                f.write(rnd.randbytes(n))
                left -= n
    (root / "README.txt").write_text(f"package made by the test harness, seed {seed}\n")
    (root / "bin").mkdir(exist_ok=True)
    script = root / "bin" / "run.sh"
    script.write_text("#!/bin/sh\necho hello from packdist\n")
    script.chmod(0o755)
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "conf").mkdir(exist_ok=True)
    (root / "conf" / "zero.cfg").write_bytes(b"")
    (root / "conf" / "app.cfg").write_text("answer = 42\n")
    (root / "app.cfg").symlink_to("conf/app.cfg")
    (root / "conf" / "bin-link").symlink_to("../bin")
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, Any]]:
    """``relative path -> (kind, detail)`` for every entry under ``root``."""
    out: dict[str, tuple[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", (st.st_size, bool(st.st_mode & stat.S_IXUSR)))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _same_bytes(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_differences(source: Path, installed: Path) -> list[str]:
    """What differs between two trees (empty: identical bytes, exec bits, dirs, symlinks)."""
    if not installed.is_dir():
        return [f"{installed} does not exist"]
    want, got = _snapshot(source), _snapshot(installed)
    problems = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    problems += [f"unexpected: {p}" for p in sorted(got.keys() - want.keys())]
    for rel in sorted(want.keys() & got.keys()):
        if want[rel] != got[rel]:
            problems.append(f"{rel}: source {want[rel]} but installed {got[rel]}")
        elif want[rel][0] == "file" and not _same_bytes(source / rel, installed / rel):
            problems.append(f"{rel}: content differs")
    return problems


def assert_same_tree(source: Path, installed: Path) -> None:
    problems = tree_differences(source, installed)
    assert not problems, f"{installed} is not an exact copy of {source}:\n" + "\n".join(
        problems[:30]
    )


# --- a server that accepts connections and never answers ------------------------------------


class HungServer:
    """Listens on a TCP port, accepts every connection and never sends a byte back."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hung-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"  # a fake: the site dials it in clear

    def __enter__(self) -> HungServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        for c in self._conns:
            c.close()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)  # kept open, never read from, never answered


# --- a slow link without netem: a rate-limited TCP proxy ------------------------------------


class ThrottledProxy:
    """Forwards TCP connections to ``target_host:target_port``; answers come back at ``rate``
    bytes/s at most (all connections together).

    Agents given ``proxy.url`` as their site fetch chunks slowly enough that a fault lands
    mid-transfer, and ``down_bytes`` counts what the site sent them, as it happens.
    """

    def __init__(
        self, target_host: str, target_port: int, rate: float | None = None, tls: bool | None = None
    ) -> None:
        self.tls = TLS if tls is None else tls  # the scheme of what it relays (bytes either way)
        self.target = (target_host, target_port)
        self.rate = rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.down_bytes = 0  # site -> agent
        self.up_bytes = 0  # agent -> site
        self._lock = threading.Lock()
        self._next_send = 0.0
        self._conns: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ThrottledProxy:
        self._thread.start()
        return self

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _close(c)
        if self._thread.is_alive():
            self._thread.join(5)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)  # the site is down: the agent sees the connection closed
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        up = threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True)
        up.start()
        self._pump(upstream, client, True)
        up.join()
        with self._lock:
            self._conns.difference_update((client, upstream))
        _close(client)
        _close(upstream)

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(64 * 1024)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if down:
                    self._pace(len(data))
                dst.sendall(data)
                with self._lock:
                    if down:
                        self.down_bytes += len(data)
                    else:
                        self.up_bytes += len(data)
        except OSError:
            # One side reset or was closed: cut both, as a broken link would.
            _close(src)
            _close(dst)

    def _pace(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next_send, now)
            self._next_send = start + n / self.rate
        if start > now:
            time.sleep(start - now)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
