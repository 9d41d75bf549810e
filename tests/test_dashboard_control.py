"""The dashboard as a management UI, in a real browser: Debian's chromium driven by Playwright.

An operator signs in with the admin key (or, with no admin key configured, manages from this
machine without signing in) and drains, resumes, adds and removes backends by clicks; every
result is checked through the admin API, never through the page alone. The hostile side (other
sites' pages, forged tokens, DNS rebinding) is in ``tests/test_hostile_browsers.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from nexus_core.testing import FakeBackend, FakeLlamaCpp
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config, needs_chromium, nexus_serve

ADMIN_KEY = "nxa-dashboard-operator-key-0123456789abcdef"
ADMIN_ENV = "NEXUS_ADMIN_KEY_DASHBOARD_TEST"

pytestmark = needs_chromium


@pytest.fixture
def fakes() -> Iterator[list[FakeBackend]]:
    alpha = FakeBackend("alpha", models=["llama3.2:3b"])
    beta = FakeBackend("beta", models=["qwen2.5:7b"])
    with alpha.running(), beta.running():
        yield [alpha, beta]


@pytest.fixture
def keyed(fakes: list[FakeBackend], monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """A server with an admin key: the controls need signing in, even from this machine."""
    monkeypatch.setenv(ADMIN_ENV, ADMIN_KEY)
    config = gateway_config(*fakes)
    config["auth"] = {"admin_key_env": ADMIN_ENV}
    with running_server(config) as running:
        yield running


@pytest.fixture
def open_server(fakes: list[FakeBackend]) -> Iterator[RunningServer]:
    """A server without an admin key: the admin API and the controls answer this machine."""
    with running_server(gateway_config(*fakes)) as running:
        yield running


def admin(server: RunningServer) -> httpx.Client:
    """The admin API, asked the right way (with the key: it is ignored when none is set)."""
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def status_of(server: RunningServer, name: str) -> str | None:
    """A backend's status as the admin API reports it (None: no such backend)."""
    with admin(server) as api:
        for backend in api.get("/admin/backends").json()["data"]:
            if backend["name"] == name:
                return str(backend["status"])
    return None


def card(page: Any, name: str) -> Any:
    return page.locator(f'article.card[data-backend="{name}"]')


def sign_in(page: Any, key: str = ADMIN_KEY) -> None:
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in to manage").click()


