//! hubgate's browser login (authorization code + PKCE) against the real OpenID
//! provider, followed step by step, and against a fake IdP for the ID-token checks;
//! session cookie scoping and open redirects after login (docs/security.md).

use crate::support::auth_proxy::*;
use crate::support::browser::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// Builds an ID token for a given nonce.
type MakeToken<'a> = dyn Fn(&str) -> String + 'a;

struct LoginEnv {
    idp: OidcProvider,
    px: AuthProxy,
    port: u16,
    hub: Backend,
    alice: Backend,
    bob: Backend,
    _dir: TempDir,
}

fn callback_prefix(port: u16) -> String {
    format!("http://127.0.0.1:{port}/_hubgate/oidc/callback")
}

/// Routes `/` (hub), `/user/alice` and `/user/bob` to echo backends.
pub(crate) fn routes(px: &AuthProxy) -> (Backend, Backend, Backend) {
    let hub = Backend::echo();
    let alice = Backend::echo();
    let bob = Backend::echo();
    px.add_route_json(
        "/",
        &json!({"target": hub.url(), "jupyterhub": true}).to_string(),
    );
    px.add_route_json(
        "/user/alice",
        &json!({"target": alice.url(), "user": "alice"}).to_string(),
    );
    px.add_route_json(
        "/user/bob",
        &json!({"target": bob.url(), "user": "bob"}).to_string(),
    );
    (hub, alice, bob)
}

fn login_env(tweak: impl FnOnce(&mut AuthCfg, &TempDir)) -> LoginEnv {
    let p = pool();
    let port = free_port();
    let idp = OidcProvider::start(
        ProviderOptions::new(&[&p.rsa[1].with_kid("idp-rsa"), &p.ec[1].with_kid("idp-ec")])
            .hubgate_port(port),
    );
    let mut iss = IssuerCfg::new(&idp.issuer);
    iss.client_id = Some("hubgate".into());
    let mut cfg = AuthCfg::new(port, vec![iss]);
    let secrets = TempDir::new("login-secrets");
    cfg.session_secret_file = Some(secret_file(
        &secrets,
        "session",
        "0123456789abcdef0123456789abcdef-a",
    ));
    tweak(&mut cfg, &secrets);
    let px = start_ready(port, &cfg);
    let (hub, alice, bob) = routes(&px);
    LoginEnv {
        idp,
        px,
        port,
        hub,
        alice,
        bob,
        _dir: secrets,
    }
}

/// Whole login as `who` via the real IdP; returns the browser (holding the session
/// cookie for the proxy) and the callback response.
fn login(env: &LoginEnv, b: &mut Browser, who: &LoginAs, next: &str) -> Response {
    let start = login_start(b, env.port, next);
    let back = env
        .idp
        .authorize(b, &start.auth_url, who, &callback_prefix(env.port));
    b.get(&back)
}

fn session_of(r: &Response) -> Cookie {
    set_cookie(r, SESSION_COOKIE).unwrap_or_else(|| panic!("no session cookie: {}", r.describe()))
}

/// Location as a path on the proxy's origin (accepts absolute URLs to it).
fn local_location(r: &Response, port: u16) -> String {
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {}", r.describe()));
    loc.strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap_or(loc)
        .to_string()
}

// ------------------------------------------------------------------ the happy path, step by step

