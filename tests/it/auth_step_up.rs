//! Step-up instead of a dead end (docs/security.md, "Step-up"): a genuine login that lacks
//! MFA or is too old goes back to the real OpenID provider once, asking for what is missing
//! (`prompt=login`, `max_age`, `acr_values`); a provider that still does not deliver ends on
//! a page, never in a loop; API clients get the RFC 9470 challenge. The provider runs with
//! `--step-up-mfa`: it adds the second factor only when the request asks for it.

use crate::support::auth_proxy::*;
use crate::support::browser::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

pub(crate) struct Env {
    pub idp: OidcProvider,
    pub px: AuthProxy,
    pub port: u16,
    pub alice: Backend,
    pub services: Backend,
    _peers: [Backend; 2],
    _dir: TempDir,
}

pub(crate) fn callback_prefix(port: u16) -> String {
    format!("http://127.0.0.1:{port}/_hubgate/oidc/callback")
}

/// The real provider (step-up mode as asked) and hubgate with a browser login through it;
/// `tweak` edits the configuration. Routes: `/` (hub), `/user/alice`, `/user/bob`,
/// `/services/`.
pub(crate) fn env(step_up_mfa: bool, tweak: impl FnOnce(&mut AuthCfg)) -> Env {
    let p = pool();
    let port = free_port();
    let mut opts = ProviderOptions::new(&[&p.rsa[1].with_kid("idp-rsa")]).hubgate_port(port);
    if step_up_mfa {
        opts = opts.step_up_mfa();
    }
    let idp = OidcProvider::start(opts);
    let mut iss = IssuerCfg::new(&idp.issuer);
    iss.client_id = Some("hubgate".into());
    let mut cfg = AuthCfg::new(port, vec![iss]);
    let dir = TempDir::new("step-up");
    cfg.session_secret_file = Some(secret_file(
        &dir,
        "session",
        "0123456789abcdef0123456789abcdef-s",
    ));
    tweak(&mut cfg);
    let px = start_ready(port, &cfg);
    let (hub, alice, bob) = crate::auth_login::routes(&px);
    let services = Backend::echo();
    px.add_route_json("/services", &json!({"target": services.url()}).to_string());
    Env {
        idp,
        px,
        port,
        alice,
        services,
        _peers: [hub, bob],
        _dir: dir,
    }
}

/// Follows the provider's login for `who` from `auth_url` and brings its answer to hubgate's
/// callback; returns the callback's response.
pub(crate) fn through_idp(env: &Env, b: &mut Browser, auth_url: &str, who: &LoginAs) -> Response {
    let back = env
        .idp
        .authorize(b, auth_url, who, &callback_prefix(env.port));
    b.get(&back)
}

/// The step-up redirect a callback answered with: to the provider, asking for MFA and a fresh
/// login, with a new login state and no session.
fn assert_step_up_request(env: &Env, r: &Response, what: &str) -> String {
    assert_step_up_with(env, r, what, "43200")
}

