"""A real browser through hubgate: headless Chromium (Debian's package) driven by
Playwright, against a real JupyterHub and real single-user servers.

What `requests` cannot show: that JupyterHub's and JupyterLab's pages work in a browser
behind hubgate — cookies the browser accepts (hubgate's `__Host-` session cookie on the
auth journey), redirects it follows, and the websockets JupyterLab itself opens.

1. log in at the hub's own form, JupyterLab loads, a notebook cell runs print(6*7) and 42
   appears (the kernel websocket goes through hubgate: checked on the page's websockets);
2. with [auth]: hubgate's login through the test OpenID provider's own pages (the second
   factor included: without the one-time code the provider refuses), then the same
   notebook journey;
3. step-up and many groups: with a provider that adds the second factor only when asked,
   erin (300 project groups) is sent back to it once and then reaches JupyterLab with a small
   session cookie; carol (no second factor) ends on hubgate's "Second factor needed" page;
4. logout from the hub's own logout: the hub's cookies, hubgate's session (a copy of its
   cookie included) and the provider's session all end, and the page says what to do next;
5. hubgate's own 401/403/404/503 pages render readably (screenshot kept in
   tmp/test-artifacts/browser/, heading and explanation checked as displayed).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess

import pytest
import requests

from .chromium import artifact_path, chromium, new_page  # noqa: F401 - fixtures
from .harness import free_port, free_ports, hubgate_bin, tail, wait_until
from .oidc import IDP_PASSWORD, AuthSetup, OidcProvider, generate_key, hubgate_auth_toml

SPAWN_TIMEOUT_MS = 120_000  # login -> JupyterLab, the single-user server's start included
KERNEL_TIMEOUT_MS = 90_000  # a new notebook's kernel starts and answers


def hub_login(page, username: str):
    """JupyterHub's login form (DummyAuthenticator: any password)."""
    page.wait_for_url(re.compile(r".*/hub/login.*"))
    page.fill("#username_input", username)
    page.fill("#password_input", "e2e-browser")
    page.click("#login_submit")


def notebook_journey(page, public_url: str, username: str):
    """From the hub's redirect after login to 42 under a notebook cell."""
    kernel_sockets: list[str] = []
    page.on("websocket", lambda ws: kernel_sockets.append(ws.url))

    # JupyterHub's spawn page, then JupyterLab (Spawner.default_url = /lab).
    page.wait_for_url(re.compile(rf".*/user/{username}/lab.*"), timeout=SPAWN_TIMEOUT_MS)
    assert page.url.startswith(f"{public_url}/user/{username}/lab"), page.url
    card = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
    card.wait_for(state="visible", timeout=SPAWN_TIMEOUT_MS)
    card.click()

    # A new notebook. JupyterLab drops a run request made before the notebook's kernel
    # session exists (the prompt stays "[ ]"), so wait for the status bar's "| Idle" first.
    page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(
        timeout=KERNEL_TIMEOUT_MS
    )
    editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
    editor.wait_for(state="visible")
    editor.click()
    page.keyboard.type("print(6*7)")
    page.keyboard.press("Control+Enter")  # run, staying in the cell
    out = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
    out.wait_for(state="visible", timeout=KERNEL_TIMEOUT_MS)
    assert out.inner_text().strip() == "42", out.inner_text()

    ws_prefix = public_url.replace("http://", "ws://", 1) + f"/user/{username}/api/kernels/"
    channels = [u for u in kernel_sockets if u.startswith(ws_prefix) and "/channels" in u]
    assert channels, f"no kernel websocket through hubgate ({ws_prefix}…); saw {kernel_sockets}"


# ------------------------------------------------------------------ 1. plain login


@pytest.mark.timeout(300)
def test_browser_hub_login_and_notebook(deployment_factory, new_page):
    dep = deployment_factory("hubgate", "hub-managed")
    page = new_page()
    page.goto(f"{dep.public_url}/hub/")
    hub_login(page, "alice")
    notebook_journey(page, dep.public_url, "alice")


# ------------------------------------------------------------------ 2. with [auth]