#[test]
fn browser_login_step_by_step() {
    let env = login_env(|_, _| {});
    let port = env.port;
    let mut b = Browser::html();

    // 1. A browser without a credential is sent to hubgate's login.
    let r = b.send(port, Req::get("/user/alice/lab?tab=1"));
    assert_eq!(r.status, 302, "{}", r.describe());
    let login_path = local_location(&r, port);
    assert!(login_path.starts_with("/_hubgate/login?"), "{login_path}");
    assert_eq!(
        query_param(&login_path, "next").as_deref(),
        Some("/user/alice/lab?tab=1")
    );
    assert_eq!(env.alice.count(), 0);

    // 2. hubgate's login redirects to the IdP's authorization endpoint.
    let r = b.send(port, Req::get(&login_path));
    assert_eq!(r.status, 302, "{}", r.describe());
    let auth = r.header("location").unwrap().to_string();
    assert!(
        auth.starts_with(&format!("{}/auth?", env.idp.issuer)),
        "{auth}"
    );
    let q = |n: &str| query_param(&auth, n).unwrap_or_else(|| panic!("{n} missing: {auth}"));
    assert_eq!(q("client_id"), "hubgate");
    assert_eq!(q("response_type"), "code");
    let scopes: Vec<String> = q("scope").split(' ').map(str::to_string).collect();
    for s in ["openid", "profile", "email"] {
        assert!(
            scopes.iter().any(|x| x == s),
            "scope {s} missing: {scopes:?}"
        );
    }
    assert_eq!(q("redirect_uri"), callback_prefix(port));
    assert_eq!(q("code_challenge_method"), "S256");
    assert_eq!(
        q("code_challenge").len(),
        43,
        "S256 challenge is 43 base64url chars"
    );
    let state = q("state");
    assert!(
        state.len() >= 16 && q("nonce").len() >= 16,
        "weak state/nonce: {auth}"
    );
    let lc = set_cookie(&r, LOGIN_COOKIE)
        .unwrap_or_else(|| panic!("no {LOGIN_COOKIE}: {}", r.describe()));
    assert!(lc.has("secure") && lc.has("httponly"), "{lc:?}");
    assert_eq!(lc.attr("path").as_deref(), Some("/"), "{lc:?}");
    assert!(!lc.has("domain"), "{lc:?}");
    if let Some(ma) = lc.attr("max-age") {
        let ma: i64 = ma.parse().unwrap();
        assert!(
            ma > 0 && ma <= 3600,
            "login cookie is not short-lived: {lc:?}"
        );
    }
    assert!(
        !lc.value.contains(&state) || lc.value.len() > state.len(),
        "{lc:?}"
    );

    // 3. The IdP, by hand: /auth → /interaction/<uid> (relative) → form → POST → /auth/<uid>.
    let r = b.get(&auth);
    assert_eq!(r.status, 303, "{}", r.describe());
    let inter = resolve(&auth, r.header("location").unwrap());
    assert!(inter.contains("/interaction/"), "{inter}");
    let r = b.get(&inter);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.text().contains("<form"), "{}", r.describe());
    let uid = inter.rsplit('/').next().unwrap().to_string();
    let r = b.post_form(
        &format!("{}/interaction/{uid}/login", env.idp.issuer),
        &[
            ("login", "alice"),
            ("password", IDP_PASSWORD),
            ("otp", "123456"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.describe());
    let resume = resolve(&inter, r.header("location").unwrap());
    let r = b.get(&resume);
    assert_eq!(r.status, 303, "{}", r.describe());
    let cb = r.header("location").unwrap().to_string();
    assert!(cb.starts_with(&callback_prefix(port)), "{cb}");
    assert_eq!(query_param(&cb, "state"), Some(state));
    assert_eq!(query_param(&cb, "iss"), Some(env.idp.issuer.clone()));
    let code = query_param(&cb, "code").unwrap();

    // 4. The callback sets the session cookie and returns to `next`.
    let r = b.get(&cb);
    assert_eq!(r.status, 302, "callback: {}", r.describe());
    assert_eq!(local_location(&r, port), "/user/alice/lab?tab=1");
    let sc = session_of(&r);
    assert!(sc.has("secure"), "{sc:?}");
    assert!(sc.has("httponly"), "{sc:?}");
    assert_eq!(
        sc.attr("samesite")
            .map(|s| s.to_ascii_lowercase())
            .as_deref(),
        Some("lax")
    );
    assert_eq!(sc.attr("path").as_deref(), Some("/"), "{sc:?}");
    assert!(!sc.has("domain"), "__Host- cookies have no Domain: {sc:?}");
    let ma: i64 = sc
        .attr("max-age")
        .unwrap_or_else(|| panic!("no Max-Age: {sc:?}"))
        .parse()
        .unwrap();
    assert!(ma > 0 && ma <= 28800, "Max-Age {ma}");
    assert!(!sc.value.is_empty());

    // 5. With the cookie: alice's server, her identity, and hubgate's cookie stripped.
    env.alice.clear();
    let r = b.send(
        port,
        Req::get("/user/alice/lab?tab=1").header("Cookie", "_xsrf=abc; jupyterhub-session-id=s1"),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.alice.last().unwrap();
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
    // The session keeps only the groups the configuration uses (admin-groups, group
    // policies; docs/security.md, "Many groups"): none here, so no groups header.
    assert_eq!(rec.header("x-auth-request-groups"), None);
    let cookie = rec.header("cookie").unwrap_or_default();
    assert!(
        !cookie.contains(SESSION_COOKIE),
        "session cookie forwarded: {cookie}"
    );
    assert!(
        !cookie.contains(&sc.value),
        "session value forwarded: {cookie}"
    );
    assert!(
        cookie.contains("_xsrf=abc") && cookie.contains("jupyterhub-session-id=s1"),
        "{cookie}"
    );

    // 6. Not hers: HTML 403 for the browser, JSON 403 for XHR.
    let r = b.send(port, Req::get("/user/bob/lab"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.media_type().as_deref(), Some("text/html"));
    let r = b.send(
        port,
        Req::get("/user/bob/api/x").header("X-Requested-With", "XMLHttpRequest"),
    );
    assert_api_denial(&r, 403, "cookie, bob's server, XHR");
    assert_eq!(env.bob.count(), 0);

    // Nothing secret in the logs.
    env.px.assert_not_logged(&sc.value);
    assert!(
        !env.px.output().contains(&code),
        "authorization code logged"
    );

    // 7. Logout clears the cookie; afterwards the browser is sent to log in again.
    let r = b.send(port, Req::get("/_hubgate/logout"));
    assert!(r.status == 302 || r.status == 200, "{}", r.describe());
    let cleared = set_cookie(&r, SESSION_COOKIE)
        .unwrap_or_else(|| panic!("logout does not clear the cookie: {}", r.describe()));
    assert!(cleared.is_removal(), "{cleared:?}");
    assert!(b.jar.get(port, SESSION_COOKIE).is_none());
    let r = b.send(port, Req::get("/user/alice/lab"));
    assert_eq!(r.status, 302, "{}", r.describe());
    assert!(local_location(&r, port).starts_with("/_hubgate/login?"));
}

// ------------------------------------------------------------------ MFA at login

#[test]
fn login_without_mfa_or_with_stale_auth_gets_no_session() {
    // Without step-up (with it, the same logins go back to the IdP once: auth_step_up.rs).
    let env = login_env(|c, _| c.issuers[0].extra.push("step-up = false".into()));
    let cases = [
        (
            "carol, password only",
            LoginAs::user("carol"),
            "mfa_required",
        ),
        (
            "alice, auth_time 13 h ago",
            LoginAs::user("alice").auth_time(now() - 13 * 3600),
            "auth_too_old",
        ),
        (
            "bob, sfa acr and pwd amr",
            LoginAs::user("bob").acr(SFA_ACR).amr("pwd"),
            "mfa_required",
        ),
    ];
    let mut not_counted = vec![];
    for (what, who, reason) in cases {
        let before = env.px.denials(reason);
        let mut b = Browser::html();
        let r = login(&env, &mut b, &who, "/user/alice/lab");
        assert_eq!(r.status, 403, "{what}: {}", r.describe());
        assert_generic_body(&r, what);
        match set_cookie(&r, SESSION_COOKIE) {
            None => {}
            Some(c) => assert!(c.is_removal(), "{what}: session cookie set: {c:?}"),
        }
        if env.px.denials(reason) <= before {
            not_counted.push(format!("{what}: reason={reason}"));
        }
        env.px.wait_for_output(reason, Duration::from_secs(2));
        assert!(
            env.px.output().contains(reason),
            "{what}: {reason} not logged"
        );
        // And no way in with whatever the browser holds.
        let r = b.send(
            env.port,
            Req::get("/user/alice/api/x").header("Accept", "application/json"),
        );
        assert_api_denial(&r, 401, what);
    }
    assert_eq!(env.alice.count(), 0);
    // An MFA login via hardware key is fine.
    let mut b = Browser::html();
    let r = login(
        &env,
        &mut b,
        &LoginAs::user("carol").amr("pwd,hwk"),
        "/hub/home",
    );
    assert_eq!(r.status, 302, "{}", r.describe());
    assert_eq!(local_location(&r, env.port), "/hub/home");
    let r = b.send(env.port, Req::get("/hub/home"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        env.hub
            .last()
            .unwrap()
            .header("x-auth-request-user")
            .as_deref(),
        Some("carol")
    );
    assert!(
        not_counted.is_empty(),
        "login refusals missing from hubgate_auth_decisions_total: {not_counted:?}"
    );
}

// ------------------------------------------------------------------ callback forgery

#[test]
fn callback_requires_matching_state_cookie_and_iss() {
    let env = login_env(|_, _| {});
    let port = env.port;
    let mut b = Browser::html();
    // One login attempt up to the IdP's redirect back: (callback path, state, code).
    let attempt = |b: &mut Browser| {
        let start = login_start(b, port, "/user/alice/lab");
        let cb = env.idp.authorize(
            b,
            &start.auth_url,
            &LoginAs::user("alice"),
            &callback_prefix(port),
        );
        let path = cb
            .strip_prefix(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .to_string();
        (
            path,
            query_param(&cb, "state").unwrap(),
            query_param(&cb, "code").unwrap(),
        )
    };
    let cb_with = |code: &str, state: &str, iss: &str| {
        format!(
            "/_hubgate/oidc/callback?{}",
            form(&[("code", code), ("state", state), ("iss", iss)])
        )
    };
    let no_session = |what: &str, r: &Response, statuses: &[u16]| {
        assert!(
            statuses.contains(&r.status),
            "{what}: expected one of {statuses:?}, got {}",
            r.describe()
        );
        if let Some(c) = set_cookie(r, SESSION_COOKIE) {
            assert!(c.is_removal(), "{what}: session issued: {c:?}");
        }
        assert_generic_body(r, what);
    };
    let four = [400, 401, 403];
    // Without the login cookie (another browser).
    let (path, _, _) = attempt(&mut b);
    let mut other = Browser::html();
    let r = other.send(port, Req::get(&path));
    no_session("no login cookie", &r, &four);
    // Tampered state.
    let (_, state, code) = attempt(&mut b);
    let r = b.send(
        port,
        Req::get(&cb_with(&code, &format!("{state}x"), &env.idp.issuer)),
    );
    no_session("tampered state", &r, &four);
    // Wrong iss (RFC 9207 mix-up defence).
    let (_, state, code) = attempt(&mut b);
    let r = b.send(
        port,
        Req::get(&cb_with(&code, &state, "http://127.0.0.1:1")),
    );
    no_session("wrong iss", &r, &four);
    // An error answer from the IdP.
    let (_, state, _) = attempt(&mut b);
    let r = b.send(
        port,
        Req::get(&format!(
            "/_hubgate/oidc/callback?{}",
            form(&[("error", "access_denied"), ("state", &state)])
        )),
    );
    no_session("error=access_denied", &r, &four);
    assert_eq!(env.alice.count(), 0);

    // The genuine callback works; replaying it (login cookie included) mints nothing.
    let (path, _, _) = attempt(&mut b);
    let login_cookie = b.jar.get(port, LOGIN_COOKIE).expect("login cookie").value;
    let r = b.send(port, Req::get(&path));
    assert_eq!(r.status, 302, "genuine callback: {}", r.describe());
    let sc = session_of(&r);
    assert!(!sc.value.is_empty());
    let r = try_http(
        port,
        &Req::get(&path)
            .header("Accept", "text/html")
            .header("Cookie", &format!("{LOGIN_COOKIE}={login_cookie}")),
    )
    .unwrap();
    no_session("replayed callback", &r, &[400, 401, 403, 502]);
}

// ------------------------------------------------------------------ ID-token checks (fake IdP)

#[test]
fn callback_verifies_the_id_token_and_uses_pkce() {
    let p = pool();
    let key = p.rsa[2].with_kid("fake-idp");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::new(&stub.issuer); // discovery from the stub
    iss.client_id = Some("hubgate".into());
    // MFA refusals end here rather than in a step-up request (auth_step_up.rs).
    iss.extra.push("step-up = false".into());
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let (_hub, alice, _bob) = routes(&px);
    let ok_claims = |nonce: &str| id_token_claims(&stub.issuer, "alice", "hubgate", nonce);

    // Control: a correct ID token gives a session, and the token request used PKCE.
    let mut b = Browser::html();
    let start = login_start(&mut b, port, "/user/alice/lab");
    assert!(
        start
            .auth_url
            .starts_with(&format!("{}/auth?", stub.issuer)),
        "{}",
        start.auth_url
    );
    let r = fake_idp_callback(
        &mut b,
        port,
        &stub,
        &start,
        &mint(&key, &ok_claims(&start.nonce)),
    );
    assert_eq!(r.status, 302, "{}", r.describe());
    let sc = session_of(&r);
    let treq = stub.token_requests().pop().expect("no token request");
    let f = |n: &str| {
        treq.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("token request lacks {n}: {treq:?}"))
    };
    assert_eq!(f("grant_type"), "authorization_code");
    assert_eq!(f("redirect_uri"), callback_prefix(port));
    assert_eq!(
        b64url(&sha256(f("code_verifier").as_bytes())),
        start.code_challenge,
        "S256(code_verifier) != code_challenge"
    );
    assert!(f("code_verifier").len() >= 43);
    let r = b.send(port, Req::get("/user/alice/lab"));
    assert_eq!(r.status, 200, "{}", r.describe());
    px.assert_not_logged(&sc.value);

    // A forged state never reaches the token endpoint (validate before exchanging).
    let n_token = stub.token_requests().len();
    let mut b = Browser::html();
    let start = login_start(&mut b, port, "/");
    let q = form(&[("code", "c"), ("state", "forged"), ("iss", &stub.issuer)]);
    let r = b.send(port, Req::get(&format!("/_hubgate/oidc/callback?{q}")));
    assert!((400..500).contains(&r.status), "{}", r.describe());
    let q = form(&[
        ("code", "c"),
        ("state", &start.state),
        ("iss", "http://127.0.0.1:1"),
    ]);
    let r = b.send(port, Req::get(&format!("/_hubgate/oidc/callback?{q}")));
    assert!((400..500).contains(&r.status), "{}", r.describe());
    assert_eq!(
        stub.token_requests().len(),
        n_token,
        "code exchanged although state/iss were wrong"
    );

    // Bad ID tokens: no session.
    let other = p.rsa[3].with_kid("fake-idp");
    let t = now();
    let cases: Vec<(&str, Box<MakeToken>)> = vec![
        (
            "wrong nonce",
            Box::new(|_n| mint(&key, &ok_claims("not-the-nonce"))),
        ),
        (
            "no nonce",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c.as_object_mut().unwrap().remove("nonce");
                mint(&key, &c)
            }),
        ),
        (
            "aud is the API audience, not the client",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c["aud"] = json!("jupyterhub");
                mint(&key, &c)
            }),
        ),
        (
            "no MFA",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c["acr"] = json!(SFA_ACR);
                c["amr"] = json!(["pwd"]);
                mint(&key, &c)
            }),
        ),
        (
            "auth_time too old",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c["auth_time"] = json!(t - 50000);
                mint(&key, &c)
            }),
        ),
        (
            "expired",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c["exp"] = json!(t - 3600);
                mint(&key, &c)
            }),
        ),
        (
            "signed by another key",
            Box::new(|n| mint(&other, &ok_claims(n))),
        ),
        (
            "wrong issuer",
            Box::new(|n| {
                let mut c = ok_claims(n);
                c["iss"] = json!("http://127.0.0.1:1");
                mint(&key, &c)
            }),
        ),
        (
            "alg none",
            Box::new(|n| {
                raw_token(
                    &json!({"alg": "none", "kid": "fake-idp"}).to_string(),
                    &ok_claims(n).to_string(),
                    "",
                )
            }),
        ),
    ];
    for (what, make) in &cases {
        let mut b = Browser::html();
        let start = login_start(&mut b, port, "/user/alice/lab");
        let r = fake_idp_callback(&mut b, port, &stub, &start, &make(&start.nonce));
        assert!(
            r.status == 401 || r.status == 403 || r.status == 400,
            "{what}: {}",
            r.describe()
        );
        assert_generic_body(&r, what);
        if let Some(c) = set_cookie(&r, SESSION_COOKIE) {
            assert!(c.is_removal(), "{what}: session issued: {c:?}");
        }
    }
    // Token endpoint failure: no session either.
    let mut b = Browser::html();
    let start = login_start(&mut b, port, "/");
    stub.set_token_response(None);
    let q = form(&[
        ("code", "c"),
        ("state", &start.state),
        ("iss", &stub.issuer),
    ]);
    let r = b.send(port, Req::get(&format!("/_hubgate/oidc/callback?{q}")));
    assert!(
        (400..600).contains(&r.status) && r.status != 500,
        "{}",
        r.describe()
    );
    assert!(set_cookie(&r, SESSION_COOKIE)
        .map(|c| c.is_removal())
        .unwrap_or(true));
    assert_eq!(alice.count(), 1, "only the control request reached alice");
}