fn assert_step_up_with(env: &Env, r: &Response, what: &str, max_age: &str) -> String {
    assert_eq!(r.status, 302, "{what}: {}", r.describe());
    let to = r.header("location").unwrap().to_string();
    assert!(
        to.starts_with(&format!("{}/auth?", env.idp.issuer)),
        "{what}: {to}"
    );
    assert_eq!(query_param(&to, "prompt").as_deref(), Some("login"), "{to}");
    assert_eq!(
        query_param(&to, "max_age").as_deref(),
        Some(max_age),
        "{to}"
    );
    assert_eq!(
        query_param(&to, "acr_values").as_deref(),
        Some(MFA_ACR),
        "{to}"
    );
    assert_eq!(
        query_param(&to, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let lc = set_cookie(r, LOGIN_COOKIE).expect("a new login-state cookie");
    assert!(!lc.is_removal(), "{lc:?}");
    if let Some(c) = set_cookie(r, SESSION_COOKIE) {
        assert!(c.is_removal(), "{what}: session issued: {c:?}");
    }
    to
}

#[test]
fn the_provider_adds_the_second_factor_when_asked() {
    let env = env(true, |_| {});
    let port = env.port;
    let mut b = Browser::html();
    // The browser meets hubgate's login; the provider's first answer is password-only.
    let r = b.send(port, Req::get("/user/alice/lab?tab=1"));
    assert_eq!(r.status, 302, "{}", r.describe());
    let start = login_start(&mut b, port, "/user/alice/lab?tab=1");
    assert!(
        query_param(&start.auth_url, "prompt").is_none()
            && query_param(&start.auth_url, "acr_values").is_none(),
        "a first login asks for nothing special: {}",
        start.auth_url
    );
    let before = env.px.denials("mfa_required");
    let r = through_idp(&env, &mut b, &start.auth_url, &LoginAs::user("alice"));
    let step_up = assert_step_up_request(&env, &r, "password-only login");
    assert_eq!(env.px.denials("mfa_required"), before + 1.0);
    env.px
        .wait_for_output("step-up: asking", Duration::from_secs(5));

    // Asked for MFA, the provider shows its login again and issues the MFA claims.
    let r = through_idp(&env, &mut b, &step_up, &LoginAs::user("alice"));
    assert_eq!(r.status, 302, "after step-up: {}", r.describe());
    assert_eq!(r.header("location"), Some("/user/alice/lab?tab=1"));
    let sc = set_cookie(&r, SESSION_COOKIE).expect("session after step-up");
    assert!(!sc.is_removal());
    let r = b.send(port, Req::get("/user/alice/lab?tab=1"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        env.alice
            .last()
            .unwrap()
            .header("x-auth-request-user")
            .as_deref(),
        Some("alice")
    );
}

#[test]
fn a_provider_that_cannot_deliver_ends_on_a_page_not_a_loop() {
    let env = env(true, |_| {});
    let port = env.port;
    let mut b = Browser::html();
    // carol has no second factor: the provider answers the step-up password-only again.
    let start = login_start(&mut b, port, "/hub/home");
    let r = through_idp(&env, &mut b, &start.auth_url, &LoginAs::user("carol"));
    let step_up = assert_step_up_request(&env, &r, "carol's first login");
    let r = through_idp(&env, &mut b, &step_up, &LoginAs::user("carol"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(r.header("location").is_none(), "{}", r.describe());
    assert_eq!(r.media_type().as_deref(), Some("text/html"));
    let text = r.text();
    assert!(
        text.contains("<h1>403: Second factor needed</h1>"),
        "{text}"
    );
    assert!(text.contains("What to do next"), "{text}");
    assert!(
        text.contains("href=\"/_hubgate/login?next=%2Fhub%2Fhome\""),
        "{text}"
    );
    assert_generic_body(&r, "step-up not satisfied");
    if let Some(c) = set_cookie(&r, SESSION_COOKIE) {
        assert!(c.is_removal(), "session issued: {c:?}");
    }
    let lc = set_cookie(&r, LOGIN_COOKIE).expect("login state cleared");
    assert!(lc.is_removal(), "{lc:?}");
    env.px
        .wait_for_output("step-up not satisfied", Duration::from_secs(5));
    // Still nothing gets through with what the browser holds.
    let r = b.send(port, Req::get("/hub/home"));
    assert_eq!(r.status, 302, "{}", r.describe());
    assert!(r
        .header("location")
        .unwrap()
        .contains("/_hubgate/login?next="));
    // A replay of the step-up login state cannot restart the cycle either: it is gone.
    let r = b.send(port, Req::get("/_hubgate/oidc/callback?code=x&state=y"));
    assert_eq!(r.status, 400, "{}", r.describe());
}

#[test]
fn a_stale_login_is_refreshed_with_max_age() {
    let env = env(true, |_| {});
    let port = env.port;
    let mut b = Browser::html();
    // An MFA login 13 hours old (the provider's SSO session long ago): too old for hubgate.
    let stale = LoginAs::user("alice")
        .acr(MFA_ACR)
        .amr("pwd,otp")
        .auth_time(now() - 13 * 3600);
    let before = env.px.denials("auth_too_old");
    let start = login_start(&mut b, port, "/user/alice/");
    let r = through_idp(&env, &mut b, &start.auth_url, &stale);
    let step_up = assert_step_up_request(&env, &r, "stale login");
    assert_eq!(env.px.denials("auth_too_old"), before + 1.0);
    // The provider authenticates afresh (max_age / prompt=login): a session.
    let r = through_idp(&env, &mut b, &step_up, &LoginAs::user("alice"));
    assert_eq!(r.status, 302, "{}", r.describe());
    assert!(set_cookie(&r, SESSION_COOKIE).is_some_and(|c| !c.is_removal()));
    let r = b.send(port, Req::get("/user/alice/"));
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[test]
fn api_clients_get_the_rfc9470_challenge_and_step_up_can_be_off() {
    let env = env(true, |c| {
        c.issuers[0].max_auth_age = 3600;
        c.issuers[0]
            .extra
            .push("step-up-acr-values = [\"https://refeds.org/profile/mfa\", \"gold\"]".into());
    });
    // A real access token of a password-only login (nobody asked the provider for MFA).
    let tokens = env.idp.login(&LoginAs::user("alice"));
    let want = "Bearer realm=\"hubgate\", error=\"insufficient_user_authentication\", \
                error_description=\"A fresh multi-factor authentication is required\", \
                acr_values=\"https://refeds.org/profile/mfa gold\", max_age=\"3600\"";
    for (what, req) in [
        ("script", Req::get("/user/alice/api/contents")),
        (
            "XHR",
            Req::get("/user/alice/api/contents")
                .header("Accept", "text/html")
                .header("X-Requested-With", "XMLHttpRequest"),
        ),
    ] {
        let r = env.px.bearer(req, &tokens.access_token);
        assert_api_denial(&r, 401, what);
        assert_eq!(r.header("www-authenticate"), Some(want), "{what}");
    }
    // A browser sending the token gets the page with the challenge, not a redirect (it would
    // send the same token again after any login).
    let r = env.px.bearer(
        Req::get("/user/alice/lab").header("Accept", "text/html"),
        &tokens.access_token,
    );
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.header("www-authenticate"), Some(want));
    assert!(r.text().contains("second factor"), "{}", r.describe());
    assert_eq!(env.alice.count(), 0);
    env.px.assert_not_logged(&tokens.access_token);

    // step-up = false: the login refusal is the page it always was.
    let off = self::env(true, |c| c.issuers[0].extra.push("step-up = false".into()));
    let mut b = Browser::html();
    let start = login_start(&mut b, off.port, "/user/alice/");
    let r = through_idp(&off, &mut b, &start.auth_url, &LoginAs::user("alice"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(r.header("location").is_none());
    assert!(r.text().contains("second factor"), "{}", r.describe());
}

#[test]
fn a_session_that_became_too_old_steps_up_from_the_proxy() {
    let env = env(true, |_| {});
    let port = env.port;
    let mut b = Browser::html();
    // An MFA login 50 minutes ago: fine under max-auth-age 12 h.
    let earlier = LoginAs::user("alice")
        .acr(MFA_ACR)
        .amr("pwd,otp")
        .auth_time(now() - 3000);
    let start = login_start(&mut b, port, "/user/alice/");
    let r = through_idp(&env, &mut b, &start.auth_url, &earlier);
    assert_eq!(r.status, 302, "{}", r.describe());
    assert_eq!(b.send(port, Req::get("/user/alice/")).status, 200);

    // The operator tightens max-auth-age to 10 minutes (SIGHUP): the session is now too old.
    let text = std::fs::read_to_string(&env.px.config).unwrap();
    assert!(text.contains("max-auth-age-seconds = 43200"), "{text}");
    std::fs::write(
        &env.px.config,
        text.replace("max-auth-age-seconds = 43200", "max-auth-age-seconds = 600"),
    )
    .unwrap();
    let reloads = env.px.output().matches("[auth] reloaded").count();
    env.px.hg.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(15), || env
            .px
            .output()
            .matches("[auth] reloaded")
            .count()
            > reloads),
        "no reload: {}",
        env.px.output()
    );

    // A script with the cookie gets the challenge; the browser goes to the step-up login.
    let r = b.send(
        port,
        Req::get("/user/alice/api/x").header("Accept", "application/json"),
    );
    assert_api_denial(&r, 401, "session too old, script");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("max_age=\"600\"")));
    let r = b.send(port, Req::get("/user/alice/lab"));
    assert_eq!(r.status, 302, "{}", r.describe());
    let login = r.header("location").unwrap().to_string();
    assert_eq!(
        login,
        "/_hubgate/login?next=%2Fuser%2Falice%2Flab&idp=0&step_up=1"
    );
    let r = b.send(port, Req::get(&login));
    let step_up = assert_step_up_with(&env, &r, "session too old", "600");
    let r = through_idp(&env, &mut b, &step_up, &LoginAs::user("alice"));
    assert_eq!(r.status, 302, "{}", r.describe());
    assert_eq!(r.header("location"), Some("/user/alice/lab"));
    let r = b.send(port, Req::get("/user/alice/lab"));
    assert_eq!(r.status, 200, "{}", r.describe());
}