def test_an_operator_signs_in_drains_resumes_and_signs_out_by_clicks(
    browser: Any, keyed: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(keyed.url + "/")
    # A reader: the page, no controls, a sign-in form.
    expect(card(page, "alpha")).to_be_visible()
    expect(card(page, "alpha").get_by_role("button", name="Drain alpha")).to_be_hidden()
    assert page.locator("form#act").count() == 0
    sign_in(page, "not-the-key")
    expect(page.get_by_text("That is not the admin key")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "nexus_session"]

    page.goto(keyed.url + "/")
    sign_in(page)
    expect(page.locator(".notice")).to_contain_text("Signed in")
    session = next(c for c in context.cookies() if c["name"] == "nexus_session")
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/"
    assert ADMIN_KEY not in str(context.cookies())
    assert ADMIN_KEY not in page.content()

    card(page, "alpha").get_by_role("button", name="Drain alpha").click()
    expect(page.get_by_text("Draining alpha")).to_be_visible()
    assert status_of(keyed, "alpha") == "draining"
    expect(card(page, "alpha").locator(".pill")).to_have_text("draining")

    card(page, "alpha").get_by_role("button", name="Resume alpha").click()
    expect(page.get_by_text("Resumed alpha")).to_be_visible()
    assert status_of(keyed, "alpha") == "healthy"

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in to manage")).to_be_visible()
    expect(card(page, "alpha").get_by_role("button", name="Drain alpha")).to_be_hidden()
    assert not [c for c in context.cookies() if c["name"] == "nexus_session"]
    context.close()


def test_from_this_machine_without_an_admin_key_a_backend_is_added_and_removed_by_clicks(
    browser: Any, open_server: RunningServer
) -> None:
    extra = FakeBackend("gamma", models=["mistral:7b"])
    with extra.running():
        context = browser.new_context()
        page = context.new_page()
        page.goto(open_server.url + "/")
        # No sign-in: the loopback rule, as for the admin API.
        expect(page.get_by_text("on this machine (no admin key set)")).to_be_visible()
        form = page.locator("form#add-backend")
        form.get_by_label("Name").fill("gamma")
        form.get_by_label("URL").fill(extra.url)
        form.get_by_label("Type").select_option("generic")
        form.get_by_role("button", name="Add backend").click()
        expect(page.get_by_text("Added backend gamma")).to_be_visible()
        assert status_of(open_server, "gamma") == "healthy"
        expect(card(page, "gamma")).to_be_visible()
        expect(page.locator("#matrix")).to_contain_text("mistral:7b")

        # A refused add says why, on the page.
        form = page.locator("form#add-backend")
        form.get_by_label("Name").fill("bad name!")
        form.get_by_label("URL").fill(extra.url)
        form.get_by_role("button", name="Add backend").click()
        expect(page.locator(".notice.failed")).to_contain_text("name")

        card(page, "gamma").get_by_role("button", name="Remove gamma").click()
        expect(page.get_by_text("Removed backend gamma")).to_be_visible()
        assert status_of(open_server, "gamma") is None
        expect(card(page, "gamma")).to_have_count(0)
        context.close()


def test_the_controls_work_without_javascript(browser: Any, keyed: RunningServer) -> None:
    extra = FakeBackend("gamma", models=["mistral:7b"])
    with extra.running():
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        page.goto(keyed.url + "/")
        sign_in(page)
        card(page, "beta").get_by_role("button", name="Drain beta").click()
        expect(page.get_by_text("Draining beta")).to_be_visible()
        assert status_of(keyed, "beta") == "draining"
        # The page reloads itself every few seconds without JavaScript: the forms to fill are
        # also on a page that does not, and come back to it.
        page.get_by_role("link", name="does not").click()
        assert page.locator('meta[http-equiv="refresh"]').count() == 0
        form = page.locator("form#add-backend")
        form.get_by_label("Name").fill("gamma")
        form.get_by_label("URL").fill(extra.url)
        form.get_by_role("button", name="Add backend").click()
        expect(page.get_by_text("Added backend gamma")).to_be_visible()
        assert page.url == keyed.url + "/dashboard/manage"
        assert status_of(keyed, "gamma") == "healthy"
        context.close()


def test_a_reader_without_javascript_still_reads_and_the_page_reloads(
    browser: Any, keyed: RunningServer
) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(keyed.url + "/")
    expect(card(page, "alpha")).to_contain_text("llama3.2:3b")
    assert re.search(r'http-equiv="refresh" content="\d+"', page.content())
    # Not signed in: no controls to see, and the page of forms asks to sign in.
    expect(card(page, "alpha").get_by_role("button", name="Drain alpha")).to_be_hidden()
    assert httpx.get(keyed.url + "/dashboard/manage").status_code == 401
    context.close()


# -- models: load, unload, migrate -------------------------------------------------------------


@pytest.fixture
def llama_servers() -> Iterator[RunningServer]:
    """Two llama-servers in router mode (fakes): ``m`` loaded on ``a``, available on ``b``."""
    first = FakeLlamaCpp("a", ["m", "n"], router=True, loaded=["m"], load_seconds=0.3)
    second = FakeLlamaCpp("b", ["m"], router=True, load_seconds=0.3)
    with first.running(), second.running():
        config = gateway_config(
            {"name": "a", "url": first.url, "type": "llamacpp"},
            {"name": "b", "url": second.url, "type": "llamacpp"},
        )
        with running_server(config) as running:
            wait_until(lambda: state(running, "b", "m") == "unloaded")
            yield running


def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def state(server: RunningServer, backend: str, model: str) -> str | None:
    """A model's state on a backend, as the admin API's fleet view says (None: not listed)."""
    with admin(server) as api:
        for entry in api.get("/admin/fleet").json()["data"]:
            if entry["name"] == backend:
                return next((m["state"] for m in entry["models"] if m["id"] == model), None)
    return None


def operations(server: RunningServer) -> list[dict[str, Any]]:
    with admin(server) as api:
        return list(api.get("/admin/operations").json()["data"])


def test_a_model_is_migrated_between_two_servers_by_clicks(
    browser: Any, llama_servers: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(llama_servers.url + "/")
    matrix = page.locator("#matrix")
    expect(matrix.get_by_role("button", name="Unload m on a")).to_be_visible()
    expect(matrix.get_by_role("button", name="Load m on b")).to_be_visible()

    form = page.locator("form#migrate")
    form.get_by_label("Model").fill("m")
    form.get_by_label("From").select_option("a")
    form.get_by_label("To").select_option("b")
    form.get_by_role("button", name="Migrate").click()
    expect(page.locator(".notice")).to_contain_text("Migrating m from a to b")

    # The operations panel follows it live, to its end.
    row = page.locator("#operations tr[data-operation]").first
    expect(row).to_contain_text("migrate")
    expect(row).to_contain_text("a → b")
    expect(row).to_contain_text("succeeded", timeout=20_000)
    # Checked through the admin API: the operation, and where the model is now.
    (done,) = operations(llama_servers)
    assert (done["kind"], done["model"], done["backend"], done["target"]) == (
        "migrate",
        "m",
        "a",
        "b",
    )
    assert done["state"] == "succeeded"
    assert done["origin"] == "admin"
    wait_until(lambda: state(llama_servers, "b", "m") == "loaded")
    wait_until(lambda: state(llama_servers, "a", "m") == "unloaded")
    # And the matrix shows it without a reload.
    expect(matrix.get_by_role("button", name="Load m on a")).to_be_visible(timeout=10_000)
    expect(matrix.get_by_role("button", name="Unload m on b")).to_be_visible()
    context.close()


def test_a_model_is_loaded_and_unloaded_from_the_matrix_by_clicks(
    browser: Any, llama_servers: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(llama_servers.url + "/")
    matrix = page.locator("#matrix")
    matrix.get_by_role("button", name="Load m on b").click()
    expect(page.locator(".notice")).to_contain_text("Loading m on b")
    wait_until(lambda: state(llama_servers, "b", "m") == "loaded")
    expect(matrix.get_by_role("button", name="Unload m on b")).to_be_visible(timeout=10_000)

    matrix.get_by_role("button", name="Unload m on b").click()
    expect(page.locator(".notice")).to_contain_text("Unloading m on b")
    wait_until(lambda: state(llama_servers, "b", "m") == "unloaded")
    kinds = [(op["kind"], op["backend"], op["state"]) for op in operations(llama_servers)]
    assert kinds[1] == ("load", "b", "succeeded")
    assert kinds[0][:2] == ("unload", "b")
    context.close()


# -- several workers -----------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_a_session_holds_on_every_worker_and_ends_on_all(tmp_path: Path) -> None:
    """``nexus serve --workers 2``: the session is in the shared state store, so whichever
    worker a new connection reaches knows it; signing out ends it for both."""
    backend = FakeBackend("a", models=["llama3"])
    with backend.running():
        config = tmp_path / "nexus.toml"
        config.write_text(
            f"""
[discovery]
enabled = false

[state]
backend = "sqlite"
path = "{tmp_path / "state.sqlite3"}"

[auth]
admin_key_env = "{ADMIN_ENV}"

[[backends]]
name = "a"
url = "{backend.url}"
""",
            encoding="utf-8",
        )
        with nexus_serve(config, "--workers", "2", env={ADMIN_ENV: ADMIN_KEY}) as (_, url):

            def fresh(method: str, path: str, **kwargs: Any) -> httpx.Response:
                # A new connection each time: the kernel hands it to either worker.
                with httpx.Client(base_url=url, timeout=10, headers={"Origin": url}) as client:
                    return client.request(method, path, **kwargs)

            signed = fresh("POST", "/dashboard/sign-in", data={"key": ADMIN_KEY})
            assert signed.status_code == 303, signed.text
            cookies = {"Cookie": f"nexus_session={signed.cookies['nexus_session']}"}
            page = fresh("GET", "/", headers=cookies).text
            found = re.search(r'name="csrf" value="([^"]+)"', page)
            assert found is not None
            csrf = found.group(1)
            for index in range(8):
                verb = "drain" if index % 2 == 0 else "resume"
                answer = fresh(
                    "POST", f"/dashboard/backends/a/{verb}", data={"csrf": csrf}, headers=cookies
                )
                assert answer.status_code == 303, (index, answer.text)
                # The notice is shown by whichever worker serves the next page.
                shown = fresh("GET", "/", headers=cookies).text
                assert ("Draining a" if verb == "drain" else "Resumed a") in shown
            out = fresh("POST", "/dashboard/sign-out", data={"csrf": csrf}, headers=cookies)
            assert out.status_code == 303
            for _ in range(4):
                after = fresh(
                    "POST", "/dashboard/backends/a/drain", data={"csrf": csrf}, headers=cookies
                )
                assert after.status_code == 401