// ----------------------------------------------------------------- cookie scoping: session cookies

#[test]
fn row14_session_cookie_tampering_foreign_deployment_restart_and_lifetime() {
    let p = pool();
    let key = p.rsa[2].with_kid("fake-idp");
    let stub = JwksStub::start(&[&key]);
    let secrets = TempDir::new("sess");
    let secret_a = secret_file(&secrets, "a", "session-secret-A-0123456789abcdef0123");
    let secret_b = secret_file(&secrets, "b", "session-secret-B-0123456789abcdef0123");
    let mk = |port: u16, secret: &std::path::Path, lifetime: u64| {
        let mut iss = IssuerCfg::new(&stub.issuer);
        iss.client_id = Some("hubgate".into());
        let mut cfg = AuthCfg::new(port, vec![iss]);
        cfg.session_secret_file = Some(secret.to_path_buf());
        cfg.session_lifetime = lifetime;
        cfg
    };
    let port_a = free_port();
    let mut px_a = start_ready(port_a, &mk(port_a, &secret_a, 28800));
    let (_h, alice_a, _b) = routes(&px_a);
    let port_b = free_port();
    let px_b = start_ready(port_b, &mk(port_b, &secret_b, 28800));

    let good = fake_session(port_a, &stub, &key, "alice");
    let with_cookie = |port: u16, v: &str| {
        try_http(
            port,
            &Req::get("/user/alice/api/x").header("Cookie", &format!("{SESSION_COOKIE}={v}")),
        )
        .unwrap()
    };
    let r = with_cookie(port_a, &good);
    assert_eq!(r.status, 200, "{}", r.describe());

    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut last = good.clone().into_bytes();
    let j = last.len() - 1;
    last[j] = if last[j] == b'A' { b'Q' } else { b'A' };
    let last = String::from_utf8(last).unwrap();
    let foreign = fake_session(port_b, &stub, &key, "alice");
    let before = px_a.denials("bad_session");
    alice_a.clear();
    for (what, v) in [
        ("one character flipped", flipped.as_str()),
        ("last character changed", last.as_str()),
        ("truncated", &good[..good.len() - 4]),
        ("empty", ""),
        ("garbage", "x.y.z"),
        ("another deployment's cookie", foreign.as_str()),
    ] {
        let r = with_cookie(port_a, v);
        assert_api_denial(&r, 401, what);
    }
    assert_not_called(&alice_a, "tampered cookies");
    assert!(
        px_a.denials("bad_session") - before >= 5.0,
        "reason=bad_session"
    );
    px_a.assert_not_logged(&good);

    // Same secret file: the session survives a restart.
    px_a.hg.terminate(Duration::from_secs(10));
    drop(px_a);
    let px_a2 = start_ready(port_a, &mk(port_a, &secret_a, 28800));
    let (_h2, _a2, _b2) = routes(&px_a2);
    let r = with_cookie(port_a, &good);
    assert_eq!(
        r.status,
        200,
        "cookie after restart with the same secret: {}",
        r.describe()
    );
    drop(px_b);

    // Session lifetime: Max-Age bounded, and enforced by hubgate itself.
    let port_c = free_port();
    let px_c = start_ready(port_c, &mk(port_c, &secret_a, 3));
    let (_h3, _a3, _b3) = routes(&px_c);
    let mut b = Browser::html();
    let start = login_start(&mut b, port_c, "/");
    let tok = mint(
        &key,
        &id_token_claims(&stub.issuer, "alice", "hubgate", &start.nonce),
    );
    let r = fake_idp_callback(&mut b, port_c, &stub, &start, &tok);
    let sc = session_of(&r);
    let ma: i64 = sc.attr("max-age").expect("Max-Age").parse().unwrap();
    assert!(ma > 0 && ma <= 3, "Max-Age {ma} > session-lifetime 3");
    assert_eq!(with_cookie(port_c, &sc.value).status, 200);
    std::thread::sleep(Duration::from_millis(4200));
    let r = with_cookie(port_c, &sc.value);
    assert_api_denial(&r, 401, "session past its lifetime");
    drop(secrets);
}

