"""[REST API] /api/routes: CHP vs hubgate side by side."""

from __future__ import annotations

import time

import pytest

from .conftest import (TS_RE, chp_check, documented_difference, resp_view)

HDRS = ("content-type",)


def api_view(p, method, path, body=None, token="default", headers=None, kind="auto"):
    return resp_view(p.api(method, path, body, headers=headers, token=token), kind, HDRS)


@pytest.fixture
def pair(pf):
    return pf.get()


def seed(pair, be):
    pair.add_route("/user/alice", be.a.url, user="alice", server_name="", jupyterhub=True)
    pair.add_route("/user/bob/", be.b.url, user="bob", server_name="gpu")
    pair.add_route("/", be.root.url, hub=True)


@pytest.mark.parametrize("path", ["/api/routes", "/api/routes/", "/api/routes?x=1"])
def test_get_all_routes(pair, be, path):
    """[REST API] GET /api/routes (and trailing slash): whole table incl. '/', extra keys, 200 JSON."""
    seed(pair, be)
    v = pair.same(lambda p: api_view(p, "GET", path, kind="json"), f"GET {path}")
    chp_check(v["status"] == 200 and set(v["body"]) == {"/user/alice", "/user/bob", "/"},
              f"GET {path}: {v}")


@pytest.mark.parametrize("path", ["/api/routes/user/alice", "/api/routes/user/alice/",
                                  "/api/routes/user/bob", "/api/routes/user/bob/",
                                  "/api/routes/user/alice?x=1", "/api/routes/user/%61lice",
                                  "/api/routes/user%2Falice"])
def test_get_one_route(pair, be, path):
    """[REST API] GET /api/routes/<path>: with and without trailing slash, escaped forms."""
    seed(pair, be)
    v = pair.same(lambda p: api_view(p, "GET", path, kind="json"), f"GET {path}")
    chp_check(v["status"] == 200, f"GET {path}: {v}")


@pytest.mark.parametrize("path", ["/api/routes/user/nobody", "/api/routes/user/Alice",
                                  "/api/routes/user", "/api/routes/user/alice/x",
                                  "/api/routes//user/alice"])
def test_get_one_missing(pair, be, path):
    """[REST API] GET one missing (and case-sensitive keys, no prefix match) -> 404 empty body."""
    seed(pair, be)
    v = pair.same(lambda p: api_view(p, "GET", path), f"GET {path}")
    chp_check(v["status"] == 404 and v["body"] == "", f"GET {path}: {v}")


def test_post_creates_201_empty(pair, be):
    """[REST API] POST -> 201 with an empty body, then GET shows the route."""
    v = pair.same(lambda p: api_view(p, "POST", "/api/routes/user/carol",
                                     {"target": be.a.url}), "POST new route")
    chp_check(v["status"] == 201 and v["body"] == "", f"POST: {v}")
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET after POST")


def test_post_replaces_and_drops_old_keys(pair, be):
    """[REST API] POST replaces a route wholesale: old extra keys are dropped."""
    pair.add_route("/user/alice", be.a.url, user="alice", old="x", server_name="")
    pair.add_route("/user/alice/", be.b.url, new=1)
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes/user/alice", kind="json"),
                  "GET after replacing POST")
    chp_check(set(v["body"]) == {"target", "new", "last_activity"}, str(v))


def test_extra_keys_echoed(pair, be):
    """[REST API] arbitrary extra JSON keys are stored and echoed; a posted last_activity is overwritten."""
    data = {"user": "zoë", "server_name": "", "jupyterhub": True, "n": 1.5, "i": 7,
            "none": None, "list": [1, "two", {"3": False}], "nested": {"a": {"b": []}},
            "last_activity": "1999-01-01T00:00:00.000Z", "host": "not-host-routing"}
    for p in pair:
        p.add_route("/user/zoe", be.a.url, **data)
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
    chp_check(v["body"]["/user/zoe"]["last_activity"] == "<TS>", str(v))


