"""[Forwarded URL] prefix handling and [Request headers]: CHP vs hubgate."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import chp_check, documented_difference, echo_view

PREFIX_FLAGS = {
    "default": (),
    "no-prepend": ("--no-prepend-path",),
    "no-include": ("--no-include-prefix",),
    "neither": ("--no-prepend-path", "--no-include-prefix"),
}

TARGETS = {
    "bare": "",
    "slash": "/",
    "prefix": "/prefix",
    "prefix-slash": "/prefix/",
    "prefix-query": "/prefix?tq=1",
    "query-only": "/?tq=1&tr=2",
    "escaped": "/pre%20fix/b%40r",
}

REQS = [
    "/user/alice",
    "/user/alice/",
    "/user/alice/rest/of/it?x=1",
    "/user/alice?x=1&y=2",
    "/user/alice/b%40r/b%20r/rest",
    "/user/alice/b@r/rest",
    "/user/alice/%E7%A7%80?q=%20+",
    "/user/alice//double",
    "/user/alicex",
]


@pytest.mark.parametrize("req", REQS)
@pytest.mark.parametrize("tkind", list(TARGETS))
@pytest.mark.parametrize("fkind", list(PREFIX_FLAGS))
def test_forwarded_url(pf, be, fkind, tkind, req):
    """[Forwarded URL] upstream path = urlJoin(target path+query, req.url) with include-prefix /
    prepend-path semantics; URI encoding preserved."""
    pair = pf.get(*PREFIX_FLAGS[fkind])
    pair.add_route("/user/alice", be.a.url + TARGETS[tkind])
    pair.add_route("/", be.root.url)
    pair.same(lambda p: echo_view(p.get(req)), f"GET {req} via target {TARGETS[tkind]!r}")


@pytest.mark.parametrize("fkind", list(PREFIX_FLAGS))
def test_forwarded_url_root_route(pf, be, fkind):
    """[Forwarded URL] prefix handling for the '/' route."""
    pair = pf.get(*PREFIX_FLAGS[fkind])
    pair.add_route("/", be.root.url + "/hub")
    for req in ["/", "/x/y?z=1", "/hub/home"]:
        pair.same(lambda p: echo_view(p.get(req)), f"GET {req}")


def test_reference_prefix_examples(pf, be):
    """[Forwarded URL] the example of docs/chp-compatibility.md: /bar -> http://h/foo forwards /bar/rest?x=1 as /foo/bar/rest?x=1."""
    pair = pf.get()
    pair.add_route("/bar", be.a.url + "/foo")
    v = pair.same(lambda p: echo_view(p.get("/bar/rest?x=1")), "GET /bar/rest?x=1")
    chp_check(v["seen"]["path"] == "/foo/bar/rest?x=1", str(v))


def test_no_include_prefix_decoded_prefix(pf, be):
    """Corrections: --no-include-prefix cuts the raw URL by the decoded prefix length in CHP
    (/user/%61lice/foo -> /ce/foo); hubgate strips properly (-> /foo). Documented difference."""
    pair = pf.get("--no-include-prefix")
    pair.add_route("/user/alice", be.a.url)
    chp = echo_view(pair.chp.get("/user/%61lice/foo"))
    chp_check(chp["seen"]["path"] == "/ce/foo", str(chp))
    documented_difference("--no-include-prefix with an escaped prefix")
    hg = echo_view(pair.hg.get("/user/%61lice/foo"))
    assert hg.get("seen", {}).get("path") == "/foo", f"hubgate: {hg}"


def test_host_routing_no_include_prefix(pf, be):
    """[Forwarded URL] bug: --host-routing + --no-include-prefix cuts too much in CHP
    (/user/alice/lab?x=1 -> /tgt); hubgate strips only the path part. Documented difference."""
    pair = pf.get("--host-routing", "--no-include-prefix")
    pair.add_route("/alice.hub.example.org/user/alice", be.a.url + "/tgt")
    host = "alice.hub.example.org"
    chp = echo_view(pair.chp.get("/user/alice/lab?x=1", host=host))
    chp_check(chp["seen"]["path"] == "/tgt", str(chp))
    documented_difference("--host-routing with --no-include-prefix")
    hg = echo_view(pair.hg.get("/user/alice/lab?x=1", host=host))
    assert hg.get("seen", {}).get("path") == "/tgt/lab?x=1", f"hubgate: {hg}"


