"""Headless Chromium for the browser journeys: Debian's `chromium` package driven by
Playwright for Python.

Playwright's wheel carries its own driver (a node binary) but no browser; we never run
`playwright install` (it would download a browser build) and point it at the system
Chromium instead. scripts/setup.sh installs both.

Screenshots (and the page's HTML) of a failed test go to tmp/test-artifacts/browser/;
the path is printed in the test's output.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tmp" / "test-artifacts" / "browser"

# One action or wait in the page (a click, a navigation, an element to appear).
STEP_TIMEOUT_MS = 60_000

# Chromium refuses to run as root with its sandbox on; the tests only open loopback pages
# they serve themselves. The other flags keep it off the network: no proxy from the
# environment, no background fetches (updates, safe browsing, metrics). Containers often
# have a 64 MiB /dev/shm, too small for Chromium's shared memory: use /tmp instead.
CHROMIUM_ARGS = [
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
]


def chromium_path() -> str:
    explicit = os.environ.get("HUBGATE_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium not found: run scripts/setup.sh (Debian package `chromium`) "
                "or set HUBGATE_CHROMIUM")


def artifact_path(nodeid: str, suffix: str) -> Path:
    """tmp/test-artifacts/browser/<test id><suffix>, the id made file-name safe."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1]).strip("_")
    return ARTIFACTS / f"{name}{suffix}"


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per test module (each test gets its own context)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright missing from the venv: run scripts/setup.sh")
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=args, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(request, chromium):
    """new_page(**context_options) -> a Page in a fresh browser context (own cookies).
    On test failure every page opened is screenshotted, and its HTML saved, before the
    test's other fixtures (deployments) are torn down."""
    contexts = []

    def make(**options):
        ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, **options)
        ctx.set_default_timeout(STEP_TIMEOUT_MS)
        contexts.append(ctx)
        return ctx.new_page()

    yield make

    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    for i, ctx in enumerate(contexts):
        for j, page in enumerate(ctx.pages):
            if failed:
                shot = artifact_path(request.node.nodeid, f"-failed-{i}-{j}.png")
                try:
                    page.screenshot(path=str(shot), full_page=True, timeout=15_000)
                    shot.with_suffix(".html").write_text(page.content())
                    print(f"\nscreenshot of the failed page ({page.url}): {shot}")
                except Exception as e:  # noqa: BLE001 - best effort on a broken page
                    print(f"\ncould not screenshot {page.url}: {e!r}")
        ctx.close()