BAD_BODIES = [
    ("bad-json", "{bad"),
    ("empty", ""),
    ("truncated", '{"target": "http://x"'),
    ("null", "null"),
    ("list", "[1]"),
    ("empty-list", "[]"),
    ("string", '"http://127.0.0.1:1"'),
    ("number", "0"),
    ("false", "false"),
    ("true", "true"),
    ("missing-target", '{"user": "x"}'),
    ("empty-object", "{}"),
    ("int-target", '{"target": 5}'),
    ("null-target", '{"target": null}'),
    ("list-target", '{"target": ["http://x"]}'),
    ("trailing-garbage", '{"target": "http://x"} x'),
]


@pytest.mark.parametrize("name,body", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_post_bad_body(pair, name, body):
    """[REST API] invalid bodies -> 400 with CHP's exact body text; nothing stored."""
    v = pair.same(lambda p: api_view(p, "POST", "/api/routes/user/x", body), f"POST body {body!r}")
    chp_check(v["status"] == 400, str(v))
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "table after bad POST")


@pytest.mark.parametrize("body", ["{bad", "", '{"target": 5}', '{"target": "http://x"}'])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_post_json_checked_before_auth(pair, body, token):
    """[REST API] order of checks: invalid JSON -> 400 even without/with a wrong token; else 403."""
    v = pair.same(lambda p: api_view(p, "POST", "/api/routes/user/x", body, token=token),
                  f"POST {body!r} token={token}")
    chp_check(v["status"] == (400 if body in ("{bad", "") else 403), str(v))


@pytest.mark.parametrize("path", ["/api/routes", "/api/routes/"])
def test_post_without_path_creates_root(pair, be, path):
    """[REST API] POST /api/routes (no path) creates or replaces the root route '/'."""
    v = pair.same(lambda p: api_view(p, "POST", path, {"target": be.root.url}), f"POST {path}")
    chp_check(v["status"] == 201, str(v))
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
    chp_check(list(v["body"]) == ["/"], str(v))


@pytest.mark.parametrize("path", ["/api/routes/user/alice", "/api/routes/user/alice/"])
def test_delete_existing_then_missing(pair, be, path):
    """[REST API] DELETE -> 204 (removed), then 404, both empty bodies; trailing slash normalised."""
    seed(pair, be)
    v = pair.same(lambda p: api_view(p, "DELETE", path), f"DELETE {path}")
    chp_check(v["status"] == 204 and v["body"] == "", str(v))
    v = pair.same(lambda p: api_view(p, "DELETE", path), f"DELETE {path} again")
    chp_check(v["status"] == 404 and v["body"] == "", str(v))
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")


def test_delete_root_with_trailing_slash(pair, be):
    """[REST API] DELETE /api/routes/ deletes the '/' route (204)."""
    seed(pair, be)
    v = pair.same(lambda p: api_view(p, "DELETE", "/api/routes/"), "DELETE /api/routes/")
    chp_check(v["status"] == 204, str(v))
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
    chp_check("/" not in v["body"], str(v))


def test_delete_without_path_answers(pair, be):
    """[REST API] DELETE /api/routes (no path): CHP hangs (bug); hubgate must answer 4xx within 2 s.
    Documented deliberate difference."""
    chp = pair.chp.api("DELETE", "/api/routes", timeout=1.0)
    chp_check(chp is None, f"CHP answered DELETE /api/routes: {chp}")
    documented_difference("DELETE /api/routes without a path")
    t0 = time.monotonic()
    r = pair.hg.api("DELETE", "/api/routes", timeout=2.0)
    assert r is not None, "hubgate did not answer DELETE /api/routes within 2 s"
    assert 400 <= r.status < 500, f"hubgate DELETE /api/routes -> {r.status} {r.text!r}"
    assert time.monotonic() - t0 < 2.0
    # and the table is intact
    assert pair.hg.routes() == {}


def test_get_invalid_escape_answers_400(pair, be):
    """Corrections: GET /api/routes/%ZZ never answers in CHP; hubgate answers 400.
    Documented deliberate difference."""
    chp = pair.chp.api("GET", "/api/routes/%ZZ", timeout=1.0)
    chp_check(chp is None, f"CHP answered GET /api/routes/%ZZ: {chp}")
    documented_difference("GET /api/routes/%ZZ")
    r = pair.hg.api("GET", "/api/routes/%ZZ", timeout=2.0)
    assert r is not None, "hubgate did not answer GET /api/routes/%ZZ within 2 s"
    assert r.status == 400, f"hubgate GET /api/routes/%ZZ -> {r.status} {r.text!r}"


