//! Authorisation and the request path around it: default and configured policies,
//! browser vs API answers, credential extraction, and these threats of docs/security.md:
//! header smuggling and duplicate credentials (upstream hygiene), path normalisation
//! bypassing per-user routes, poisoning of the verified-token cache, and the timing-safe
//! REST API token comparison (black-box part); also the audit log, configuration errors
//! and CHP behaviour without `[auth]`.

use crate::support::auth_proxy::*;
use crate::support::browser::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

fn html(req: Req) -> Req {
    req.header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
}

// ------------------------------------------------------------------ policies

#[test]
fn default_policies_public_owner_authenticated() {
    let env = AuthEnv::start();
    // Public paths reach the hub without any credential.
    for path in [
        "/hub/login",
        "/hub/login?next=%2Fhub%2F",
        "/hub/logout",
        "/hub/oauth_login",
        "/hub/oauth_callback?code=x",
        "/hub/static/css/style.min.css",
        "/hub/api/oauth2/authorize?client_id=x",
    ] {
        env.clear();
        let r = env.px.get(path);
        assert_eq!(r.status, 200, "public {path}: {}", r.describe());
        assert_eq!(env.hub.count(), 1, "public {path} not forwarded");
        let rec = env.hub.last().unwrap();
        assert_eq!(rec.header("x-auth-request-user"), None, "{path}");
    }
    let r = env.px.get("/_chp_healthz");
    assert_eq!(r.status, 200, "{}", r.describe());

    // Everything else needs a credential.
    for path in [
        "/hub/",
        "/hub/home",
        "/hub/api/users",
        "/hub/spawn",
        "/anything",
        "/user/alice/lab",
    ] {
        env.clear();
        let r = env.px.get(path);
        assert_api_denial(&r, 401, path);
        env.assert_none_called(path);
    }
    let alice = env.token("alice");
    for path in ["/hub/home", "/hub/api/users", "/anything"] {
        env.assert_allowed(path, &alice, &env.hub, path);
    }
    // Owner-only user servers; admins may enter.
    env.assert_allowed("/user/alice/lab", &alice, &env.alice, "alice at home");
    let before = env.px.denials("not_owner");
    env.assert_denied("/user/bob/lab", &alice, 403, "alice at bob's");
    env.assert_denied("/user/bob", &alice, 403, "alice at /user/bob (no slash)");
    assert_eq!(env.px.denials("not_owner") - before, 2.0);
    let dave = env.token_with("dave", |c| {
        c.insert("groups".into(), json!(["hub-admins"]));
    });
    env.assert_allowed("/user/bob/lab", &dave, &env.bob, "admin dave at bob's");
    env.assert_allowed("/user/alice/", &dave, &env.alice, "admin dave at alice's");
    let bob = env.token("bob");
    env.assert_allowed("/user/bob", &bob, &env.bob, "bob at /user/bob");
}