// ------------------------------------------------------------------ open redirects

#[test]
fn row15_next_is_kept_only_for_same_origin_paths() {
    let env = login_env(|_, _| {});
    let port = env.port;
    let mut b = Browser::html();
    // First login establishes the IdP session; later logins come straight back.
    let r = login(&env, &mut b, &LoginAs::user("alice"), "/user/alice/lab?x=1");
    assert_eq!(r.status, 302, "{}", r.describe());
    assert_eq!(local_location(&r, port), "/user/alice/lab?x=1");

    let base_ok = |loc: &str| loc == "/" || loc == format!("http://127.0.0.1:{port}/");
    let evil = [
        "https://evil.com".to_string(),
        "https://evil.com/".to_string(),
        "//evil.com".to_string(),
        "///evil.com".to_string(),
        "/\\evil.com".to_string(),
        "\\/evil.com".to_string(),
        "\\\\evil.com".to_string(),
        "/ /evil.com".to_string(),
        "/\t/evil.com".to_string(),
        "/\n/evil.com".to_string(),
        "https:evil.com".to_string(),
        "http:/evil.com".to_string(),
        "javascript:alert(1)".to_string(),
        "data:text/html,hi".to_string(),
        "https://hub.example.com.evil.com".to_string(),
        format!("http://127.0.0.1:{port}.evil.com/"),
        format!("http://127.0.0.1:{port}@evil.com/"),
        "https://evil.com\\@127.0.0.1".to_string(),
        "evil.com".to_string(),
        "".to_string(),
    ];
    for next in &evil {
        let r = b.send(
            port,
            Req::get(&format!("/_hubgate/login?{}", form(&[("next", next)]))),
        );
        if r.status == 400 {
            continue;
        }
        assert_eq!(r.status, 302, "next={next:?}: {}", r.describe());
        let to = r.header("location").unwrap().to_string();
        assert!(
            to.starts_with(&env.idp.issuer),
            "next={next:?}: login went to {to}"
        );
        let cb = env
            .idp
            .authorize(&mut b, &to, &LoginAs::user("alice"), &callback_prefix(port));
        let r = b.get(&cb);
        assert_eq!(r.status, 302, "next={next:?}: {}", r.describe());
        let loc = r.header("location").unwrap();
        assert!(
            base_ok(loc),
            "next={next:?} redirected to {loc:?} (want the base URL)"
        );
    }
    // Ambiguous but same-origin values: whatever is kept must stay on this origin.
    for next in [
        "/user/alice/@evil.com",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        &format!("/{}", "a".repeat(10_000)),
    ] {
        let r = b.send(
            port,
            Req::get(&format!("/_hubgate/login?{}", form(&[("next", next)]))),
        );
        // 400: refused by the login; 414: a request line over the front door's limit
        // (`limits.max-request-line-bytes`, 8 KiB) never reaches it.
        if r.status == 400 || r.status == 414 {
            continue;
        }
        let to = r.header("location").unwrap().to_string();
        let cb = env
            .idp
            .authorize(&mut b, &to, &LoginAs::user("alice"), &callback_prefix(port));
        let r = b.get(&cb);
        assert_eq!(r.status, 302, "next={next:?}: {}", r.describe());
        let loc = local_location(&r, port);
        let bytes = loc.as_bytes();
        assert!(
            bytes.first() == Some(&b'/')
                && bytes.get(1) != Some(&b'/')
                && bytes.get(1) != Some(&b'\\')
                && !loc.contains('\\')
                && !loc.chars().any(|c| c.is_whitespace() || c.is_control()),
            "next={next:?} redirected off-origin: {loc:?}"
        );
    }
    // The login endpoint itself never redirects to next.
    let r = b.send(
        port,
        Req::get("/_hubgate/login?next=https%3A%2F%2Fevil.com"),
    );
    if r.status == 302 {
        assert!(r.header("location").unwrap().starts_with(&env.idp.issuer));
    }
    assert_eq!(env.hub.count() + env.alice.count() + env.bob.count(), 0);
}