ESCAPES = [
    # (POST path, expected decoded key, GET/DELETE forms that must find it)
    ("/user/b%40r%20x/", "/user/b@r x", ["/user/b%40r%20x", "/user/b@r%20x/"]),
    ("/user/%E7%A7%80%E6%A8%B9", "/user/秀樹", ["/user/%E7%A7%80%E6%A8%B9/"]),
    ("/user/~TestJH", "/user/~TestJH", ["/user/%7ETestJH"]),
    ("/user/has@", "/user/has@", ["/user/has%40"]),
    ("/@/space%20word/user/x", "/@/space word/user/x", ["/%40/space%20word/user/x/"]),
    ("/user%2Fslash", "/user/slash", ["/user/slash"]),
    ("/has%2520pct", "/has%20pct", ["/has%2520pct"]),
    ("/user/a+b", "/user/a+b", ["/user/a%2Bb"]),
    ("user/noslash", "/user/noslash", ["/user/noslash"]),
]


@pytest.mark.parametrize("post,key,others", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escaped_keys(pair, be, post, key, others):
    """[REST API] keys are stored decoded; escaped GET/DELETE forms find them."""
    path = "/api/routes" + ("" if post.startswith("/") else "/") + post
    v = pair.same(lambda p: api_view(p, "POST", path, {"target": be.a.url}), f"POST {path}")
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
    chp_check(list(v["body"]) == [key], f"stored keys {list(v['body'])} != [{key!r}]")
    for o in others:
        pair.same(lambda p: api_view(p, "GET", "/api/routes" + o, kind="json"), f"GET {o}")
    last = others[-1]
    v = pair.same(lambda p: api_view(p, "DELETE", "/api/routes" + last), f"DELETE {last}")
    chp_check(v["status"] == 204, str(v))


def test_double_slash_trimming(pair, be):
    """Corrections: POST trims two trailing slashes, GET/DELETE one: //double// -> key //double."""
    pair.same(lambda p: api_view(p, "POST", "/api/routes//double//", {"target": be.a.url}),
              "POST //double//")
    v = pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
    chp_check(list(v["body"]) == ["//double"], str(v))
    for path in ["/api/routes//double/", "/api/routes//double//", "/api/routes/double"]:
        pair.same(lambda p: api_view(p, "GET", path, kind="json"), f"GET {path}")
    v = pair.same(lambda p: api_view(p, "DELETE", "/api/routes//double//"), "DELETE //double//")
    chp_check(v["status"] == 404, str(v))
    v = pair.same(lambda p: api_view(p, "DELETE", "/api/routes/double"), "DELETE /double")
    chp_check(v["status"] == 404, str(v))
    v = pair.same(lambda p: api_view(p, "DELETE", "/api/routes//double"), "DELETE //double")
    chp_check(v["status"] == 204, str(v))


AUTH = [
    ("missing", None),
    ("wrong", "token nope"),
    ("bearer", "Bearer {t}"),
    ("Token-capital", "Token {t}"),
    ("token", "token {t}"),
    ("token-2-spaces", "token  {t}"),
    ("token-tab", "token\t{t}"),
    ("xtoken", "xtoken {t}"),
    ("token-extra", "token {t} extra"),
    ("prefix-garbage", "Basic abc token {t}"),
    ("token-no-space", "token{t}"),
    ("token-prefix-of-real", "token {t}x"),
    ("empty", ""),
]


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/routes", None),
    ("GET", "/api/routes/user/alice", None),
    ("POST", "/api/routes/user/new", '{"target": "http://127.0.0.1:9"}'),
    ("DELETE", "/api/routes/user/bob", None),
], ids=["get-all", "get-one", "post", "delete"])
@pytest.mark.parametrize("name,header", AUTH, ids=[a[0] for a in AUTH])
def test_auth(pair, be, method, path, body, name, header):
    """[REST API] auth: regex /token\\s+(\\S+)/ unanchored, case-sensitive; failure = 403 empty body."""
    seed(pair, be)
    headers = {} if header is None else {"Authorization": header.format(t=pair.chp.token)}
    v = pair.same(lambda p: api_view(p, method, path, body, token=None, headers=headers),
                  f"{method} {path} Authorization={header!r}")
    ok = name in ("token", "token-2-spaces", "token-tab", "xtoken", "token-extra",
                  "prefix-garbage")
    if not ok:
        chp_check(v["status"] == 403 and v["body"] == "", f"{name}: {v}")
    else:
        chp_check(v["status"] in (200, 201, 204), f"{name}: {v}")
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "table afterwards")