def test_host_routing_include_prefix_forwarding(pf, be):
    """[Host routing; Forwarded URL] host routing with default prefix flags forwards the raw URL (no host in path)."""
    pair = pf.get("--host-routing")
    pair.add_route("/alice.hub.example.org/user/alice", be.a.url + "/tgt")
    v = pair.same(lambda p: echo_view(p.get("/user/alice/lab?x=1", host="alice.hub.example.org")),
                  "GET with Host")
    chp_check(v["seen"]["path"] == "/tgt/user/alice/lab?x=1", str(v))


# ----------------------------------------------------------------- headers ([Request headers])

HEADER_CASES = {
    "plain": {},
    "xff-given": {"X-Forwarded-For": "1.2.3.4"},
    "xff-list": {"X-Forwarded-For": "1.2.3.4, 5.6.7.8"},
    "xfp-given": {"X-Forwarded-Proto": "https"},
    "xfport-given": {"X-Forwarded-Port": "443"},
    "xfh-given": {"X-Forwarded-Host": "outer.example.org"},
    "all-given": {"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https",
                  "X-Forwarded-Port": "443", "X-Forwarded-Host": "hub.example.org"},
    "custom": {"X-Custom": "v1", "Cookie": "a=b; c=d", "Authorization": "token abc",
               "Origin": "http://origin.example", "User-Agent": "compat/1",
               "Accept-Encoding": "gzip"},
    "host-with-port": {"Host": "hub.example.org:8443"},
    "host-no-port": {"Host": "hub.example.org"},
    "host-https-port": {"Host": "hub.example.org:443"},
    "trailer-hdr": {"Trailer": "X-Foo"},
    "keep-alive-hdr": {"Connection": "keep-alive", "Keep-Alive": "timeout=5"},
    "connection-close": {"Connection": "close"},
    "dup-header": {"X-Dup": "1"},
}

HEADER_FLAGS = {
    "default": (),
    "no-x-forward": ("--no-x-forward",),
    "custom-header": ("--custom-header", "X-A: 1", "--custom-header", "X-Forwarded-Proto: https",
                      "--custom-header", " k2 : host:123 ", "--custom-header", "X-Custom:override",
                      "--custom-header", "Host: custom.example.org"),
    "change-origin": ("--change-origin",),
}


# Documented differences (README), checked on hubgate alone:
# - hop-by-hop fields (TE, Proxy-Authorization, Proxy-Connection, Upgrade: h2c) are not
#   forwarded (RFC 9110 §7.6.1); CHP forwards them, and closes the connection on h2c;
# - X-Forwarded-Port from an IPv6 Host is the real port (CHP's regex takes "1" of "[::1]").
HOP_BY_HOP_CASES = {
    "te-hdr": ({"TE": "trailers"}, ["te"]),
    "proxy-hdrs": ({"Proxy-Authorization": "Basic eA==", "Proxy-Connection": "keep-alive"},
                   ["proxy-authorization", "proxy-connection"]),
    "upgrade-h2c": ({"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                     "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}, ["upgrade", "http2-settings"]),
}


@pytest.mark.parametrize("case", list(HOP_BY_HOP_CASES))
def test_hop_by_hop_headers_not_forwarded(pf, be, case):
    """[Request headers] documented difference: hop-by-hop request fields stay at the proxy."""
    documented_difference("hop-by-hop fields are not forwarded")
    pair = pf.get()
    pair.add_route("/user/alice", be.a.url + "/pfx")
    hdrs, absent = HOP_BY_HOP_CASES[case]
    v = echo_view(pair.hg.get("/user/alice/h?x=1", headers=hdrs))
    assert v["status"] == 200, v
    for name in absent:
        assert name not in v["seen"]["headers"], v