#[test]
fn configured_policies_longest_prefix_and_groups() {
    let env = AuthEnv::start_with(|c| {
        for (prefix, access, groups) in [
            ("/shared/", "group", vec!["physics".to_string()]),
            ("/open/", "public", vec![]),
            ("/user/alice/share/", "authenticated", vec![]),
            ("/hub/static/secret/", "authenticated", vec![]),
        ] {
            c.policies.push((prefix.into(), access.into(), groups));
        }
    });
    let alice = env.token("alice"); // groups ["physics"]
    let bob = env.token_with("bob", |c| {
        c.insert("groups".into(), json!(["chemistry"]));
    });
    let dave = env.token_with("dave", |c| {
        c.insert("groups".into(), json!(["hub-admins"]));
    });
    env.assert_allowed("/shared/data", &alice, &env.hub, "physics member");
    let before = env.px.denials("not_in_group");
    env.assert_denied("/shared/data", &bob, 403, "not in physics");
    assert_eq!(
        env.px.denials("not_in_group") - before,
        1.0,
        "reason=not_in_group"
    );
    env.assert_allowed("/shared/data", &dave, &env.hub, "admin in group route");
    env.clear();
    let r = env.px.get("/shared/data");
    assert_api_denial(&r, 401, "group route without credential");

    env.clear();
    let r = env.px.get("/open/x");
    assert_eq!(r.status, 200, "{}", r.describe());
    // Longest prefix: alice's share is open to any authenticated user, the rest is hers.
    env.assert_allowed("/user/alice/share/nb.ipynb", &bob, &env.alice, "share");
    env.assert_denied("/user/alice/lab", &bob, 403, "outside the share");
    env.clear();
    let r = env.px.get("/user/alice/share/nb.ipynb");
    assert_api_denial(&r, 401, "share needs a credential");
    env.assert_none_called("share without credential");
    // A more specific policy inside a default-public prefix.
    env.clear();
    let r = env.px.get("/hub/static/secret/x");
    assert_api_denial(&r, 401, "authenticated inside /hub/static/");
    env.assert_none_called("secret static");
    let r = env.px.get("/hub/static/ok.css");
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[test]
fn base_url_moves_the_default_policies() {
    let env = AuthEnv::start_with(|c| c.base_url = "/jh/".into());
    // The hub's pages now live under /jh/: /jh/hub/login is public, /hub/login is not.
    env.clear();
    let r = env.px.get("/jh/hub/login");
    assert_eq!(r.status, 200, "{}", r.describe());
    env.clear();
    let r = env.px.get("/hub/login");
    assert_api_denial(&r, 401, "/hub/login outside the base URL");
    env.px.add_route_json(
        "/jh/user/carol",
        &json!({"target": env.alice.url(), "user": "carol"}).to_string(),
    );
    env.assert_denied(
        "/jh/user/carol/lab",
        &env.token("alice"),
        403,
        "base-url owner",
    );
    env.assert_allowed(
        "/jh/user/carol/lab",
        &env.token("carol"),
        &env.alice,
        "carol",
    );
}

// ------------------------------------------------------------------ browsers vs API clients

#[test]
fn browsers_are_redirected_api_clients_get_json() {
    // Browser login enabled (client-id; the stub serves discovery).
    let env = AuthEnv::start_with(|c| {
        c.issuers[0].jwks_url = None;
        c.issuers[0].client_id = Some("hubgate".into());
    });
    // Browser navigation without a credential: 302 to hubgate's login with next.
    for (method, target) in [("GET", "/user/alice/lab?x=1&y=%2F"), ("HEAD", "/hub/home")] {
        env.clear();
        let r = env.px.request(&html(Req::new(method, target)));
        assert_eq!(r.status, 302, "{method} {target}: {}", r.describe());
        let loc = r.header("location").unwrap();
        let path = loc
            .strip_prefix(&format!("http://127.0.0.1:{}", env.px.port))
            .unwrap_or(loc);
        assert!(path.starts_with("/_hubgate/login?"), "{loc}");
        assert_eq!(query_param(path, "next").as_deref(), Some(target), "{loc}");
        env.assert_none_called(target);
    }
    // Expired credential, browser: also the login redirect.
    let expired = env.token_with("alice", |c| {
        c.insert("exp".into(), json!(now() - 3600));
    });
    env.clear();
    let r = env.px.request(&html(
        Req::get("/user/alice/lab").header("Authorization", &format!("Bearer {expired}")),
    ));
    assert_eq!(r.status, 302, "{}", r.describe());
    env.assert_none_called("expired, browser");

    // Not browser navigations: JSON 401, never a redirect.
    for (what, req) in [
        (
            "POST with Accept html",
            html(Req::post("/user/alice/api/x", "{}")),
        ),
        (
            "XHR",
            html(Req::get("/user/alice/api/x")).header("X-Requested-With", "XMLHttpRequest"),
        ),
        (
            "Accept json",
            Req::get("/user/alice/lab").header("Accept", "application/json"),
        ),
        ("no Accept", Req::get("/user/alice/lab")),
        (
            "Accept */*",
            Req::get("/user/alice/lab").header("Accept", "*/*"),
        ),
        (
            "websocket upgrade",
            html(Req::get("/user/alice/api/kernels/k/channels"))
                .header("Upgrade", "websocket")
                .header("Connection", "Upgrade")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("Sec-WebSocket-Version", "13"),
        ),
    ] {
        env.clear();
        let r = env.px.request(&req);
        assert_api_denial(&r, 401, what);
        env.assert_none_called(what);
    }

    // Valid but forbidden, browser: an HTML 403 page, generic.
    let alice = env.token("alice");
    env.clear();
    let r = env.px.request(&html(
        Req::get("/user/bob/lab").header("Authorization", &format!("Bearer {alice}")),
    ));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.media_type().as_deref(),
        Some("text/html"),
        "{}",
        r.describe()
    );
    assert!(r.header("location").is_none());
    assert_generic_body(&r, "HTML 403");
    env.assert_none_called("HTML 403");
    // Same, API client: JSON 403.
    let r = env.px.get_bearer("/user/bob/lab", &alice);
    assert_api_denial(&r, 403, "API 403");
}

