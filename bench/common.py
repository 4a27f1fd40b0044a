"""Helpers shared by the benchmarks: test trees, timed children, page cache, services, tables.

Conventions: sizes in the tables are MiB (2^20 bytes), throughput is MB/s (10^6 bytes per
second, as ``dd`` and disk vendors count), times are wall-clock seconds of a whole child
process (start-up included), peak RSS is the largest resident set of any single process of
that child's tree (``ru_maxrss`` from ``os.wait4``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
KIB = 1024
REPO = Path(__file__).resolve().parent.parent
WORK_DIR = Path(os.environ.get("PACKDIST_BENCH_DIR", "/tmp/packdist-bench"))
TREE_FORMAT = 2  # bump when generate_tree changes, so cached trees are rebuilt


# ---------------------------------------------------------------------------- test trees


@dataclass(frozen=True)
class TreeInfo:
    """A generated source tree and what is in it."""

    root: Path
    files: int
    bytes: int
    text_bytes: int
    big_file_bytes: int

    @property
    def mib(self) -> float:
        return self.bytes / MIB


def _words(rng: random.Random, count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz_"
    return ["".join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(count)]


_SYMBOLS = ["=", "(", ")", ":", ",", "+", "-", "*", "return", "def", "if", "for", "in", "#"]


def text_bytes(rng: random.Random, vocabulary: list[str], size: int) -> bytes:
    """Source-code-like text (compresses about 3:1 with zstd -1), never repeating a file."""
    out: list[str] = []
    length = 0
    while length < size:
        indent = " " * (4 * rng.randint(0, 3))
        line = indent + " ".join(rng.choices(vocabulary + _SYMBOLS, k=rng.randint(3, 14)))
        out.append(line)
        length += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


def _small_file_size(rng: random.Random) -> int:
    """1 KiB-1 MiB, log-scale and skewed to small sizes: mean ~110 KiB, median ~14 KiB."""
    return int(KIB * 2 ** (10 * rng.random() ** 1.4))


def generate_tree(
    size_mib: int,
    *,
    work_dir: Path = WORK_DIR,
    big_fraction: float = 700 / 1024,
    seed: int = 1,
    log: Callable[[str], None] = print,
) -> TreeInfo:
    """Build (or reuse) a deterministic tree of about ``size_mib`` MiB under ``work_dir``.

    One big random file (``big_fraction`` of the size, 700 MiB of a 1 GiB tree) plus small
    files of 1 KiB-1 MiB (about 3000 for 1 GiB, most of them small), half of them text and
    half random bytes, 40 to a folder, every tenth executable, with an empty folder and a
    relative symlink. A tree is reused when its stamp file says it is complete and of the
    same format; nothing in it repeats, so no method gains from de-duplication.
    """
    root = work_dir / f"tree-{size_mib}mib"
    stamp = work_dir / f"tree-{size_mib}mib.json"
    wanted = {"format": TREE_FORMAT, "size_mib": size_mib, "seed": seed, "big": big_fraction}
    if stamp.exists() and root.is_dir():
        data = json.loads(stamp.read_text())
        if data.get("spec") == wanted:
            info = data["info"]
            return TreeInfo(root=root, **{k: v for k, v in info.items() if k != "root"})
    log(f"generating a {size_mib} MiB test tree in {root} (once; reused while it exists)")
    work_dir.mkdir(parents=True, exist_ok=True)
    check_space(work_dir, size_mib * MIB, "the test tree")
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    tmp = work_dir / f".tree-{size_mib}mib.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    vocabulary = _words(rng, 3000)
    total = size_mib * MIB
    big = int(total * big_fraction) if size_mib >= 4 else 0
    budget = total - big
    files = text = 0
    index = 0
    while budget > 0:
        size = min(budget, _small_file_size(rng))
        if budget - size < KIB:
            size = budget
        folder = tmp / "src" / f"pkg{index // 400:02d}" / f"mod{index // 40 % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2 == 0:
            path = folder / f"file{index:05d}.py"
            path.write_bytes(text_bytes(rng, vocabulary, size))
            text += size
        else:
            path = folder / f"data{index:05d}.bin"
            path.write_bytes(rng.randbytes(size))
        if index % 10 == 3:
            path.chmod(0o755)
        budget -= size
        files += 1
        index += 1
    if big:
        (tmp / "big").mkdir()
        with open(tmp / "big" / "blob.bin", "wb") as f:
            left = big
            while left:
                piece = min(left, 16 * MIB)
                f.write(rng.randbytes(piece))
                left -= piece
        files += 1
    (tmp / "empty" / "folder").mkdir(parents=True)
    (tmp / "src" / "latest").symlink_to("pkg00")
    tmp.rename(root)
    info = TreeInfo(root, files, total, text, big)
    stamp.write_text(json.dumps({"spec": wanted, "info": {**asdict(info), "root": str(root)}}))
    os.sync()
    log(
        f"  {files} files, {total / MIB:.0f} MiB ({text / MIB:.0f} MiB text, big file {big / MIB:.0f} MiB)"
    )
    return info


def remove_tree(size_mib: int, work_dir: Path = WORK_DIR) -> None:
    (work_dir / f"tree-{size_mib}mib.json").unlink(missing_ok=True)
    shutil.rmtree(work_dir / f"tree-{size_mib}mib", ignore_errors=True)


# ----------------------------------------------------------------------- disk and cache


def check_space(path: Path, needed: int, what: str) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < needed + 2 * 1024 * MIB:
        raise SystemExit(
            f"bench: not enough free space in {path} for {what}:"
            f" {free / MIB:.0f} MiB free, need {needed / MIB:.0f} MiB + 2 GiB to spare"
        )


def scratch(work_dir: Path = WORK_DIR, prefix: str = "run-") -> Path:
    """A fresh, empty directory for one measurement's output."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=work_dir))


