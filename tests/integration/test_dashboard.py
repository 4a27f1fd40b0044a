"""The dashboard in a real browser (headless Chromium driven by Playwright) against a real
site and real agents: log in through the form, see a server failing with its cause, and see
it become installed when the server comes back, without reloading the page.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package;
``make test`` installs both (it never downloads Playwright's own browsers). Screenshots go to
``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import require

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MB = 1024 * 1024

Make = Callable[..., h.Cluster]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A fresh Chromium page (its own profile directory), or a skip saying what is missing."""
    if not CHROMIUM.exists():
        require(
            "browser", f"{CHROMIUM} is missing: install Debian's chromium (make test does, as root)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("browser", "the playwright Python package is missing: pip install -e '.[dev]'")
        raise
    profile = tempfile.mkdtemp(prefix="packdist-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1000},
                # the site's authority is not in the browser's store (an operator imports
                # it, or takes the certificate the first time, as here)
                ignore_https_errors=True,
            )
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tree(tmp_path_factory.mktemp("dash") / "src", {"data/blob.bin": 2 * MB}, seed=5)


def test_dashboard_shows_failing_server_cause_then_installed_after_it_returns(
    cluster: Make, tree: Path, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    c = cluster("dp1", "dp2")
    site, dp2 = c.site, c.agents["dp2"]
    assert site.operator_password.startswith("pdo_"), "site init printed no operator password"
    dp2.stop()  # unplugged before the job: its attempts fail with "connection refused"
    site.create_package(tree, "app", "1.0")
    job_id = site.distribute("app@1.0", ["dp1", "dp2"])
    ARTIFACTS.mkdir(exist_ok=True)

    # Log in through the form, as an operator does.
    page.goto(f"{site.url}/")
    assert "/login" in page.url
    page.fill("#password", "pdo_wrong")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("Wrong password")
    page.fill("#password", site.operator_password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")

    job = page.locator(f"#job-{job_id}")
    dp1_row = job.locator('tr[data-server="dp1"]')
    dp2_row = job.locator('tr[data-server="dp2"]')
    expect(dp1_row.locator("td.state")).to_have_text("installed", timeout=20_000)
    expect(dp2_row.locator("td.error")).to_contain_text("connection refused", timeout=20_000)
    expect(dp2_row.locator("td.state")).to_have_text("retrying")
    cell = page.locator('tr[data-package="app@1.0"] td[data-server="dp2"]')
    expect(cell).to_have_attribute("data-word", "retrying")
    expect(cell.locator(".why")).to_contain_text("connection refused")
    expect(page.locator('li.event[data-kind="failure"]').first).to_contain_text(
        "connection refused"
    )
    # offline once its last heartbeat (before it stopped) is more than 10 s old
    expect(page.locator('.servers tr[data-server="dp2"]')).to_contain_text(
        "offline", timeout=15_000
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-failing.png"), full_page=True)

    # From here on the page is never reloaded: a mark set now must survive to the end.
    page.evaluate("window.__notReloaded = true")
    dp2.start()
    expect(dp2_row).to_have_attribute("data-state", "installed", timeout=30_000)
    expect(dp2_row.locator("td.error")).to_have_text("")
    expect(cell).to_have_attribute("data-word", "installed", timeout=10_000)
    expect(job).to_have_attribute("data-state", "succeeded")
    expect(page.locator('.servers tr[data-server="dp2"]')).to_contain_text("app@1.0")
    expect(page.locator('li.event[data-kind="installed"]')).to_have_count(2)
    expect(page.locator("#conn")).to_contain_text("live")
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

    # The job's own page tells the same story, oldest failure to install.
    page.click(f"#job-{job_id} h3 a")
    page.wait_for_url(f"{site.url}/jobs/{job_id}")
    timeline = page.locator("ol.events")
    expect(timeline).to_contain_text("connection refused")
    expect(timeline).to_contain_text("installed on dp2")
    html = page.content()
    for agent in c.agents.values():
        assert agent.token not in html
    assert site.operator_password not in html
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

    # Logging out ends the session: the dashboard asks for the password again.
    page.click("form.logout button")
    page.wait_for_url(f"{site.url}/login")
    page.goto(f"{site.url}/")
    assert "/login" in page.url


def test_an_operator_cancels_a_job_from_its_page_and_the_event_names_them(
    tmp_path: Path, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    site = h.make_site(tmp_path)
    site.add_server("dp1", f"http://127.0.0.1:{h.free_port()}")  # never answers
    tree = h.make_tree(tmp_path / "src", {"a.txt": 10}, seed=3)
    try:
        site.start()
        site.create_package(tree, "app", "1.0")
        job_id = site.distribute("app@1.0", ["dp1"])
        olga = site.json("operator", "add", "olga", "--role", "operator")["password"]
        page.goto(f"{site.url}/login?next=/jobs/{job_id}")
        page.fill("#password", olga)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site.url}/jobs/{job_id}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[data-post$='/cancel']")
        expect(page.locator(".action-result")).to_have_text(
            "1 instruction cancelled by olga", timeout=10_000
        )
        expect(page.locator(f"#job-{job_id}")).to_have_attribute(
            "data-state", "cancelled", timeout=10_000
        )
        page.screenshot(path=str(ARTIFACTS / "dashboard-job-cancelled.png"), full_page=True)
        events = site.json("events", "--job", job_id)
        assert [e["by"] for e in events if e["kind"] == "cancelled"] == ["olga"]
    finally:
        site.close()


def _no_clipped_column(page: Any) -> None:
    """Nothing wider than the window at 1024 px: no table cut off, no page that scrolls
    sideways (a wide table scrolls inside its own box)."""
    overflow = page.evaluate(
        """() => {
          const wide = document.documentElement.scrollWidth > window.innerWidth + 1;
          const cut = [...document.querySelectorAll("table")].filter(t => {
            const box = t.closest(".scroll") || t.parentElement;
            return t.getBoundingClientRect().right > window.innerWidth + 1
              && getComputedStyle(box).overflowX === "visible";
          }).map(t => t.className || t.parentElement.tagName);
          return {wide, cut};
        }"""
    )
    assert overflow == {"wide": False, "cut": []}, overflow


def test_the_fleet_pages_at_1024_px_act_for_an_operator_and_show_a_viewer_no_buttons(
    tmp_path: Path, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1024, "height": 900})
    site = h.make_site(tmp_path)
    site.add_server("dp1", f"http://127.0.0.1:{h.free_port()}", groups=["web"])  # never answers
    site.add_server("dp2", f"http://127.0.0.1:{h.free_port()}", groups=["web"])
    try:
        site.start()
        site.create_package(h.make_tree(tmp_path / "src", {"a.txt": 10}, seed=3), "app", "1.0")
        olga = site.json("operator", "add", "olga", "--role", "operator")["password"]
        vera = site.json("operator", "add", "vera", "--role", "viewer")["password"]
        page.goto(f"{site.url}/login?next=/packages/app@1.0")
        page.fill("#password", olga)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site.url}/packages/app@1.0")
        page.select_option("select[name=target]", "group:web")
        page.click("button[data-post$='/distribute']")
        expect(page.locator(".action-result")).to_contain_text(
            "app@1.0 to dp1, dp2 by olga", timeout=10_000
        )
        # the page updates itself: both servers show up, retrying, with the cause
        expect(page.locator("main#live")).to_contain_text("connection refused", timeout=15_000)
        _no_clipped_column(page)
        rollout = site.json("rollout", "create", "app@1.0", "--to", "dp1,dp2", "--waves", "1,2")
        page.goto(f"{site.url}/rollouts/{rollout['rollout']}")
        page.click("button[data-post$='/pause']")
        expect(page.locator(".action-result")).to_contain_text(
            f"rollout {rollout['rollout']} paused by olga", timeout=10_000
        )
        _no_clipped_column(page)
        page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-1024.png"), full_page=True)
        for path in ("/servers", "/servers/dp1", "/search?q=dp", "/"):
            page.goto(f"{site.url}{path}")
            _no_clipped_column(page)
        page.click("form.logout button")
        page.goto(f"{site.url}/login?next=/packages/app@1.0")
        page.fill("#password", vera)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site.url}/packages/app@1.0")
        assert page.locator("button[data-post]").count() == 0  # a viewer: no buttons
        page.goto(f"{site.url}/rollouts/{rollout['rollout']}")
        assert page.locator("button[data-post]").count() == 0
        page.screenshot(path=str(ARTIFACTS / "dashboard-viewer-1024.png"), full_page=True)
    finally:
        site.close()