// ------------------------------------------------------------------ confidential client

#[test]
fn confidential_client_with_eddsa_id_tokens() {
    let p = pool();
    let port = free_port();
    let idp = OidcProvider::start(
        ProviderOptions::new(&[&p.rsa[1].with_kid("idp-rsa"), &p.ed[1].with_kid("idp-ed")])
            .hubgate_port(port)
            .client_secret("s3cret-for-hubgate")
            .id_token_alg("EdDSA"),
    );
    let dir = TempDir::new("conf");
    let mut iss = IssuerCfg::new(&idp.issuer);
    iss.client_id = Some("hubgate-confidential".into());
    iss.client_secret_file = Some(secret_file(&dir, "client-secret", "s3cret-for-hubgate\n"));
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let (_hub, alice, _bob) = routes(&px);
    let env = LoginEnv {
        idp,
        px,
        port,
        hub: Backend::echo(),
        alice: Backend::echo(),
        bob: Backend::echo(),
        _dir: dir,
    };
    let mut b = Browser::html();
    let r = login(&env, &mut b, &LoginAs::user("alice"), "/user/alice/");
    assert_eq!(r.status, 302, "{}", r.describe());
    session_of(&r);
    let r = b.send(port, Req::get("/user/alice/"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(alice.count(), 1);
    assert!(
        !env.px.output().contains("s3cret-for-hubgate"),
        "client secret logged"
    );
}
