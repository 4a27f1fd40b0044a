"""What a new user could not find out (issue 17, item 3), each tried through the real
``packdist`` command and real processes, as a new user would."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness as h
from tests.conftest import PACKDIST, run_packdist

START = "start `packdist site serve`"


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> h.Site:
    """A site with a package and a server that nothing serves: its site server never ran."""
    root = tmp_path_factory.mktemp("idle")
    site = h.make_site(root)
    site.create_package(h.make_tree(root / "tree"), "app", "1.0")
    site.add_server("dp1", "https://127.0.0.1:1")
    return site


def test_distribute_with_no_site_server_ever_run_says_to_start_one(idle: h.Site) -> None:
    proc = idle.cli("distribute", "app@1.0", "--to", "dp1")
    assert f"packdist: no site server has run yet: {START}" in proc.stderr.splitlines()
    doc = json.loads(idle.cli("distribute", "app@1.0", "--to", "dp1", "--json").stdout)
    assert doc["site_server"] == {
        "running": False,
        "last_seen": None,
        "message": f"no site server has run yet: {START}",
    }
    assert doc["instructions"][0]["server"] == "dp1"  # what the contract fixes is all there


def test_job_show_wait_and_status_with_no_site_server_promise_no_next_attempt(
    idle: h.Site,
) -> None:
    job = idle.json("distribute", "app@1.0", "--to", "dp1")["job"]
    shown = idle.cli("job", "show", job).stdout
    assert "no site server has run yet: start `packdist site serve`" in shown
    assert "no site server" in shown.split("dp1", 1)[1]  # its row: no "in 13s"
    doc = idle.json("job", "show", job)
    assert doc["site_server"]["running"] is False
    assert {"id", "package", "state", "instructions"} <= set(doc)

    waited = idle.cli("job", "wait", job, "--timeout", "0.3", check=False)
    assert waited.returncode == 75
    lines = waited.stderr.splitlines()
    assert f"packdist: no site server has run yet: {START}" == lines[0]
    assert lines[-1] == (
        f"packdist: timed out after 0.3s; the job goes on: `packdist job wait {job}` again"
    )
    assert "Traceback" not in waited.stderr

    status = idle.cli("status")
    assert status.stderr.splitlines() == [f"packdist: no site server has run yet: {START}"]
    doc = idle.json("status")
    assert doc["site_server"]["running"] is False
    assert doc["cells"]["app@1.0"]["dp1"]["detail"] == "waiting for a site server to run"


def test_commands_after_the_site_server_stopped_say_since_when_it_was_seen(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path)
    site.create_package(h.make_tree(tmp_path / "tree"), "app", "1.0")
    site.add_server("dp1", "https://127.0.0.1:1")
    site.start()
    try:
        running = site.cli("distribute", "app@1.0", "--to", "dp1")
        assert "no site server" not in running.stderr
        assert site.json("status")["site_server"]["running"] is True
    finally:
        site.stop()
    proc = site.cli("distribute", "app@1.0", "--to", "dp1")
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("packdist: no site server has been seen for "), line
    assert line.endswith(f"s: {START}"), line
    assert site.json("status")["site_server"]["last_seen"] is not None


def test_job_wait_says_so_when_the_site_server_stops_while_it_waits(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    site.create_package(h.make_tree(tmp_path / "tree"), "app", "1.0")
    site.add_server("dp1", "https://127.0.0.1:1")  # never reached: the job goes on
    site.start()
    try:
        job = site.json("distribute", "app@1.0", "--to", "dp1", "--json")["job"]
        waiting = subprocess.Popen(
            [*PACKDIST, "--home", str(site.home), "job", "wait", job, "--timeout", "6"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
    finally:
        site.stop()
    _, err = waiting.communicate(timeout=30)
    lines = err.splitlines()
    told = [x for x in lines if x.startswith("packdist: no site server has been seen for ")]
    assert len(told) == 1, err  # said once, while it waited, not before
    assert lines[-1].startswith("packdist: timed out after 6s; the job goes on"), err


def _one_line_refusal(proc: subprocess.CompletedProcess[str], words: str) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert words in lines[0], lines[0]
    return lines[0]


def test_a_server_cannot_be_enrolled_as_site_the_name_of_the_site_among_a_clients_sources(
    idle: h.Site,
) -> None:
    before = idle.json("server", "list", "--json")
    proc = idle.cli("server", "add", "Site", "--url", "https://127.0.0.1:9", check=False)
    _one_line_refusal(proc, "server name 'Site' is reserved")
    assert idle.json("server", "list", "--json") == before


def _serve(*args: str, home: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return run_packdist(home, *args, check=False, timeout=timeout)


TOKEN = "pdt_" + "A" * 43


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("agent", "serve", "--listen", "127.0.0.1:1", "--site", "localhost:8700"),
            "--site / PACKDIST_SITE 'localhost:8700' is not a URL: give https://HOST:PORT",
        ),
        (
            ("agent", "serve", "--listen", "127.0.0.1", "--site", "https://localhost:8700"),
            "--listen '127.0.0.1' must be HOST:PORT with a port between 1 and 65535",
        ),
        (
            ("agent", "serve", "--listen", "127.0.0.1:1", "--site", "https://h:x"),
            "its port is not a number",
        ),
    ],
)
def test_agent_serve_with_a_bad_site_url_or_listen_address_fails_at_once(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    proc = _serve(*args, "--token", TOKEN, home=tmp_path / "agent")
    _one_line_refusal(proc, words)


def test_site_serve_with_a_listen_address_without_port_fails_at_once(idle: h.Site) -> None:
    proc = _serve("site", "serve", "--listen", "127.0.0.1", home=idle.home)
    _one_line_refusal(proc, "--listen must be HOST:PORT")


def test_site_serve_on_a_port_in_use_says_so_in_one_line_and_never_listening(
    idle: h.Site,
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = _serve("site", "serve", "--listen", f"127.0.0.1:{port}", home=idle.home)
    _one_line_refusal(proc, f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert idle.json("status")["site_server"]["last_seen"] is None  # nothing started


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    """A running site and one running agent, dp1."""
    root = tmp_path_factory.mktemp("served")
    cluster = h.start_cluster(root, ["dp1"])
    try:
        h.wait_until(lambda: cluster.site.server_seen("dp1"), 30, message="dp1 enrolled")
        yield cluster
    finally:
        cluster.close()


def test_a_second_site_server_on_a_sqlite_home_is_refused(served: h.Cluster) -> None:
    site = served.site
    port = h.free_port()
    proc = _serve("site", "serve", "--listen", f"127.0.0.1:{port}", home=site.home)
    line = _one_line_refusal(proc, "another site server is running on this home (pid ")
    assert str(site.proc.pid if site.proc else "?") in line
    assert site.healthy()


def test_a_second_agent_on_an_agent_home_is_refused(served: h.Cluster) -> None:
    agent = served.agents["dp1"]
    proc = _serve(
        "agent",
        "serve",
        "--listen",
        f"127.0.0.1:{h.free_port()}",
        "--site",
        served.site.url,
        "--token",
        agent.token,
        home=agent.home,
    )
    line = _one_line_refusal(proc, "another agent is running on this home (pid ")
    assert str(agent.proc.pid if agent.proc else "?") in line
    assert agent.healthy()


def test_a_cancelled_cell_says_cancelled_by_operator_not_its_last_error(
    served: h.Cluster,
) -> None:
    site = served.site
    site.add_server("gone", "https://127.0.0.1:1")  # nothing answers there
    tree = site.home.parent / "tree-cancel"
    site.create_package(h.make_tree(tree), "cancelme", "1.0")
    job = site.distribute("cancelme@1.0", ["gone"])
    h.wait_until(
        lambda: site.job(job)["instructions"][0]["last_error"], 30, message="a failed attempt"
    )
    site.cli("job", "cancel", job)
    doc = site.job(job)
    cause = doc["instructions"][0]["last_error"]
    assert cause and "cancelled" not in cause  # the JSON keeps the cause
    shown = site.cli("job", "show", job).stdout
    assert "cancelled by operator" in shown
    assert cause not in shown
    status = site.cli("status").stdout
    assert "cancelme@1.0 on gone: cancelled (job" in status
    assert "cancelled by operator" in status.split("cancelme@1.0 on gone", 1)[1]
    code, page = site.operator_get(f"/jobs/{job}")
    assert code == 200
    assert b"cancelled by operator" in page
    site.cli("server", "remove", "gone")


def test_a_server_that_stops_heartbeating_gets_one_went_offline_event(
    served: h.Cluster,
) -> None:
    site, agent = served.site, served.agents["dp1"]

    def offline_events() -> list[str]:
        return [
            e["message"]
            for e in site.json("events", "--limit", "200")
            if e["server"] == "dp1" and "went offline" in e["message"]
        ]

    assert offline_events() == []
    agent.stop()
    try:
        h.wait_until(lambda: offline_events(), 30, message="dp1 went offline")
        events = offline_events()
        assert len(events) == 1
        assert events[0].startswith("server dp1 went offline: no heartbeat for ")
    finally:
        agent.start()
    h.wait_until(lambda: site.server_seen("dp1"), 30, message="dp1 back")
    assert len(offline_events()) == 1


def test_an_agent_with_a_revoked_token_is_shown_at_the_site_and_backs_off(
    served: h.Cluster,
) -> None:
    site, agent = served.site, served.agents["dp1"]
    site.create_package(h.make_tree(site.home.parent / "tree-token"), "tok", "1.0")
    agent.stop()
    job = site.distribute("tok@1.0", ["dp1"])
    old = agent.token
    new = site.json("server", "token", "dp1")["token"]
    assert new != old
    assert site.job(job)["state"] == "active"  # nothing of dp1's work was cancelled
    h.wait_until(  # the running site drops the old token it kept (within 5 s)
        lambda: "no longer valid: refused from now on" in site.log_tail(200),
        15,
        message="the old token dropped",
    )

    agent.start()  # with the old token: refused
    try:

        def refused() -> str | None:
            found = {s["name"]: s for s in site.json("server", "list")["servers"]}
            return found["dp1"]["refused"]

        h.wait_until(refused, 30, message="dp1's refusal shown")
        words = refused()
        assert words is not None
        assert words.startswith("dp1: an agent tried to enroll with a wrong token at ")
        assert words in site.cli("server", "list").stdout
        assert words in site.cli("job", "show", job).stdout
        code, page = site.operator_get("/")  # the dashboard: a notice, and its events
        assert code == 200 and page.count(words.encode()) == 2
        code, body = site.operator_get("/api/overview")
        assert code == 200 and json.loads(body)["refused_agents"] == [words]
        h.wait_until(
            lambda: agent.log_tail(200).count("trying again, less and less often") >= 1,
            20,
            message="the agent said why",
        )
        time.sleep(3)  # 2 s later: one more refusal, said nowhere again
        log = agent.log_tail(400)
        assert log.count("the site refuses this agent: ") == 1, log
        assert log.count("site refused this agent") == 0
    finally:
        agent.stop()
    agent.token = new
    agent.start()
    assert site.wait_job(job, 60) == 0  # the new token: the work goes on


def test_a_home_enrolled_as_one_server_refuses_another_servers_token(
    served: h.Cluster,
) -> None:
    site, agent = served.site, served.agents["dp1"]
    other = site.add_server("dp9", f"https://127.0.0.1:{h.free_port()}")
    agent.stop()
    try:
        proc = _serve(
            "agent",
            "serve",
            "--listen",
            agent.listen,
            "--site",
            site.url,
            "--token",
            other,
            home=agent.home,
            timeout=60,
        )
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[-1] == (
            f"packdist: this agent's home ({agent.home}) is enrolled as dp1, but the token is"
            " dp9's: give dp1's token, or start dp9's agent with a home of its own (--home)"
        )
    finally:
        agent.start()
        site.cli("server", "remove", "dp9")


def test_agent_serve_takes_its_token_from_a_file_out_of_the_process_list(
    served: h.Cluster, tmp_path: Path
) -> None:
    agent = served.agents["dp1"]
    token_file = tmp_path / "token"
    token_file.write_text(agent.token + "\n")
    agent.stop()
    token = agent.token
    try:
        agent.token = ""
        agent.proc = None
        command = [a for a in agent.command() if a not in ("--token", "")]
        start = agent.log_path.stat().st_size
        with agent.log_path.open("ab") as log:
            agent.proc = subprocess.Popen(
                [*command, "--token-file", str(token_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        agent.wait_ready()
        with open(f"/proc/{agent.proc.pid}/cmdline", "rb") as f:
            assert token.encode() not in f.read()
        h.wait_until(
            lambda: b"enrolled as dp1" in agent.log_path.read_bytes()[start:],
            30,
            message="enrolled with the token of the file",
        )
    finally:
        agent.stop()
        agent.token = token
        agent.start()
    both = _serve(
        "agent",
        "serve",
        "--site",
        served.site.url,
        "--token",
        token,
        "--token-file",
        str(token_file),
        home=tmp_path / "other",
    )
    _one_line_refusal(both, "give the token once: --token (or its variable) or --token-file")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("server", "add", "dpx", "--url", "dpx.example:8701"), "must start with http://"),
        (("site", "add-child", "br", "--url", "br.example:8700"), "must start with http://"),
        (
            ("site", "serve", "--listen", "127.0.0.1:1", "--parent", "hq:8700", "--token", TOKEN),
            "--parent 'hq:8700' must be a URL starting with https://",
        ),
    ],
)
def test_a_url_without_scheme_is_refused_at_once_wherever_a_url_is_taken(
    idle: h.Site, args: tuple[str, ...], words: str
) -> None:
    _one_line_refusal(_serve(*args, home=idle.home), words)