@pytest.fixture
def idp_for_port(tmp_path):
    """idp_for_port(port) -> an OidcProvider that accepts hubgate's callback on `port`;
    `step_up_mfa=True`: one that adds the second factor only when asked (provider.mjs)."""
    started = []

    def make(port: int, step_up_mfa: bool = False) -> OidcProvider:
        p = OidcProvider(
            tmp_path,
            generate_key("e2e-browser-rs256"),
            access_token_ttl=900,
            redirect_uris=[f"http://127.0.0.1:{port}/_hubgate/oidc/callback"],
            step_up_mfa=step_up_mfa,
        )
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.mark.timeout(360)
def test_browser_oidc_login_then_notebook(deployment_factory, idp_for_port, new_page):
    port = free_port()
    idp = idp_for_port(port)
    # The harness's readiness probes need a token; the browser gets its own below.
    probe = idp.access_token("dave")
    dep = deployment_factory(
        "hubgate",
        "hub-managed",
        auth=AuthSetup(idp.issuer, probe, client_id="hubgate"),
        public_port=port,
    )
    page = new_page()

    # No credential: hubgate sends the browser to the provider's login page.
    page.goto(f"{dep.public_url}/hub/")
    page.wait_for_url(re.compile(re.escape(idp.issuer) + r"/interaction/.*"))
    assert page.locator("h1").inner_text().startswith("Test IdP"), page.content()[:500]

    # Password without the one-time code: the provider refuses (alice needs both).
    page.fill('input[name="login"]', "alice")
    page.fill('input[name="password"]', IDP_PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_load_state()
    assert "invalid credentials" in page.content(), page.content()[:500]

    # Again with the second factor.
    page.go_back()
    page.wait_for_url(re.compile(re.escape(idp.issuer) + r"/interaction/.*"))
    page.fill('input[name="login"]', "alice")
    page.fill('input[name="password"]', IDP_PASSWORD)
    page.fill('input[name="otp"]', "123456")
    page.click('button[type="submit"]')

    # Back through hubgate's callback to the hub, which asks for its own login.
    hub_login(page, "alice")
    cookies = {c["name"]: c for c in page.context.cookies(dep.public_url)}
    session = cookies.get("__Host-hubgate-session")
    assert session is not None, f"browser kept no hubgate session cookie: {list(cookies)}"
    assert session["httpOnly"] and session["secure"] and session["path"] == "/", session
    notebook_journey(page, dep.public_url, "alice")

    # The browser's requests carried the session cookie only; the hub's log never has it.
    assert session["value"] not in dep.hub_log.read_text(errors="replace")


# ------------------------------------------------------------------ 3. step-up and many groups


def idp_login(page, issuer: str, user: str, prompt: str | None = None, after: str = "") -> str:
    """The test provider's login form, second factor included (the provider decides whether
    it counts: with --step-up-mfa only when hubgate asked for it). `after`: the previous
    form's URL, so a second form is waited for rather than the first one found again.
    Returns this form's URL."""
    prefix = f"{issuer}/interaction/"
    page.wait_for_url(lambda u: u.startswith(prefix) and u != after)
    url = page.url
    heading = page.locator("h1").inner_text()
    if prompt is not None:
        assert heading == f"Test IdP (prompt: {prompt})", heading
    page.fill('input[name="login"]', user)
    page.fill('input[name="password"]', IDP_PASSWORD)
    page.fill('input[name="otp"]', "123456")
    page.click('button[type="submit"]')
    return url


CLIMATE = "project-hpc-00123-climate-modelling"


@pytest.mark.timeout(420)
def test_browser_step_up_with_300_groups_then_notebook(
    request, deployment_factory, idp_for_port, new_page
):
    """erin (300 project groups) signs in; the provider's first answer has no second factor,
    hubgate asks it again (prompt=login, acr_values) and the second answer has it; the session
    cookie the browser keeps is small, and JupyterLab works with it. carol, who has no second
    factor, ends on hubgate's page saying what to do next, not in a redirect loop."""
    port = free_port()
    idp = idp_for_port(port, step_up_mfa=True)
    probe = idp.access_token("dave", acr="https://refeds.org/profile/mfa")
    policy = f'\n[[auth.policies]]\nprefix = "/services/climate/"\naccess = "group"\ngroups = ["{CLIMATE}"]\n'
    dep = deployment_factory(
        "hubgate",
        "hub-managed",
        auth=AuthSetup(idp.issuer, probe, client_id="hubgate", extra=policy),
        public_port=port,
    )
    page = new_page()
    callbacks: list[int] = []
    page.on(
        "response",
        lambda r: callbacks.append(r.status) if "/_hubgate/oidc/callback" in r.url else None,
    )
    page.goto(f"{dep.public_url}/hub/")
    first = idp_login(page, idp.issuer, "erin", prompt="login")
    # hubgate found no second factor and asked again: the provider's login once more.
    idp_login(page, idp.issuer, "erin", prompt="login", after=first)
    hub_login(page, "erin")
    assert callbacks == [302, 302], callbacks
    cookies = {c["name"]: c for c in page.context.cookies(dep.public_url)}
    session = cookies.get("__Host-hubgate-session")
    assert session is not None, f"browser kept no hubgate session cookie: {list(cookies)}"
    assert len(session["name"]) + len(session["value"]) < 1024, len(session["value"])
    notebook_journey(page, dep.public_url, "erin")
    log = dep.hub_log.read_text(errors="replace")
    assert "step-up: asking" in log, "hubgate did not log the step-up"

    # carol: no second factor at all. One step-up, then a page (no loop).
    page = new_page()
    callbacks.clear()
    page.on(
        "response",
        lambda r: callbacks.append(r.status) if "/_hubgate/oidc/callback" in r.url else None,
    )
    page.goto(f"{dep.public_url}/hub/home")
    first = idp_login(page, idp.issuer, "carol")
    idp_login(page, idp.issuer, "carol", prompt="login", after=first)
    h1 = page.locator("h1")
    h1.wait_for(state="visible")
    shot = artifact_path(request.node.nodeid, "-step-up-failed.png")
    page.screenshot(path=str(shot), full_page=True)
    assert h1.inner_text().strip() == "403: Second factor needed", page.content()[:800]
    assert "What to do next" in page.locator("p").first.inner_text()
    assert page.locator("a", has_text="Try again").is_visible()
    assert callbacks == [302, 403], callbacks
    names = [c["name"] for c in page.context.cookies(dep.public_url)]
    assert "__Host-hubgate-session" not in names, names




# ------------------------------------------------------------------ 4. logout

# The README's recipe: the hub's /hub/logout clears the hub's cookies, then sends the browser
# to hubgate's logout instead of the hub's login page.
HUB_LOGOUT_TO_HUBGATE = """
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.handlers.login import LogoutHandler


class HubgateLogoutHandler(LogoutHandler):
    async def render_logout_page(self):
        self.redirect("/_hubgate/logout", permanent=False)


class HubgateLogoutAuthenticator(DummyAuthenticator):
    def get_handlers(self, app):
        return super().get_handlers(app) + [("/logout", HubgateLogoutHandler)]


c.JupyterHub.authenticator_class = HubgateLogoutAuthenticator
"""


@pytest.mark.timeout(300)
def test_browser_logout_from_the_hub_ends_every_session(deployment_factory, tmp_path, new_page):
    port = free_port()
    idp = OidcProvider(
        tmp_path,
        generate_key("e2e-logout-rs256"),
        access_token_ttl=900,
        redirect_uris=[f"http://127.0.0.1:{port}/_hubgate/oidc/callback"],
        logout_origin=f"http://127.0.0.1:{port}",
    )
    try:
        probe = idp.access_token("dave")
        dep = deployment_factory(
            "hubgate",
            "hub-managed",
            auth=AuthSetup(idp.issuer, probe, client_id="hubgate"),
            public_port=port,
            hub_config=HUB_LOGOUT_TO_HUBGATE,
        )
        page = new_page()
        # /hub/home is protected (unlike /hub/login): hubgate's login first, then the hub's.
        page.goto(f"{dep.public_url}/hub/home")
        idp_login(page, idp.issuer, "alice")
        hub_login(page, "alice")
        page.wait_for_url(re.compile(r".*/hub/home.*"))
        # (the hub's login cookie has Path=/hub/)
        cookies = {c["name"]: c["value"] for c in page.context.cookies(f"{dep.public_url}/hub/")}
        session = cookies["__Host-hubgate-session"]
        assert "jupyterhub-hub-login" in cookies, list(cookies)

        # The hub's logout → hubgate's → the provider's confirmation → hubgate's page.
        page.goto(f"{dep.public_url}/hub/logout")
        page.wait_for_url(re.compile(re.escape(idp.issuer) + r"/session/end.*"))
        page.click('button[name="logout"]')
        page.wait_for_url(re.compile(re.escape(dep.public_url) + r"/_hubgate/logged-out.*"))
        text = page.locator("body").inner_text()
        assert "You are logged out" in text, text
        assert page.locator("a", has_text="Log in again").count() == 1, page.content()

        left = {c["name"] for c in page.context.cookies(f"{dep.public_url}/hub/")}
        assert not left & {"__Host-hubgate-session", "jupyterhub-hub-login"}, left
        # A copy of the old session cookie is refused by hubgate (not by the hub).
        r = requests.get(
            f"{dep.public_url}/hub/api/user",
            headers={"Cookie": f"__Host-hubgate-session={session}"},
            timeout=10,
        )
        assert r.status_code == 401, (r.status_code, r.text[:300])
        # (hub-managed: hubgate's log is in the hub's)
        log = dep.hub_log.read_text(errors="replace")
        assert "logout: user=alice" in log and "decision=deny reason=revoked" in log
        # The provider's session is over too: the next visit asks for the password again.
        page.goto(f"{dep.public_url}/hub/home")
        page.wait_for_url(re.compile(re.escape(idp.issuer) + r"/interaction/.*"))
    finally:
        idp.stop()


# ------------------------------------------------------------------ 5. hubgate's own pages


class StandaloneHubgate:
    """hubgate alone (no hub, no error target: its built-in pages), with [auth] on."""

    def __init__(self, workdir, issuer: str):
        self.port, self.api_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        conf = workdir / "hubgate.toml"
        conf.write_text(hubgate_auth_toml(self.url, issuer))  # no client-id: no login page
        self.log = workdir / "hubgate.log"
        self._logf = open(self.log, "wb")
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.token)
        self.proc = subprocess.Popen(
            [
                str(hubgate_bin()),
                "--ip", "127.0.0.1", "--port", str(self.port),
                "--api-ip", "127.0.0.1", "--api-port", str(self.api_port),
                "--config", str(conf),
            ],  # fmt: skip
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"hubgate exited: {tail(self.log)}")
            with socket.create_connection(("127.0.0.1", self.api_port), timeout=1):
                pass
            return self.api("GET", "/api/routes").status_code == 200

        wait_until("hubgate's REST API", up, 30)

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(
            method,
            f"http://127.0.0.1:{self.api_port}{path}",
            headers={"Authorization": f"token {self.token}"},
            timeout=10,
            **kw,
        )

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._logf.close()


