"""[Redirect rewriting] redirect Location rewriting: CHP vs hubgate."""

from __future__ import annotations

import pytest

from .conftest import chp_check, resp_view

FLAGS = {
    "default": (),
    "auto-rewrite": ("--auto-rewrite",),
    "protocol-rewrite": ("--protocol-rewrite", "https"),
    "both": ("--auto-rewrite", "--protocol-rewrite", "https"),
}

# `name:80`: node drops the default port of the Location's scheme before a protocol rewrite.
HOSTS = ["127.0.0.1:{port}", "other.example.org:8443", "other.example.org", "other.example.org:80"]


@pytest.mark.parametrize("other", [False, True], ids=["same-host", "foreign-host"])
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("code", [201, 301, 302, 303, 307, 308])
@pytest.mark.parametrize("fkind", list(FLAGS))
def test_redirect_location(pf, be, fkind, code, host, other):
    """[Redirect rewriting] Location untouched by default; --auto-rewrite sets host to the request Host;
    --protocol-rewrite sets the scheme; only for 201/301/302/307/308 and target-host Locations."""
    pair = pf.get(*FLAGS[fkind])
    pair.add_route("/user/alice", be.redirect.url)
    q = f"?_code={code}" + ("&_other=1" if other else "")

    def go(p):
        r = p.get("/user/alice/go" + q, host=host.format(port=p.port))
        return resp_view(r, "raw", ("location", "content-type", "x-echo-backend"))

    v = pair.same(go, f"GET redirect {code} Host: {host}")
    chp_check(v["status"] == code, str(v))
    if fkind == "default":
        chp_check(v["headers"]["location"] == ("http://other.invalid:9/elsewhere" if other else
                                               f"{be.redirect.url}/elsewhere?x=1"), str(v))
    if fkind == "both" and code == 302 and host.startswith("other.example.org:") and not other:
        # The Host's port is kept, except the Location scheme's default (http-proxy sets the
        # host before the protocol): `Host: name:80` with --protocol-rewrite https -> no port.
        want = {"other.example.org:8443": "https://other.example.org:8443/elsewhere?x=1",
                "other.example.org:80": "https://other.example.org/elsewhere?x=1"}[host]
        chp_check(v["headers"]["location"] == want, str(v))