@pytest.mark.parametrize("path", ["/api/routes", "/api/routes/user/alice", "/api/routes/"])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("authed", [False, True])
def test_unsupported_methods_405(pair, be, method, path, authed):
    """[REST API] PUT/PATCH/HEAD/OPTIONS -> 405 'Method not supported', even without auth."""
    seed(pair, be)
    body = '{"target": "http://127.0.0.1:9"}' if method in ("PUT", "PATCH") else None
    v = pair.same(lambda p: api_view(p, method, path, body, token="default" if authed else None),
                  f"{method} {path}")
    chp_check(v["status"] == 405, str(v))
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "table afterwards")


@pytest.mark.parametrize("path", ["/api", "/api/", "/", "/api/routesX", "/api/route",
                                  "/foo", "/api/routesX/user/alice", "/API/routes",
                                  "/_chp_healthz", "/metrics"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PUT"])
@pytest.mark.parametrize("authed", [False, True])
def test_api_not_found(pair, method, path, authed):
    """[REST API] paths outside ^/api/routes(/.*)?$ -> 404 'Not Found' (before method/auth checks)."""
    body = "{bad" if method == "POST" else None
    v = pair.same(lambda p: api_view(p, method, path, body, token="default" if authed else None),
                  f"{method} {path}")
    chp_check(v["status"] == 404, str(v))


def test_last_activity_format(pair, be):
    """[REST API] last_activity is an ISO string YYYY-MM-DDTHH:MM:SS.mmmZ set at POST time."""
    before = time.time()
    seed(pair, be)
    for p in pair:
        for key, route in p.routes().items():
            la = route.get("last_activity")
            assert isinstance(la, str) and TS_RE.match(la), \
                f"{p.name}: {key} last_activity={la!r} not YYYY-MM-DDTHH:MM:SS.mmmZ"
            t = time.mktime(time.strptime(la[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            assert abs(t - before) < 5, f"{p.name}: last_activity {la} not ~now (UTC)"


INACTIVE = [
    ("future-z", "2999-01-01T00:00:00.000Z"),
    ("future-date-only", "2999-01-01"),
    ("past-z", "2000-01-01T00:00:00.000Z"),
    ("past-no-ms", "2000-01-01T00:00:00Z"),
    ("past-offset", "2000-01-01T00:00:00%2B00:00"),
    ("plus-is-space", "2000-01-01T00:00:00+00:00"),
    ("future-offset", "2999-01-01T00:00:00%2B02:00"),
    ("past-date-only", "2000-01-01"),
    ("xyz", "xyz"),
    ("epoch", "1700000000"),
    ("empty", ""),
    ("space", "2999-01-01%2000:00:00"),
    ("bad-month", "2020-13-01T00:00:00Z"),
]


@pytest.mark.parametrize("param", ["inactive_since", "inactiveSince"])
@pytest.mark.parametrize("name,value", INACTIVE, ids=[i[0] for i in INACTIVE])
def test_inactive_since(pair, be, param, name, value):
    """[REST API] ?inactive_since / ?inactiveSince filtering; invalid -> 400 exact body."""
    seed(pair, be)
    path = f"/api/routes?{param}={value}"
    v = pair.same(lambda p: api_view(p, "GET", path), f"GET {path}")
    if name.startswith("future"):
        chp_check(v["status"] == 200 and len(v["body"]) == 3, str(v))
    elif name.startswith("past"):
        chp_check(v["status"] == 200 and v["body"] == {}, str(v))
    elif name in ("xyz", "epoch"):
        chp_check(v["status"] == 400
                  and v["body"] == f"Invalid datestamp '{value}' must be ISO8601.", str(v))


def test_inactive_since_between(pair, be):
    """[REST API] inactive_since = the newer route's stamp returns only the older route (strict <)."""
    pair.add_route("/user/old", be.a.url)
    time.sleep(0.05)
    pair.add_route("/user/new", be.a.url)

    def q(p):
        since = p.last_activity("/user/new")
        return resp_view(p.api("GET", f"/api/routes?inactive_since={since}"), "json", HDRS)

    v = pair.same(q, "inactive_since between two routes")
    chp_check(list(v["body"]) == ["/user/old"], str(v))


def test_api_without_token_configured(pf, be):
    """[Command line] CONFIGPROXY_AUTH_TOKEN unset -> API unauthenticated."""
    pair = pf.get(token=None)
    v = pair.same(lambda p: api_view(p, "POST", "/api/routes/user/x", {"target": be.a.url},
                                     token=None), "POST without token")
    chp_check(v["status"] == 201, str(v))
    pair.same(lambda p: api_view(p, "GET", "/api/routes", token=None, kind="json"), "GET all")
    pair.same(lambda p: api_view(p, "GET", "/api/routes",
                                 headers={"Authorization": "token whatever"}, token=None,
                                 kind="json"), "GET all with random token")


UNPROXYABLE = [
    # (what, route path on the wire, target): CHP stores each and fails per request (500) or
    # never; hubgate refuses them at POST with a 400 that says why.
    ("not-a-url", "/user/x", "not a url"),
    ("ftp", "/user/x", "ftp://127.0.0.1/x"),
    ("file", "/user/x", "file:///etc/passwd"),
    ("no-scheme", "/user/x", "127.0.0.1:8888"),
    ("userinfo", "/user/x", "http://u:p@127.0.0.1:1/"),
    ("dot-dot-key", "/user/%2e%2e/hub", "http://127.0.0.1:1/"),
    ("dot-key", "/user/a/%2E", "http://127.0.0.1:1/"),
    ("nul-key", "/user/a%00b", "http://127.0.0.1:1/"),
]


@pytest.mark.parametrize("what,path,target", UNPROXYABLE, ids=[c[0] for c in UNPROXYABLE])
def test_post_unproxyable_route_refused(pair, be, what, path, target):
    """[REST API] a route that could never be proxied: CHP answers 201 and stores it;
    hubgate answers 400 with the reason and stores nothing. Documented deliberate difference."""
    seed(pair, be)
    pair.add_route("/hub", be.root.url)
    chp = pair.chp.api("POST", "/api/routes" + path, {"target": target})
    chp_check(chp is not None and chp.status == 201, f"CHP POST {path} {target}: {chp}")
    documented_difference(f"POST of an unproxyable route ({what})")
    before = pair.hg.routes()
    r = pair.hg.api("POST", "/api/routes" + path, {"target": target})
    assert r is not None and r.status == 400, f"hubgate POST {path} {target}: {r}"
    # The reason, in plain text as CHP's other 400s.
    assert "target" in r.text or "route path" in r.text, r.text
    assert pair.hg.routes() == before, "hubgate stored a refused route"
    # `/user/%2e%2e/hub` must not replace `/hub` (it canonicalises to it).
    assert pair.hg.route("/hub")["target"] == be.root.url


def test_jupyterhub_style_routes_still_accepted(pair, be):
    """[REST API] everything JupyterHub posts is stored alike by both (names with @, unicode,
    unix sockets, https targets)."""
    for path, target in [
        ("/user/has@/", be.a.url),
        ("/user/%E7%A7%80%E6%A8%B9/", be.a.url),
        ("/user/a.b-c_d/", "https://127.0.0.1:1/user/a.b-c_d/"),
        ("/user/sock/", "http+unix://%2Ftmp%2Fnothing.sock/user/sock/"),
    ]:
        v = pair.same(lambda p: api_view(p, "POST", "/api/routes" + path, {"target": target}),
                      f"POST {path}")
        chp_check(v["status"] == 201, str(v))
    pair.same(lambda p: api_view(p, "GET", "/api/routes", kind="json"), "GET all")