def read_tree(root: Path) -> int:
    """Read every file below ``root`` once (warms the page cache); returns bytes read."""
    buf = bytearray(4 * MIB)
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache (needs root); False if not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def settle(source: Path, *, cold: bool, drop: bool = True) -> str:
    """Prepare for a timed run; returns a note on what was done (for the report).

    Always: write back every dirty page (untimed, so no run pays for the previous one's
    writes) and, with root, drop the page cache. Dropping also matters on an ext4 without a
    journal (like the test VMs'): there, creating a file skips every inode freed in the last
    ~50 minutes whose inode-table block is still cached, so each run would be slowed by the
    files the previous runs deleted. Then, unless ``cold``, read the whole source once so
    every method reads it from memory.
    """
    if drop or cold:
        dropped = drop_page_cache()
    else:
        os.sync()
        dropped = False
    if cold and not dropped:
        raise SystemExit("bench: --cold needs root (writes /proc/sys/vm/drop_caches)")
    if not cold:
        read_tree(source)
    if cold:
        return "cold: page cache dropped before each run"
    if dropped:
        return "warm: page cache dropped, then the source read once, before each run"
    return "warm: source read once before each run (page cache not dropped)"


def du_bytes(path: Path) -> int:
    """Apparent size of every regular file below ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            total += st.st_size
    return total


def count_files(path: Path) -> int:
    return sum(len(names) for _folder, _dirs, names in os.walk(path))


# ------------------------------------------------------------------------ timed children


@dataclass
class Run:
    """One child process: wall time, CPU time and peak RSS."""

    seconds: float
    peak_rss_kib: int
    user: float
    system: float
    stdout: str = ""

    @property
    def cpu(self) -> float:
        return self.user + self.system


class ChildFailed(Exception):
    pass


_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False

# sh starts the measured command in the background and prints its pid: the command is then
# forked from a ~1 MiB shell, not from this (much larger) Python process. Linux carries the
# pre-exec image's peak RSS into ru_maxrss, so a direct child of the benchmark would report
# at least the benchmark's own size. Being a subreaper, we inherit and reap the command.
_LAUNCH = 'o=$1 e=$2; shift 2; "$@" <&- >"$o" 2>"$e" & echo $!'


def _become_subreaper() -> None:
    global _subreaper
    if not _subreaper:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        _subreaper = True


def run_child(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Run ``argv``, timed; its peak RSS and CPU time come from ``os.wait4``.

    Peak RSS is that of the largest single process of the command's tree (a pipeline's
    biggest stage), measured from a ~1 MiB floor (the shell it is forked from).
    """
    _become_subreaper()
    args = [os.fspath(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="bench-out-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        started = time.perf_counter()
        launched = subprocess.run(
            ["sh", "-c", _LAUNCH, "sh", out, err, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=env,
            check=True,
        )
        _pid, status, usage = os.wait4(int(launched.stdout), 0)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            stderr = err.read_text(errors="replace").strip()
            raise ChildFailed(f"{' '.join(args)} exited {code}: {stderr[-2000:]}")
        stdout = out.read_text(errors="replace")
    return Run(seconds, usage.ru_maxrss, usage.ru_utime, usage.ru_stime, stdout)


def run_quiet(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run an untimed preparation step; raise with its stderr if it fails."""
    args = [os.fspath(a) for a in argv]
    res = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if res.returncode != 0:
        raise ChildFailed(f"{' '.join(args)}: {res.stderr.strip()[-2000:]}")
    return res.stdout


def packdist_argv(*args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    """``packdist ARGS`` with the interpreter running the benchmark (the venv's)."""
    return [sys.executable, "-m", "packdist", *args]


@dataclass
class Tally:
    """Repeated runs of one method: keeps the best time and the highest peak RSS."""

    name: str
    runs: list[Run] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.seconds)

    @property
    def peak_rss_mib(self) -> float:
        return max(r.peak_rss_kib for r in self.runs) / 1024


# ----------------------------------------------------------------- services on loopback


def json_document(text: str) -> dict[str, Any] | None:
    """The one JSON object a ``--json`` command printed, or None if it printed none."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    # /healthz only says whether it answers: an https:// one is not verified (an agent not
    # enrolled yet serves a temporary certificate nobody trusts)
    context = ssl._create_unverified_context() if url.startswith("https://") else None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildFailed(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.1)
    raise ChildFailed(f"{url} did not become healthy")


class PackdistSetup:
    """A site (``site serve``) with packages imported, and enrolled agents, all running.

    ``PackdistSetup(work)`` initialises the site's home; :meth:`create` imports versions
    (untimed), :meth:`serve` starts the site, :meth:`fresh_agent` enrolls and starts a
    server with an empty home, :meth:`distribute` times ``packdist distribute --wait``.

    ``tls``: the site and the agents serve HTTPS, as they do by default (the agents given
    only the site's URL and their token); otherwise ``--plain-http`` everywhere.
    """

    def __init__(self, work: Path, package: str = "bench", *, tls: bool = False) -> None:
        self.work = work
        self.package = package
        self.tls = tls
        self.site = work / "site"
        self.site_url = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.round = 0
        run_quiet(packdist_argv("--home", self.site, "site", "init", "--name", "bench"))

    def create(self, source: Path, version: str) -> None:
        run_quiet(
            packdist_argv(
                "--home",
                self.site,
                "package",
                "create",
                source,
                "--name",
                self.package,
                "--version",
                version,
            )
        )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def plain_flag(self) -> list[str]:
        return [] if self.tls else ["--plain-http"]

    def serve(self) -> None:
        listen = f"127.0.0.1:{free_port()}"
        self.site_url = f"{self.scheme}://{listen}"
        self._start(
            "site",
            ["--home", str(self.site), "site", "serve", "--listen", listen, *self.plain_flag],
            self.site_url,
        )

    def _start(self, name: str, args: list[str], url: str) -> None:
        log = self.work / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(packdist_argv(*args), stdout=out, stderr=out)
        self.procs[name] = proc
        wait_healthy(url, proc, log)

    def fresh_agent(
        self, *, site_url: str | None = None, advertise: Callable[[str], str] | None = None
    ) -> str:
        """A new server with an empty home, enrolled and running; returns its name.

        ``site_url``: the URL the agent dials for the site (default: the site's own);
        ``advertise``: maps the agent's listening URL to the URL the site is given for it
        (``server add --url``), e.g. a proxy in front of it.
        """
        self.round += 1
        name = f"dp{self.round}"
        listen = f"127.0.0.1:{free_port()}"
        url = f"{self.scheme}://{listen}"
        doc = json.loads(
            run_quiet(
                packdist_argv(
                    "--home",
                    self.site,
                    "server",
                    "add",
                    name,
                    "--url",
                    advertise(url) if advertise else url,
                    "--json",
                )
            )
        )
        self._start(
            name,
            [
                "--home",
                str(self.agent_home(name)),
                "agent",
                "serve",
                "--listen",
                listen,
                "--site",
                site_url or self.site_url,
                "--token",
                doc["token"],
                *self.plain_flag,
            ],
            url,
        )
        self._wait_enrolled(name)
        time.sleep(0.5)  # let its first heartbeat land
        return name

    def _wait_enrolled(self, name: str) -> None:
        """Until the agent says it enrolled: over TLS it serves the certificate the site
        signed from then on (a job sent before would be refused by the site's check)."""
        log = self.work / f"{name}.log"
        deadline = time.monotonic() + 30
        while "enrolled as " not in log.read_text(errors="replace"):
            if time.monotonic() >= deadline:
                raise ChildFailed(f"agent {name} did not enroll: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def cpu_seconds(self, name: str) -> float:
        """CPU time (user + system) the running process ``name`` (``site`` or an agent)
        has used so far, from ``/proc/PID/stat``."""
        fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def agent_home(self, name: str) -> Path:
        return self.work / name

    def distribute(self, name: str, version: str = "1", *, as_json: bool = False) -> Run:
        return run_child(
            packdist_argv(
                "--home",
                self.site,
                "distribute",
                f"{self.package}@{version}",
                "--to",
                name,
                "--wait",
                "--timeout",
                "600",
                *(["--json"] if as_json else []),
            )
        )

    def job(self, job_id: str) -> dict[str, object]:
        """``packdist job show JOB --json``."""
        doc: dict[str, object] = json.loads(
            run_quiet(packdist_argv("--home", self.site, "job", "show", job_id, "--json"))
        )
        return doc

    def agent_said(self, name: str, version: str) -> str:
        """The agent's summary of its last install of the version: "NAME@V: prepared in …
        (… local), fetched … (… on the wire) in …, finished in …", or "?"."""
        lines = [
            line.split(" INFO ", 1)[-1]
            for line in (self.work / f"{name}.log").read_text(errors="replace").splitlines()
            if f"{self.package}@{version}: prepared" in line
        ]
        return lines[-1] if lines else "?"

    def stop_agent(self, name: str) -> None:
        proc = self.procs.pop(name)
        _terminate([proc])

    def stop(self) -> None:
        _terminate(list(self.procs.values()))
        self.procs.clear()


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class RsyncDaemon:
    """``rsync --daemon`` on 127.0.0.1, one read-only module per ``modules`` entry."""

    def __init__(self, modules: dict[str, Path], work: Path) -> None:
        self.port = free_port()
        conf = work / "rsyncd.conf"
        text = f"use chroot = no\nport = {self.port}\npid file = {work / 'rsyncd.pid'}\n"
        for name, path in modules.items():
            text += f"[{name}]\n path = {path}\n read only = yes\n uid = root\n gid = root\n"
        conf.write_text(text)
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise ChildFailed("rsync daemon did not start")

    def url(self, module: str = "src", port: int | None = None) -> str:
        """The module's URL, optionally through another port (a proxy in front)."""
        return f"rsync://127.0.0.1:{port or self.port}/{module}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class CountingProxy:
    """A TCP relay on 127.0.0.1 that counts the payload bytes it carries each way.

    Threads in the benchmark's process: one accepting, two per connection (1 MiB reads).
    ``up``: bytes from the clients to ``target``; ``down``: bytes back. TCP/IP headers are
    not counted, only what the two ends wrote.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @classmethod
    def before(cls, url: str) -> CountingProxy:
        """A proxy for ``http://127.0.0.1:PORT``."""
        return cls(int(url.rsplit(":", 1)[1].rstrip("/")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            pair = (client, server)
            done = [0]  # directions finished, under self._lock
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up, pair, done), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        up: bool,
        pair: tuple[socket.socket, socket.socket],
        done: list[int],
    ) -> None:
        buf = bytearray(MIB)
        view = memoryview(buf)
        try:
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
                with self._lock:
                    if up:
                        self.up += n
                    else:
                        self.down += n
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            done[0] += 1
            if done[0] == 2:  # both directions finished: close the pair
                for s in pair:
                    if s in self._conns:
                        self._conns.remove(s)
                    s.close()

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()


# -------------------------------------------------------------------------------- tables


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False
) -> str:
    """Plain text (numbers right-aligned) or a Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(list(headers))]
    if markdown:
        out.append(
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if n else ("-" * (w + 2))
                for w, n in zip(widths, numeric, strict=True)
            )
            + "|"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%x").replace(",", ""))
    except ValueError:
        return False
    return True


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"