def test_ipv6_host_forwarded_port(pf, be):
    """[Request headers] documented difference: X-Forwarded-Port of Host "[::1]:9999" is 9999."""
    documented_difference("X-Forwarded-Port from an IPv6 Host")
    pair = pf.get()
    pair.add_route("/user/alice", be.a.url)
    v = echo_view(pair.hg.get("/user/alice/h", headers={"Host": "[::1]:9999"}))
    assert v["seen"]["headers"]["x-forwarded-port"] == "9999", v


@pytest.mark.parametrize("case", list(HEADER_CASES))
@pytest.mark.parametrize("fkind", list(HEADER_FLAGS))
def test_request_headers(pf, be, fkind, case):
    """[Request headers] headers seen upstream: X-Forwarded-* (appended, no space), Host passthrough,
    --no-x-forward, --custom-header overrides, --change-origin."""
    pair = pf.get(*HEADER_FLAGS[fkind])
    pair.add_route("/user/alice", be.a.url + "/pfx")
    pair.add_route("/", be.root.url)
    hdrs = dict(HEADER_CASES[case])

    def go(p):
        h = {k: v.format(port=p.port) for k, v in hdrs.items()}
        return echo_view(p.get("/user/alice/h?x=1", headers=h))

    v = pair.same(go, f"headers {hdrs}")
    seen = v.get("seen", {}).get("headers", {})
    if fkind == "default" and case == "xff-given":
        chp_check(seen.get("x-forwarded-for") == "1.2.3.4,127.0.0.1", str(seen))
    if fkind == "custom-header" and case == "plain":
        chp_check(seen.get("x-forwarded-proto") == "https" and seen.get("k2") == "host:123",
                  str(seen))


def test_connection_header_upstream(pf, be):
    """[Request headers] 'Connection: keep-alive' is sent upstream (compares the hop-by-hop headers too)."""
    pair = pf.get()
    pair.add_route("/", be.root.url)
    for case in ({}, {"Connection": "close"}, {"Connection": "keep-alive"}):
        v = pair.same(lambda p: echo_view(p.get("/x", headers=case), drop=()),
                      f"connection headers {case}")
        if not case:
            chp_check(v["seen"]["headers"].get("connection") == "keep-alive", str(v))


def test_repeated_request_headers(pf, be):
    """[Request headers] repeated request headers reach the backend (node joins some, keeps others)."""
    pair = pf.get()
    pair.add_route("/", be.root.url)

    def go(p):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        c.putrequest("GET", "/rep", skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", f"127.0.0.1:{p.port}")
        for k, val in [("X-Dup", "1"), ("X-Dup", "2"), ("X-Forwarded-For", "1.1.1.1"),
                       ("X-Forwarded-For", "2.2.2.2"), ("Cookie", "a=1"), ("Cookie", "b=2"),
                       ("Accept", "text/html"), ("Accept", "application/json")]:
            c.putheader(k, val)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        c.close()
        seen = json.loads(body)
        seen["headers"].pop("connection", None)
        # Documented difference: node joins repeated lines into one ("1, 2", cookies with
        # "; "); hubgate forwards them as separate lines, which is equivalent (RFC 9110
        # §5.3). Compare the values; X-Forwarded-For must still be the joined list.
        for k, val in seen["headers"].items():
            if k != "x-forwarded-for":
                seen["headers"][k] = re.split(r"\n|, |; ", val)
        return {"status": r.status, "seen": seen}

    pair.same(go, "repeated headers")


def test_response_headers_passthrough(pf, be):
    """[Responses and keep-alive] backend response headers reach the client (checked: content-type, x-echo-backend,
    content-length); 'connection' added."""
    pair = pf.get()
    pair.add_route("/", be.root.url)

    def go(p):
        r = p.get("/x?_fixed=1")
        return {"status": r.status, "body": r.text,
                "headers": {h: r.headers.get(h) for h in
                            ("content-type", "x-echo-backend", "content-length", "connection",
                             "transfer-encoding", "server")}}

    pair.same(go, "response headers")
