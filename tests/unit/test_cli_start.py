"""What the command line loads before it does anything: the commands operators and scripts
run most (``distribute``, ``job``, ``status``) start in a fresh interpreter, so every module
they import is paid at each call. The HTTP client (aiohttp, ~130 ms to import here), the
event loop (asyncio, ~18 ms) and X.509 (~20 ms) are the agent's and the site server's, not
theirs; neither is cryptography (a manifest is signed and verified elsewhere), rich where
nothing is drawn, nor the site's other use cases and views (``Service`` gathers them all)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree

HEAVY = ("aiohttp", "asyncio", "cryptography.x509", "uvloop", "zstandard")
#: what none of the store's commands loads to write or read a job, drawn or not
NOT_FOR_A_JOB = (
    *HEAVY,
    "cryptography",
    "pyfastcdc",
    "packdist.core.signing",
    "packdist.service.facade",
    "packdist.service.clients",
    "packdist.service.hierarchy",
    "packdist.service.rollouts",
    "packdist.site.views",
)
#: what draws tables: not loaded where nothing is drawn (``--json``, or stderr not a terminal)
DRAWING = ("rich", "packdist.site.views")


# (``server`` loads X.509 itself: a token carries the fingerprint of the site's authority)
@pytest.mark.parametrize("module", ["packdist.cli.job_cmds", "packdist.cli.event_cmds"])
def test_the_commands_that_read_and_write_the_store_start_without_the_http_client(
    module: str,
) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "", f"{module} loads {loaded} (see tests/unit/test_cli_start.py)"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A site home with one server, one small package and a job (no site server runs)."""
    root = tmp_path_factory.mktemp("start")
    home = SiteHome.init(root / "site", "s")
    src = root / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    record, _ = import_tree(home, src, "one", "1.0")
    store = home.store()
    try:
        Service(store).add_server("dp1", "http://127.0.0.1:9", "hash-dp1", [], None, time.time())
        job = Service(store).distribute(record.id, ["dp1"], time.time())
    finally:
        store.close()
    return home.root, job


def loaded_by(home: Path, *argv: str) -> set[str]:
    """The modules loaded by ``packdist --home HOME ARGV…`` run in a fresh interpreter, its
    output a pipe (not a terminal), once it has done its work."""
    code = (
        "import sys\nfrom packdist.cli import main\n"
        f"try:\n    main({['--home', str(home), *argv]!r})\n"
        "except SystemExit:\n    pass\n"
        "sys.stdout.flush()\nsys.__stderr__.write('\\nMODULES ' + ' '.join(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    words = done.stderr.rpartition("MODULES ")[2]
    assert words, done.stderr
    return set(words.split())


def among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


def test_distribute_with_wait_writes_and_reads_its_job_without_cryptography_nor_drawing(
    home: tuple[Path, str],
) -> None:
    argv = ("distribute", "one@1.0", "--to", "dp1", "--wait", "--timeout", "0.2")
    modules = loaded_by(home[0], *argv)
    assert among(modules, (*NOT_FOR_A_JOB, *DRAWING)) == []
    assert "packdist.service.jobs" in modules  # it did write the job


@pytest.mark.parametrize(
    "argv",
    [
        ("job", "list", "--json"),
        ("job", "show", "JOB", "--json"),
        ("job", "wait", "JOB", "--timeout", "0.2"),
    ],
    ids=["job list", "job show", "job wait"],
)
def test_the_job_commands_without_a_table_load_neither_cryptography_nor_rich(
    home: tuple[Path, str], argv: tuple[str, ...]
) -> None:
    root, job = home
    modules = loaded_by(root, *(job if a == "JOB" else a for a in argv))
    assert among(modules, (*NOT_FOR_A_JOB, *DRAWING)) == []


def test_job_show_on_a_table_draws_it_without_cryptography_nor_the_site_s_other_use_cases(
    home: tuple[Path, str],
) -> None:
    modules = loaded_by(home[0], "job", "show", home[1])
    assert "rich.table" in modules  # drawn
    assert among(modules, NOT_FOR_A_JOB) == []


def test_status_in_json_reads_the_views_matrix_without_cryptography_nor_rich(
    home: tuple[Path, str],
) -> None:
    modules = loaded_by(home[0], "status", "--json")
    assert "packdist.site.views" in modules  # its document is the views'
    assert among(modules, ("cryptography", "rich", "packdist.service.facade", *HEAVY)) == []
