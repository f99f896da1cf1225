"""[Errors] proxy errors (404/503/500) with --error-target, --error-path and the defaults."""

from __future__ import annotations

import pytest

from .conftest import chp_check, echo_view, resp_view

RESP_HDRS = ("content-type", "content-encoding", "x-error-server")


@pytest.fixture(scope="module")
def error_dirs(tmp_path_factory):
    full = tmp_path_factory.mktemp("errpages-full")
    (full / "404.html").write_text("<html>CUSTOM 404'D</html>\n")
    (full / "error.html").write_text("<html>CUSTOM UNKNOWN ERROR</html>\n")
    only503 = tmp_path_factory.mktemp("errpages-503")
    (only503 / "503.html").write_text("<html>ONLY 503</html>\n")
    empty = tmp_path_factory.mktemp("errpages-empty")
    return {"full": str(full), "only503": str(only503), "empty": str(empty)}


def flags_for(kind, be, dirs):
    return {
        "error-target": ("--error-target", be.error.url + "/hub/error"),
        "error-target-slash": ("--error-target", be.error.url + "/hub/error/"),
        "error-path": ("--error-path", dirs["full"]),
        "error-path-503-only": ("--error-path", dirs["only503"]),
        "error-path-empty": ("--error-path", dirs["empty"]),
        "error-target-down": ("--error-target", be.dead_url + "/hub/error"),
        "default": (),
    }[kind]


def seed(pair, be):
    pair.add_route("/user/dead", be.dead_url)
    pair.add_route("/user/alice", be.a.url)


CASES = [
    # (name, method, target, expected status)
    ("no-route", "GET", "/nothing/here?q=1", 404),
    ("no-route-root", "GET", "/", 404),
    ("no-route-escapes", "GET", "/nothing/%20x~y*z'@(!)/%E7%A7%80?a=b&c=%2F+d", 404),
    ("no-route-post", "POST", "/nothing", 404),
    ("dead", "GET", "/user/dead/x?y=1", 503),
    ("dead-post", "POST", "/user/dead/api", 503),
    ("bad-escape", "GET", "/%", 500),
    ("bad-escape-utf8", "GET", "/user/alice/%E0%A4%A", 500),
]

KINDS = ["error-target", "error-target-slash", "error-path", "error-path-503-only",
         "error-path-empty", "error-target-down", "default"]


@pytest.mark.parametrize("name,method,target,code", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_error_responses(pf, be, error_dirs, kind, name, method, target, code):
    """[Errors] status kept; error target called as GET /{code}?url=<escaped url>, only
    content-type/-encoding copied; error-path {code}.html then error.html (text/html);
    error target down -> plain status text. Bundled default pages: status + type only."""
    pair = pf.get(*flags_for(kind, be, error_dirs))
    seed(pair, be)
    body = b"payload" if method == "POST" else None
    bundled = kind == "default" or (kind == "error-path-503-only" and code == 503)
    what = "none" if kind == "default" else "raw"
    v = pair.same(lambda p: resp_view(p.request(method, target, body=body), what, RESP_HDRS),
                  f"{method} {target}")
    chp_check(v["status"] == code, str(v))
    if kind.startswith("error-target") and kind != "error-target-down":
        chp_check(v["headers"]["content-type"] == "text/plain"
                  and v["headers"]["x-error-server"] is None, str(v))
    if bundled:
        chp_check(v["headers"]["content-type"] in ("text/html", None), str(v))


def test_error_target_request_shape(pf, be, error_dirs):
    """[Errors] the example of docs/chp-compatibility.md: /nothing/here?q=1 -> GET /hub/error/404?url=%2Fnothing%2Fhere%3Fq%3D1."""
    pair = pf.get(*flags_for("error-target", be, error_dirs))
    v = pair.same(lambda p: resp_view(p.get("/nothing/here?q=1"), "json", RESP_HDRS), "404")
    chp_check(v["body"]["path"] == "/hub/error/404?url=%2Fnothing%2Fhere%3Fq%3D1", str(v))


def test_upstream_error_status_not_rewritten(pf, be, error_dirs):
    """[Errors] an upstream 404/500 is relayed as is; the error target is only for proxy errors."""
    pair = pf.get(*flags_for("error-target", be, error_dirs))
    seed(pair, be)
    for st in (404, 500, 503):
        v = pair.same(lambda p: echo_view(p.get(f"/user/alice/x?_status={st}")),
                      f"upstream {st}")
        chp_check(v["x-echo-backend"] == "a" and v["status"] == st, str(v))


@pytest.mark.parametrize("kind", ["default", "error-target"])
def test_proxy_timeout(pf, be, error_dirs, kind):
    """[Command line] --proxy-timeout: a backend slower than the timeout -> 503 after ~timeout."""
    import time

    pair = pf.get("--proxy-timeout", "300", *flags_for(kind, be, error_dirs))
    pair.add_route("/user/slow", be.slow.url)
    pair.add_route("/user/alice", be.a.url)

    def go(p):
        t0 = time.monotonic()
        r = p.get("/user/slow/x")
        dt = time.monotonic() - t0
        v = resp_view(r, "none" if kind == "default" else "raw", RESP_HDRS)
        v["fast"] = dt < 1.5
        return v

    v = pair.same(go, "GET slow backend")
    chp_check(v["status"] == 503 and v["fast"], str(v))
    # a fast backend is unaffected
    v = pair.same(lambda p: echo_view(p.get("/user/alice/x?_sleep=50")), "GET fast backend")
    chp_check(v["status"] == 200, str(v))
