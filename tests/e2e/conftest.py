"""pytest fixtures and hooks for the end-to-end tests (the harness is in harness.py)."""

from __future__ import annotations

import shutil

import psutil
import pytest

from .harness import SESSION_TAG, TAG_VAR, Deployment


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chp: baseline case run against configurable-http-proxy"
    )


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def deployment_factory(request, tmp_path_factory):
    """deployment_factory(kind, mode, auth=None, public_port=None, hub_config="") -> a
    started Deployment, torn down after the test (`auth`: an oidc.AuthSetup to run hubgate
    with [auth]; `hub_config`: lines added to jupyterhub_config.py)."""
    created: list[Deployment] = []

    def make(kind: str, mode: str, auth=None, public_port=None, hub_config="") -> Deployment:
        workdir = tmp_path_factory.mktemp(f"e2e-{kind}-{mode}")
        d = Deployment(
            kind, mode, workdir, auth=auth, public_port=public_port, hub_config=hub_config
        )
        created.append(d)
        d.start()
        return d

    yield make

    for d in created:
        killed = d.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is None or failed.failed:
            print(f"\n--- logs of the {d.kind}/{d.mode} deployment in {d.dir} ---")
            print(d.logs())
        if killed:
            print(f"teardown had to SIGKILL: {killed}")
    # Keep tmp dirs small: the single-user servers' homes are not worth keeping.
    for d in created:
        shutil.rmtree(d.dir / "home", ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers():
    """Belt and braces: at session end, kill anything any e2e test left behind."""
    yield
    leftovers = [
        p
        for p in psutil.process_iter(["pid"])
        if _has_session_tag(p)
    ]
    for p in leftovers:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _has_session_tag(p: psutil.Process) -> bool:
    try:
        return p.environ().get(TAG_VAR, "").startswith(SESSION_TAG)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False