// ------------------------------------------------------------------ credentials

#[test]
fn credential_extraction_rules() {
    let env = AuthEnv::start_with(|c| c.query_param = Some("hubgate_token".into()));
    let alice = env.token("alice");
    let bob = env.token("bob");
    let d_before = env.px.denials("multiple_credentials");
    let cases: Vec<(&str, Req)> = vec![
        (
            "two Authorization headers",
            Req::get("/user/alice/")
                .header("Authorization", &format!("Bearer {alice}"))
                .header("Authorization", &format!("Bearer {bob}")),
        ),
        (
            "two bearers in one header",
            Req::get("/user/alice/")
                .header("Authorization", &format!("Bearer {alice}, Bearer {bob}")),
        ),
        (
            "bearer and session cookie",
            Req::get("/user/alice/")
                .header("Authorization", &format!("Bearer {alice}"))
                .header("Cookie", &format!("{SESSION_COOKIE}=v1.something")),
        ),
        (
            "two session cookies",
            Req::get("/user/alice/")
                .header("Cookie", &format!("{SESSION_COOKIE}=a; {SESSION_COOKIE}=b")),
        ),
    ];
    for (what, req) in &cases {
        env.clear();
        let r = env.px.request(req);
        assert_eq!(r.status, 400, "{what}: {}", r.describe());
        assert_generic_body(&r, what);
        env.assert_none_called(what);
    }
    assert!(
        env.px.denials("multiple_credentials") - d_before >= 3.0,
        "reason=multiple_credentials"
    );
    // The query parameter counts only on websocket upgrades; elsewhere it is no credential.
    for (what, target) in [
        (
            "hubgate_token on plain GET",
            format!("/user/alice/api/x?hubgate_token={alice}"),
        ),
        (
            "Jupyter's ?token=",
            format!("/user/alice/api/x?token={alice}"),
        ),
        (
            "?access_token=",
            format!("/user/alice/api/x?access_token={alice}"),
        ),
    ] {
        env.clear();
        let r = env.px.get(&target);
        assert_api_denial(&r, 401, what);
        env.assert_none_called(what);
    }
    // Other schemes and junk are no Bearer credential.
    for (what, v) in [
        ("Basic", "Basic YWxpY2U6cGFzc3dvcmQ=".to_string()),
        ("token scheme", format!("token {alice}")),
        ("no scheme", alice.clone()),
        ("Bearer only", "Bearer".to_string()),
        ("Bearerx", format!("Bearer{alice}")),
    ] {
        env.clear();
        let r = env
            .px
            .request(&Req::get("/user/alice/").header("Authorization", &v));
        assert_api_denial(&r, 401, what);
        env.assert_none_called(what);
    }
    env.px.assert_not_logged(&alice);
    env.px.assert_not_logged(&bob);
}

// -------------------------------------------------------------- header smuggling: upstream hygiene