@pytest.fixture
def error_setup(tmp_path):
    idp = OidcProvider(tmp_path, generate_key("e2e-pages-rs256"))
    hg = None
    try:
        hg = StandaloneHubgate(tmp_path, idp.issuer)
        # alice's server is registered but nothing listens on its port: 503.
        dead = free_port()
        r = hg.api(
            "POST",
            "/api/routes/user/alice",
            json={"target": f"http://127.0.0.1:{dead}", "user": "alice"},
        )
        assert r.status_code == 201, r.text
        yield idp, hg
    finally:
        if hg is not None:
            hg.stop()
        idp.stop()


PAGES = [
    # (status, who (None: no credential), path, the heading shown)
    (401, None, "/hub/home", "401: Login required"),
    (403, "carol", "/hub/home", "403: Access denied"),  # no second factor
    (403, "bob", "/user/alice/lab", "403: Access denied"),  # not the owner
    (404, "alice", "/no/such/route", "404: Not Found"),
    (503, "alice", "/user/alice/lab", "503: Service Unavailable"),
]


@pytest.mark.timeout(180)
def test_browser_hubgate_error_pages(request, error_setup, new_page):
    idp, hg = error_setup
    tokens = {who: idp.access_token(who) for who in {p[1] for p in PAGES} if who}
    for status, who, path, heading in PAGES:
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        page = new_page(extra_http_headers=headers)
        resp = page.goto(f"{hg.url}{path}")
        what = f"{status} for {who or 'no credential'} at {path}"
        shot = artifact_path(request.node.nodeid, f"-{status}-{who or 'anonymous'}.png")
        page.screenshot(path=str(shot), full_page=True)
        print(f"\n{what}: screenshot {shot}")
        assert resp is not None and resp.status == status, f"{what}: got {resp and resp.status}"
        assert resp.headers.get("content-type", "").startswith("text/html"), resp.headers

        # Readable as displayed: the heading and an explanation are visible, in a
        # sans-serif font of a readable size, with the status in the tab's title.
        h1 = page.locator("h1")
        assert h1.is_visible() and h1.inner_text().strip() == heading, h1.inner_text()
        assert page.title().startswith(str(status)), page.title()
        para = page.locator("p").first
        assert para.is_visible(), page.content()
        text = para.inner_text().strip()
        assert len(text) >= 20 and "<" not in text and "{" not in text, text
        size = para.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
        assert size >= 12, f"{what}: explanation in {size}px"
        family = page.locator("body").evaluate("e => getComputedStyle(e).fontFamily")
        assert "sans-serif" in family, family
        # Nothing of hubgate's credentials or internals on the page.
        body = page.content()
        for tok in tokens.values():
            assert tok.split(".")[2] not in body
        assert f"127.0.0.1:{hg.api_port}" not in body