#[test]
fn row12_identity_headers_are_ours_only() {
    let env = AuthEnv::start();
    let alice = env.token_with("alice", |c| {
        c.insert("groups".into(), json!(["physics", "astro"]));
    });
    let spoof = |req: Req| {
        req.header("X-Auth-Request-User", "bob")
            .header("X-Auth-Request-Email", "bob@example.org")
            .header("X-Auth-Request-Groups", "hub-admins")
            .header("X-Auth-Request-Access-Token", "x")
            .header("X-Forwarded-User", "bob")
            .header("X-Remote-User", "bob")
            .header("x-auth-request-user", "mallory")
            // Spellings WSGI/PHP/Rails fold into the same names (`_` for `-`).
            .header("X_Remote_User", "bob")
            .header("X-Auth-Request_User", "bob")
            .header("REMOTE_USER", "bob")
            // Backends build URLs from it; hubgate never sets it.
            .header("X-Forwarded-Prefix", "/evil")
            .header("X_Forwarded_Prefix", "/evil")
    };
    // Authenticated route: our values only.
    env.clear();
    let r = env.px.request(
        &spoof(Req::get("/user/alice/lab")).header("Authorization", &format!("Bearer {alice}")),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.alice.last().unwrap();
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(
        rec.header("x-auth-request-email").as_deref(),
        Some("alice@example.org")
    );
    assert_eq!(
        rec.header("x-auth-request-groups").as_deref(),
        Some("physics,astro")
    );
    assert_eq!(rec.header("x-auth-request-access-token"), None);
    assert_eq!(rec.header("x-forwarded-user"), None);
    assert_eq!(rec.header("x-remote-user"), None);
    for h in [
        "x_remote_user",
        "x-auth-request_user",
        "remote_user",
        "x-forwarded-prefix",
        "x_forwarded_prefix",
    ] {
        assert_eq!(rec.header(h), None, "{h} reached the user's server");
    }

    // Hop-by-hop abuse: naming our header in Connection must not remove it.
    env.clear();
    let r = env.px.request(
        &Req::get("/user/alice/lab")
            .header("Authorization", &format!("Bearer {alice}"))
            .header(
                "Connection",
                "keep-alive, X-Auth-Request-User, X-Auth-Request-Groups",
            ),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.alice.last().unwrap();
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(
        rec.header("x-auth-request-groups").as_deref(),
        Some("physics,astro")
    );

    // Public route: spoofed identity headers are stripped too, and none is added.
    env.clear();
    let r = env.px.request(&spoof(Req::get("/hub/login")));
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.hub.last().unwrap();
    for h in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-access-token",
        "x-forwarded-user",
        "x-remote-user",
        "x_remote_user",
        "remote_user",
        "x-forwarded-prefix",
    ] {
        assert_eq!(rec.header(h), None, "{h} reached the hub on a public route");
    }
    // A header that only resembles one is another header, and is forwarded.
    env.clear();
    let r = env
        .px
        .request(&Req::get("/hub/login").header("X-Remote-Users", "kept"));
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.hub.last().unwrap();
    assert_eq!(rec.header("x-remote-users").as_deref(), Some("kept"));
}

#[test]
fn the_query_credential_never_reaches_a_users_server() {
    let env = AuthEnv::start_with(|c| c.query_param = Some("hubgate_token".into()));
    let alice = env.token("alice");
    // A plain request with a Bearer and the parameter too: the parameter is not forwarded.
    env.clear();
    let r = env.px.request(
        &Req::get(&format!("/user/alice/api/x?a=1&hubgate_token={alice}&b=2"))
            .header("Authorization", &format!("Bearer {alice}")),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.alice.last().unwrap();
    assert!(rec.target.ends_with("/api/x?a=1&b=2"), "{}", rec.target);
    assert!(!rec.target.contains(&alice));
    // A public path: forwarded without it as well.
    env.clear();
    let r = env.px.get(&format!("/hub/login?hubgate_token={alice}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.hub.last().unwrap();
    assert!(!rec.target.contains("hubgate_token"), "{}", rec.target);
    env.px.assert_not_logged(&alice);
}

#[test]
fn row14_upstream_cannot_set_hubgate_cookies() {
    let env = AuthEnv::start();
    let evil = Backend::fixed(
        Reply::new(200)
            .header(
                "Set-Cookie",
                &format!("{SESSION_COOKIE}=planted; Path=/; Secure; HttpOnly"),
            )
            .header(
                "Set-Cookie",
                &format!("{LOGIN_COOKIE}=planted; Path=/; Secure"),
            )
            .header(
                "Set-Cookie",
                "jupyterhub-user-carol=keep; Path=/user/carol/",
            )
            .body("hi"),
    );
    env.px.add_route_json(
        "/user/carol",
        &json!({"target": evil.url(), "user": "carol"}).to_string(),
    );
    let r = env.px.get_bearer("/user/carol/lab", &env.token("carol"));
    assert_eq!(r.status, 200, "{}", r.describe());
    let cookies: Vec<Cookie> = r
        .header_all("set-cookie")
        .into_iter()
        .map(parse_set_cookie)
        .collect();
    assert!(
        cookies
            .iter()
            .all(|c| c.name != SESSION_COOKIE && c.name != LOGIN_COOKIE),
        "upstream planted a hubgate cookie: {:?}",
        r.header_all("set-cookie")
    );
    assert!(
        cookies.iter().any(|c| c.name == "jupyterhub-user-carol"),
        "other cookies must pass: {:?}",
        r.header_all("set-cookie")
    );
}

/// Sends raw bytes on a fresh connection; returns (responses' status codes, closed).
fn raw_exchange(port: u16, bytes: &[u8]) -> (Vec<u16>, String) {
    let mut c = Conn::tcp(port).unwrap();
    c.send_raw(bytes).unwrap();
    c.shutdown_write();
    let (out, _) = c.read_until_close(Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out).into_owned();
    let codes = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3).and_then(|c| c.parse().ok()))
        .collect();
    (codes, text)
}

#[test]
fn row12_request_smuggling_shapes_never_reach_another_user() {
    let env = AuthEnv::start();
    let alice = env.token("alice");
    let host = format!("127.0.0.1:{}", env.px.port);
    let auth = format!("Authorization: Bearer {alice}\r\n");
    let smuggled = format!("GET /user/bob/smuggled HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "CL + TE",
            format!(
                "POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}\
                 Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE xchunked",
            format!(
                "POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}\
                 Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "space before colon",
            format!(
                "POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length : {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
    ];
    for (what, bytes) in &cases {
        env.clear();
        let (codes, text) = raw_exchange(env.px.port, bytes.as_bytes());
        assert_eq!(
            env.bob.count(),
            0,
            "{what}: a smuggled request reached bob's server; client saw:\n{text}"
        );
        assert!(
            codes
                .first()
                .map(|c| *c == 400 || *c == 501)
                .unwrap_or(true),
            "{what}: expected 400 (or the connection closed), got {codes:?}:\n{text}"
        );
        assert!(
            codes.len() <= 1,
            "{what}: a second request was processed: {codes:?}"
        );
    }
    // obs-fold continuation line: rejected, or unfolded; never a second identity.
    env.clear();
    let (codes, text) = raw_exchange(
        env.px.port,
        format!(
            "GET /user/alice/x HTTP/1.1\r\nHost: {host}\r\n{auth}X-Auth-Request-User: bob\r\n alice\r\n\r\n"
        )
        .as_bytes(),
    );
    if let Some(rec) = env.alice.last() {
        assert_eq!(
            rec.header("x-auth-request-user").as_deref(),
            Some("alice"),
            "{text}"
        );
    } else {
        assert_eq!(codes.first(), Some(&400), "{text}");
    }
    assert_eq!(env.bob.count(), 0);
}

// ------------------------------------------------------------------ path normalisation

#[test]
fn row11_per_user_paths_cannot_be_bypassed() {
    let env = AuthEnv::start();
    let alice = env.token("alice");
    let paths = [
        "/user/alice/../bob/",
        "/user/alice/%2e%2e/bob/",
        "/user/alice/%2E%2E%2Fbob/",
        "/user/alice/..%2fbob/",
        "/user/alice/.%2e/bob/",
        "/user/alice/%2e./bob/",
        "/user//bob/",
        "//user/bob/",
        "///user/bob/",
        "/user/alice/..;/bob/",
        "/user/alice\\..\\bob/",
        "/user/alice/%5c..%5cbob/",
        "/user/Bob/",
        "/USER/bob/",
        "/user/bob",
        "/user/bob/",
        "/user/bob;/",
        "/user/b%6fb/",
        "/user/alice%00/",
        "/user/alice/%00/../../bob/",
        "/user/alice/%c0%ae%c0%ae/bob/",
        "/user/alice/%252e%252e/bob/",
        "/./user/bob/",
        "/hub/../user/bob/",
        "/hub/static/../../user/bob/",
        "/hub/static/%2e%2e/%2e%2e/user/bob/",
        "/user/bob/../alice/",
        "/user/bob%2f..%2falice/",
        "/user/%61lice/lab",
    ];
    let mut problems = vec![];
    for p in paths {
        env.clear();
        let r = match try_http(
            env.px.port,
            &Req::get(p).header("Authorization", &format!("Bearer {alice}")),
        ) {
            Ok(r) => r,
            Err(_) => continue, // connection closed: not forwarded anywhere
        };
        if env.bob.count() != 0 {
            problems.push(format!("{p}: reached bob's server ({})", r.status));
        }
        // A path that does not decode to UTF-8 gets CHP's 500 (docs/chp-compatibility.md,
        // proxy errors: a bad percent-escape is a 500 through the error target) — refused
        // before routing.
        let undecodable = p.contains("%c0");
        if r.status >= 500 && !(undecodable && r.status == 500) {
            problems.push(format!("{p}: {}", r.status_line));
        }
        if let Some(rec) = env.alice.last() {
            // Forwarded to alice: the decision must have been made on a canonical path,
            // and that path is what is forwarded.
            let decoded = pct_decode(rec.path());
            let canonical = ["/../", "/./", "\\", "\0", "//"]
                .iter()
                .all(|bad| !decoded.contains(bad))
                && !decoded.ends_with("/..")
                && (decoded.starts_with("/user/alice/") || decoded == "/user/alice");
            if !canonical {
                problems.push(format!(
                    "{p}: {} and alice's server got non-canonical {:?}",
                    r.status, rec.target
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "path normalisation:\n{}",
        problems.join("\n")
    );
    // Absolute-form request target naming bob's server.
    env.clear();
    let (codes, text) = raw_exchange(
        env.px.port,
        format!(
            "GET http://evil.example/user/bob/ HTTP/1.1\r\nHost: evil.example\r\n\
             Authorization: Bearer {alice}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(
        env.bob.count(),
        0,
        "absolute-form reached bob: {codes:?}\n{text}"
    );
    // And bob himself still gets in with the plain path.
    env.assert_allowed("/user/bob/", &env.token("bob"), &env.bob, "bob");
}

// ------------------------------------------------------------------ the verified-token cache

#[test]
fn row20_cache_reauthorises_and_respects_exp() {
    let env = AuthEnv::start_with(|c| {
        c.issuers[0].leeway = 0;
        c.cache_ttl = 60;
    });
    let alice = env.token("alice");
    for _ in 0..3 {
        env.assert_allowed("/user/alice/api/x", &alice, &env.alice, "alice, cached");
        env.assert_denied("/user/bob/api/x", &alice, 403, "cached alice on bob's");
    }
    // A token that expires in 2 s is refused once expired, although it is cached.
    let short = env.token_with("alice", |c| {
        c.insert("exp".into(), json!(now() + 2));
    });
    env.assert_allowed("/user/alice/", &short, &env.alice, "short-lived, fresh");
    std::thread::sleep(Duration::from_millis(3100));
    let before = env.px.denials("expired");
    env.assert_denied(
        "/user/alice/",
        &short,
        401,
        "short-lived, expired but cached",
    );
    assert_eq!(env.px.denials("expired") - before, 1.0);
}

// ------------------------------------------------------------------ audit log

#[test]
fn audit_log_all_and_denials_only() {
    let env = AuthEnv::start();
    let alice = env.token("alice");
    env.assert_allowed("/user/alice/lab", &alice, &env.alice, "allow");
    env.assert_denied("/user/bob/lab", &alice, 403, "deny");
    let allow = env.px.wait_audit(&["user=alice", "decision=allow"]);
    assert!(allow.contains("route=/user/alice"), "{allow}");
    let deny = env
        .px
        .wait_audit(&["user=alice", "decision=deny", "reason=not_owner"]);
    assert!(deny.contains("route=/user/bob"), "{deny}");
    env.px.assert_not_logged(&alice);
    // Public routes are no decision about a user: not audited.
    env.clear();
    assert_eq!(env.px.get("/hub/login").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !env.px
            .audit_lines()
            .iter()
            .any(|l| l.contains("route=/hub/login")),
        "public route audited:\n{}",
        env.px.audit_lines().join("\n")
    );

    let env2 = AuthEnv::start_with(|c| c.audit_log = "denials".into());
    let bob = env2.token("bob");
    env2.assert_allowed("/user/bob/lab", &bob, &env2.bob, "allow");
    env2.assert_denied("/user/alice/lab", &bob, 403, "deny");
    env2.px.wait_audit(&["user=bob", "decision=deny"]);
    assert!(
        !env2
            .px
            .audit_lines()
            .iter()
            .any(|l| l.contains("decision=allow")),
        "audit-log=denials logged an allow:\n{}",
        env2.px.audit_lines().join("\n")
    );
}

// ------------------------------------------------------------------ configuration

fn check_config(toml: &str) -> CliOutput {
    let dir = TempDir::new("authcfg");
    let p = dir.write("c.toml", toml);
    run_cli(
        &["--config", p.to_str().unwrap(), "--check-config"],
        &[],
        Duration::from_secs(10),
    )
}

#[test]
fn bad_auth_config_is_refused_naming_the_key() {
    let dir = TempDir::new("authcfg-files");
    let jwks = dir.write("jwks.json", jwks_public(&[&pool().rsa[0]]).to_string());
    let good_issuer = |extra: &str| {
        format!(
            "[auth]\npublic-url = \"http://127.0.0.1:8000\"\n\n[[auth.issuers]]\n\
             issuer = \"http://127.0.0.1:9\"\naudiences = [\"jupyterhub\"]\n\
             jwks-file = {}\n{extra}",
            toml_str(jwks.to_str().unwrap())
        )
    };
    let ok = check_config(&good_issuer(""));
    assert!(
        ok.success(),
        "valid config refused: {}{}",
        ok.stdout,
        ok.stderr
    );

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no issuer",
            "[auth]\npublic-url = \"http://127.0.0.1:8000\"\n".into(),
            "auth.issuers",
        ),
        (
            "HS256",
            good_issuer("algorithms = [\"RS256\", \"HS256\"]\n"),
            "auth.issuers[0].algorithms",
        ),
        (
            "alg none",
            good_issuer("algorithms = [\"none\"]\n"),
            "auth.issuers[0].algorithms",
        ),
        (
            "unreadable jwks-file",
            format!(
                "[auth]\npublic-url = \"http://127.0.0.1:8000\"\n\n[[auth.issuers]]\nissuer = \"http://127.0.0.1:9\"\n\
                 audiences = [\"jupyterhub\"]\njwks-file = \"{}/missing.json\"\n",
                dir.path.display()
            ),
            "auth.issuers[0].jwks-file",
        ),
        (
            "unknown access kind",
            format!(
                "{}\n[[auth.policies]]\nprefix = \"/x/\"\naccess = \"everyone\"\n",
                good_issuer("")
            ),
            "auth.policies[0].access",
        ),
        (
            "jwks-url and jwks-file",
            good_issuer("jwks-url = \"http://127.0.0.1:9/jwks\"\n"),
            "auth.issuers[0]",
        ),
        (
            "second issuer without issuer string",
            format!("{}\n[[auth.issuers]]\naudiences = [\"x\"]\n", good_issuer("")),
            "auth.issuers[1]",
        ),
        (
            "hub grants without a token file",
            format!(
                "{}\n[auth.hub-grants]\nhub-api-url = \"http://127.0.0.1:8081/hub/api\"\n",
                good_issuer("")
            ),
            "auth.hub-grants.token-file",
        ),
        (
            "hub grants role with a scope that is not access:servers",
            format!(
                "{}\n[auth.hub-grants]\nhub-api-url = \"http://127.0.0.1:8081/hub/api\"\n\
                 token-file = {}\n[auth.hub-grants.roles]\nhelpers = [\"admin:users\"]\n",
                good_issuer(""),
                toml_str(jwks.to_str().unwrap())
            ),
            "auth.hub-grants.roles.helpers",
        ),
    ];
    for (what, toml, key) in &cases {
        let out = check_config(toml);
        assert!(
            out.failed_cleanly(),
            "{what}: --check-config should fail: {:?}\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains(key),
            "{what}: stderr does not name {key}:\n{}",
            out.stderr
        );
    }
    // Startup (not just --check-config) refuses too, before listening.
    let p = dir.write("hs.toml", good_issuer("algorithms = [\"HS256\"]\n"));
    let port = free_port();
    let out = run_cli(
        &[
            "--config",
            p.to_str().unwrap(),
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--api-port",
            &free_port().to_string(),
        ],
        &[("CONFIGPROXY_AUTH_TOKEN", "x")],
        Duration::from_secs(10),
    );
    assert!(out.failed_cleanly(), "startup with HS256: {:?}", out.status);
    assert!(
        out.stderr.contains("auth.issuers[0].algorithms"),
        "{}",
        out.stderr
    );
}

#[test]
fn without_auth_section_it_is_chp() {
    let dir = TempDir::new("noauth");
    let p = dir.write("c.toml", "[proxy]\nx-forward = true\n");
    let hg = Hubgate::start(&["--config", p.to_str().unwrap()], &[]);
    let be = Backend::echo();
    hg.add_route("/user/alice", &be.url());
    let r = hg.get("/user/alice/lab");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(be.last().unwrap().header("x-auth-request-user"), None);
    let off_line = |hg: &Hubgate| {
        hg.output().lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("authentication") && l.contains(" off")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || off_line(&hg)),
        "no 'authentication off' startup line:\n{}",
        hg.output()
    );
    // The same without any config file.
    let hg2 = Hubgate::start(&[], &[]);
    assert!(
        wait_until(Duration::from_secs(5), || off_line(&hg2)),
        "{}",
        hg2.output()
    );
}

// ----------------------------------------------- timing-safe API token comparison (black-box part)

/// The REST API token compare: near misses (wrong first/last byte, prefix, longer)
/// are refused. Constant-time behaviour is not measurable black-box here.
#[test]
fn row17_api_token_compare_rejects_near_misses() {
    let token = "t0k3n-0123456789abcdef0123456789abcdef";
    let hg = Hubgate::builder().token(token).start();
    let mut last_wrong = token.to_string();
    last_wrong.pop();
    last_wrong.push('g');
    let mut first_wrong = token.to_string();
    first_wrong.replace_range(0..1, "x");
    for (what, t, want) in [
        ("correct", token.to_string(), 200),
        ("wrong last byte", last_wrong, 403),
        ("wrong first byte", first_wrong, 403),
        ("prefix", token[..token.len() - 1].to_string(), 403),
        ("longer", format!("{token}0"), 403),
        ("empty", String::new(), 403),
    ] {
        let r = hg.api_raw(&Req::get("/api/routes").header("Authorization", &format!("token {t}")));
        assert_eq!(r.status, want, "{what}: {}", r.describe());
    }
}

// ------------------------------------------------------------------ [auth.hub-grants]

/// The hub cannot be asked (nothing listens at `hub-api-url`: a real refused connection,
/// no stand-in hub; the grants themselves are tested against a real JupyterHub in
/// tests/e2e/test_sharing.py): a non-owner is refused with 503, counted; the owner and an
/// admin are unaffected; the hub token never shows in the output.
#[test]
fn hub_grants_fail_closed_when_the_hub_cannot_be_asked() {
    let dir = TempDir::new("hubgrants");
    let token = secret_file(&dir, "hub-token", "hub-token-never-logged-7f3a");
    let hub_port = free_port();
    let env = AuthEnv::start_with(|c| {
        c.extra.extend([
            "[auth.hub-grants]".to_string(),
            format!("hub-api-url = \"http://127.0.0.1:{hub_port}/hub/api\""),
            format!("token-file = {}", toml_str(&token.to_string_lossy())),
            "refresh-seconds = 1".into(),
            "max-stale-seconds = 1".into(),
            "request-timeout-seconds = 1".into(),
            "miss-wait-ms = 500".into(),
        ]);
    });
    let alice = env.token("alice");
    let bob = env.token("bob");
    let dave = env.token_with("dave", |c| {
        c.insert("groups".into(), json!(["hub-admins"]));
    });
    env.assert_allowed("/user/alice/lab", &alice, &env.alice, "the owner");
    env.assert_allowed("/user/alice/lab", &dave, &env.alice, "an admin");
    let before = env.px.denials("grants_unavailable");
    env.assert_denied("/user/alice/lab", &bob, 503, "bob, grants unknown");
    assert_eq!(env.px.denials("grants_unavailable") - before, 1.0);
    let ok = wait_until(Duration::from_secs(10), || {
        let m = env.px.metrics();
        metric_sum(
            &m,
            "hubgate_auth_hub_grants_fetch_failures_total",
            &[("what", "shares")],
        ) >= 1.0
            && metric_sum(
                &m,
                "hubgate_auth_hub_grants_fetch_failures_total",
                &[("what", "directory")],
            ) >= 1.0
    });
    let m = env.px.metrics();
    assert!(ok, "no failed hub polls counted:\n{m}");
    assert!(
        metric_sum(
            &m,
            "hubgate_auth_hub_grants_decisions_total",
            &[("grant", "unavailable")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "hubgate_auth_hub_grants_owners", &[]),
        1.0,
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("hubgate_auth_hub_grants_age_seconds ")
                && l.to_ascii_lowercase().ends_with("inf")),
        "never-polled grants must be +Inf old:\n{m}"
    );
    let out = env.px.hg.output();
    assert!(
        out.contains("auth.hub-grants:"),
        "no log line about the hub:\n{out}"
    );
    assert!(
        !out.contains("hub-token-never-logged"),
        "the hub token was logged"
    );
}
