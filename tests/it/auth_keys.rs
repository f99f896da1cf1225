//! Key sets (docs/security.md, signing keys and their fetching): fail-closed start,
//! stale-if-error with a hard limit, never replacing keys with an empty set, `oct` keys
//! refused, rate-limited refetch for unknown kids, rotation (stub and the real provider
//! with SIGHUP), removed keys purging cached tokens, the jwks-file source.

use crate::support::auth_proxy::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn healthz(px: &AuthProxy) -> u16 {
    try_http(px.port, &Req::get("/_chp_healthz"))
        .map(|r| r.status)
        .unwrap_or(0)
}

fn status_with(px: &AuthProxy, path: &str, token: &str) -> u16 {
    px.get_bearer(path, token).status
}

fn route_alice(px: &AuthProxy) -> Backend {
    let be = Backend::echo();
    px.add_route_json(
        "/user/alice",
        &json!({"target": be.url(), "user": "alice"}).to_string(),
    );
    be
}

fn oct_jwk(kid: &str) -> serde_json::Value {
    json!({"kty": "oct", "kid": kid, "k": b64url(b"symmetric-secret-0123456789abcdef"), "alg": "HS256", "use": "sig"})
}

// -------------------------------------------------------- JWKS fetch failure: fail closed at start

#[test]
fn row07a_no_keys_at_start_fails_closed_then_recovers() {
    let key = pool().rsa[0].with_kid("k1");
    let modes: Vec<(&str, JwksMode)> = vec![
        ("500", JwksMode::Status(500)),
        ("404", JwksMode::Status(404)),
        ("timeout", JwksMode::Hang),
        ("invalid JSON", JwksMode::Raw("{\"keys\": [".into())),
        ("not a key set", JwksMode::Raw("[1,2,3]".into())),
        ("empty key set", JwksMode::Json(json!({"keys": []}))),
        (
            "only an oct key",
            JwksMode::Json(json!({"keys": [oct_jwk("k1")]})),
        ),
        (
            "over 1 MiB",
            JwksMode::Raw(format!(
                "{{\"keys\": [{}], \"pad\": \"{}\"}}",
                key.public_jwk,
                "x".repeat(1_200_000)
            )),
        ),
    ];
    // All at once: one hubgate per failure mode.
    let mut running = vec![];
    for (what, mode) in modes {
        let stub = JwksStub::with_mode(mode);
        let port = free_port();
        let mut iss = IssuerCfg::stub(&stub);
        iss.refresh = 1;
        let px = start_auth_proxy(port, &AuthCfg::new(port, vec![iss]));
        let be = route_alice(&px);
        running.push((what, stub, px, be));
    }
    std::thread::sleep(Duration::from_millis(2500));
    for (what, stub, px, be) in &running {
        assert_eq!(
            healthz(px),
            503,
            "{what}: /_chp_healthz must be 503 while keyless"
        );
        let tok = mint(&key, &claims(&stub.issuer, "alice"));
        let before = px.denials("keys_unavailable");
        let r = px.get_bearer("/user/alice/", &tok);
        assert_eq!(
            r.status,
            503,
            "{what}: protected route while keyless: {}",
            r.describe()
        );
        assert_generic_body(&r, what);
        // No credential at all: still not let through.
        let r = px.get("/user/alice/");
        assert!(
            r.status == 503 || r.status == 401,
            "{what}: {}",
            r.describe()
        );
        assert_not_called(be, what);
        assert!(
            px.denials("keys_unavailable") > before,
            "{what}: reason=keys_unavailable"
        );
        // Public routes keep working (the hub's login page is not behind the IdP).
        let hub = Backend::echo();
        px.add_route_json("/hub", &json!({"target": hub.url()}).to_string());
        assert_eq!(
            px.get("/hub/login").status,
            200,
            "{what}: public route while keyless"
        );
        assert!(stub.jwks_hits() >= 1, "{what}: never fetched");
    }
    // The IdP comes back: hubgate recovers on its own.
    for (_, stub, _, _) in &running {
        stub.set_keys(&[&key]);
    }
    for (what, stub, px, be) in &running {
        let tok = mint(&key, &claims(&stub.issuer, "alice"));
        let ok = wait_until(Duration::from_secs(15), || healthz(px) == 200);
        assert!(ok, "{what}: not ready after the key set came back");
        assert_eq!(status_with(px, "/user/alice/", &tok), 200, "{what}");
        assert_eq!(be.count(), 1);
    }
}

// ------------------------------------------------------------------ JWKS fetch failure: stale keys

#[test]
fn row07b_empty_or_broken_answers_never_replace_good_keys() {
    let key = pool().rsa[0].with_kid("k1");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::stub(&stub);
    iss.refresh = 1;
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    let tok = mint(&key, &claims(&stub.issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &tok), 200);
    for (what, mode) in [
        ("empty set", JwksMode::Json(json!({"keys": []}))),
        ("only oct", JwksMode::Json(json!({"keys": [oct_jwk("k1")]}))),
        ("invalid JSON", JwksMode::Raw("not json".into())),
        ("500", JwksMode::Status(500)),
    ] {
        let hits = stub.jwks_hits();
        stub.set_mode(mode);
        assert!(
            wait_until(Duration::from_secs(6), || stub.jwks_hits() >= hits + 2),
            "{what}: no background refresh (refresh-seconds = 1)"
        );
        // A fresh token (not cached) with the old key still verifies.
        let fresh = mint(&key, &claims(&stub.issuer, "alice"));
        assert_eq!(
            status_with(&px, "/user/alice/", &fresh),
            200,
            "{what}: good keys dropped"
        );
        assert_eq!(healthz(&px), 200, "{what}: not ready any more");
        stub.set_keys(&[&key]);
    }
    assert!(be.count() >= 5);
}

#[test]
fn row07c_stale_keys_expire_after_max_stale() {
    let key = pool().rsa[0].with_kid("k1");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::stub(&stub);
    iss.refresh = 1;
    iss.max_stale = 4;
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    assert_eq!(
        status_with(
            &px,
            "/user/alice/",
            &mint(&key, &claims(&stub.issuer, "alice"))
        ),
        200
    );
    let t0 = Instant::now();
    stub.set_mode(JwksMode::Status(500));
    // Within max-stale: still served from the last good set.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_with(
            &px,
            "/user/alice/",
            &mint(&key, &claims(&stub.issuer, "alice"))
        ),
        200,
        "stale keys must be used while the IdP is down (< max-stale)"
    );
    // Beyond max-stale (4 s after the last good fetch, + refresh period + slack): 503.
    let gone = wait_until(Duration::from_secs(10), || {
        status_with(
            &px,
            "/user/alice/",
            &mint(&key, &claims(&stub.issuer, "alice")),
        ) == 503
    });
    assert!(
        gone,
        "keys older than max-stale still used after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "dropped too early: {:?}",
        t0.elapsed()
    );
    assert_eq!(healthz(&px), 503, "not ready once the keys are gone");
    let n = be.count();
    // Back again.
    stub.set_keys(&[&key]);
    assert!(wait_until(Duration::from_secs(10), || healthz(&px) == 200));
    assert_eq!(
        status_with(
            &px,
            "/user/alice/",
            &mint(&key, &claims(&stub.issuer, "alice"))
        ),
        200
    );
    assert_eq!(be.count(), n + 1);
}

// ------------------------------------------------------------------ alg confusion: oct keys

#[test]
fn row01_oct_keys_in_the_set_are_ignored() {
    let rsa = pool().rsa[0].with_kid("k-rsa");
    let stub = JwksStub::with_mode(JwksMode::Json(json!({"keys": [
        oct_jwk("sym"),
        oct_jwk("k-rsa-dup"),
        rsa.public_jwk,
    ]})));
    let port = free_port();
    let px = start_ready(port, &AuthCfg::new(port, vec![IssuerCfg::stub(&stub)]));
    let be = route_alice(&px);
    assert_eq!(
        status_with(
            &px,
            "/user/alice/",
            &mint(&rsa, &claims(&stub.issuer, "alice"))
        ),
        200,
        "the RSA key next to oct keys must load"
    );
    be.clear();
    let payload = claims(&stub.issuer, "alice").to_string();
    for kid in ["sym", "k-rsa-dup"] {
        let t = sign_hs256(
            &json!({"alg": "HS256", "kid": kid}).to_string(),
            &payload,
            b"symmetric-secret-0123456789abcdef",
        );
        let r = px.get_bearer("/user/alice/", &t);
        assert_api_denial(&r, 401, &format!("HS256 with oct kid {kid}"));
    }
    assert_not_called(&be, "oct");
}

// ------------------------------------------------------------------ kid abuse: refetch rate limit

#[test]
fn row06_unknown_kids_cause_at_most_one_refetch_per_interval() {
    let key = pool().rsa[0].with_kid("k1");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::stub(&stub);
    iss.min_refetch = 3;
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    // Let a full interval pass since the start-up fetch.
    std::thread::sleep(Duration::from_millis(3200));
    let h0 = stub.jwks_hits();
    let unknown = pool().rsa[1].with_kid("not-published");
    let before = px.denials("unknown_key");
    let r = px.get_bearer(
        "/user/alice/",
        &mint(&unknown, &claims(&stub.issuer, "alice")),
    );
    assert_api_denial(&r, 401, "unknown kid");
    assert_eq!(
        stub.jwks_hits(),
        h0 + 1,
        "exactly one refetch for an unknown kid"
    );
    assert_eq!(
        px.denials("unknown_key") - before,
        1.0,
        "reason=unknown_key"
    );

    // A flood of random kids within the interval: no further fetches.
    let t0 = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let issuer = stub.issuer.clone();
            let k = pool().rsa[1].clone();
            let sent = sent.clone();
            let port = px.port;
            std::thread::spawn(move || {
                let payload = claims(&issuer, "alice").to_string();
                for i in 0..60 {
                    let h = json!({"alg": "RS256", "kid": format!("rnd-{t}-{i}")}).to_string();
                    let tok = sign_raw(&h, &payload, &k, jsonwebtoken::Algorithm::RS256);
                    let r = http(
                        port,
                        &Req::get("/user/alice/").header("Authorization", &format!("Bearer {tok}")),
                    );
                    assert_eq!(r.status, 401);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = t0.elapsed();
    assert_eq!(sent.load(Ordering::SeqCst), 240);
    let extra = stub.jwks_hits() - (h0 + 1);
    let allowed = (took.as_secs_f64() / 3.0).ceil() as usize;
    assert!(
        extra <= allowed,
        "{extra} refetches for 240 unknown kids in {took:?} (min-refetch 3 s allows {allowed})"
    );
    assert_not_called(&be, "unknown kids");
}

// -------------------------------------------------------------- key rotation, cached tokens purged

#[test]
fn row08_row20_rotation_with_the_stub_and_cache_purge() {
    let a = pool().rsa[0].with_kid("A");
    let b = pool().ec[0].with_kid("B");
    let stub = JwksStub::start(&[&a]);
    let port = free_port();
    let mut iss = IssuerCfg::stub(&stub);
    iss.min_refetch = 1;
    iss.refresh = 2;
    let mut cfg = AuthCfg::new(port, vec![iss]);
    cfg.cache_ttl = 60;
    let px = start_ready(port, &cfg);
    let be = route_alice(&px);
    let tok_a = mint(&a, &claims(&stub.issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &tok_a), 200);
    assert_eq!(status_with(&px, "/user/alice/", &tok_a), 200); // now cached
    std::thread::sleep(Duration::from_millis(1100));

    // The IdP adds B and signs with it: the first B token triggers a refetch and passes.
    stub.set_keys(&[&b, &a]);
    let tok_b = mint(&b, &claims(&stub.issuer, "alice"));
    assert_eq!(
        status_with(&px, "/user/alice/", &tok_b),
        200,
        "new kid after refetch"
    );
    assert_eq!(
        status_with(&px, "/user/alice/", &tok_a),
        200,
        "old kid still published"
    );

    // The IdP drops A: A tokens (even cached ones) are refused after the next refresh.
    stub.set_keys(&[&b]);
    let t0 = Instant::now();
    let refused = wait_until(Duration::from_secs(8), || {
        status_with(&px, "/user/alice/", &tok_a) == 401
    });
    assert!(
        refused,
        "cached token with a removed kid still accepted {:?} after removal",
        t0.elapsed()
    );
    let fresh_a = mint(&a, &claims(&stub.issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &fresh_a), 401);
    assert_eq!(status_with(&px, "/user/alice/", &tok_b), 200);
    assert!(be.count() >= 5);
}

#[test]
fn row08_rotation_at_the_real_provider_with_sighup() {
    let p = pool();
    let k1 = p.rsa[1].with_kid("rs256-k1");
    let k2 = p.rsa[2].with_kid("rs256-k2");
    let idp = OidcProvider::start(ProviderOptions::new(&[&k1]));
    let port = free_port();
    let mut iss = IssuerCfg::new(&idp.issuer); // discovery
    iss.min_refetch = 1;
    iss.refresh = 2;
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    let t1 = idp.login(&LoginAs::user("alice")).access_token;
    assert_eq!(jwt_header(&t1)["kid"], json!("rs256-k1"));
    assert_eq!(status_with(&px, "/user/alice/", &t1), 200);
    std::thread::sleep(Duration::from_millis(1100));

    idp.rotate(&[&k2, &k1]);
    assert_eq!(idp.published_kids(), vec!["rs256-k2", "rs256-k1"]);
    let t2 = idp.login(&LoginAs::user("alice")).access_token;
    assert_eq!(jwt_header(&t2)["kid"], json!("rs256-k2"));
    assert_eq!(
        status_with(&px, "/user/alice/", &t2),
        200,
        "new provider key"
    );
    assert_eq!(
        status_with(&px, "/user/alice/", &t1),
        200,
        "old key still published"
    );

    idp.rotate(&[&k2]);
    let refused = wait_until(Duration::from_secs(8), || {
        status_with(&px, "/user/alice/", &t1) == 401
    });
    assert!(
        refused,
        "token signed by a retired provider key still accepted"
    );
    assert_eq!(status_with(&px, "/user/alice/", &t2), 200);
    let t3 = idp.login(&LoginAs::user("alice")).access_token;
    assert_eq!(status_with(&px, "/user/alice/", &t3), 200);
    assert!(be.count() >= 4);
    px.assert_not_logged(&t1);
}

// ------------------------------------------------------------------ other key sources

#[test]
fn jwks_file_source_is_reread() {
    let a = pool().ec[0].with_kid("file-a");
    let b = pool().ed[0].with_kid("file-b");
    let dir = TempDir::new("jwksfile");
    let file = dir.write("jwks.json", jwks_public(&[&a]).to_string());
    let issuer = "https://idp.example.org/realms/hpc";
    let port = free_port();
    let mut iss = IssuerCfg::new(issuer);
    iss.jwks_file = Some(file.clone());
    iss.refresh = 1;
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    let ta = mint(&a, &claims(issuer, "alice"));
    let tb = mint(&b, &claims(issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &ta), 200);
    assert_eq!(status_with(&px, "/user/alice/", &tb), 401);
    // Atomic replace, like a config-management tool would.
    let tmp = dir.write("jwks.json.new", jwks_public(&[&b]).to_string());
    std::fs::rename(&tmp, &file).unwrap();
    assert!(
        wait_until(Duration::from_secs(8), || status_with(
            &px,
            "/user/alice/",
            &tb
        ) == 200),
        "new key from the re-read file not used"
    );
    assert!(
        wait_until(Duration::from_secs(4), || status_with(
            &px,
            "/user/alice/",
            &ta
        ) == 401),
        "key removed from the file still used"
    );
    // An empty file later does not wipe the keys.
    std::fs::write(&file, "{\"keys\": []}").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let tb2 = mint(&b, &claims(issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &tb2), 200);
    assert!(be.count() >= 3);
}

#[test]
fn discovery_failure_keeps_the_issuer_unready() {
    let key = pool().rsa[0].with_kid("k1");
    let stub = JwksStub::start(&[&key]);
    stub.set_discovery(Some(JwksMode::Status(500)));
    let port = free_port();
    let mut iss = IssuerCfg::new(&stub.issuer);
    iss.refresh = 1;
    let px = start_auth_proxy(port, &AuthCfg::new(port, vec![iss]));
    let be = route_alice(&px);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(healthz(&px), 503);
    let tok = mint(&key, &claims(&stub.issuer, "alice"));
    assert_eq!(status_with(&px, "/user/alice/", &tok), 503);
    assert_not_called(&be, "discovery down");
    assert!(stub.hits("/.well-known/openid-configuration") >= 1);
    stub.set_discovery(None);
    assert!(wait_until(Duration::from_secs(15), || healthz(&px) == 200));
    assert_eq!(status_with(&px, "/user/alice/", &tok), 200);
}

// -------------------------------------------------------------- JWKS fetch failure: TLS to the IdP

/// JWKS over https with a self-signed certificate: refused unless the CA is trusted,
/// and `--insecure` (CHP's flag for the *targets*) must not switch verification off
/// for the identity provider.
#[test]
fn row07_idp_tls_is_always_verified() {
    let key = pool().rsa[0].with_kid("k1");
    let stub = JwksStub::start(&[&key]);
    let dir = TempDir::new("jwks-tls");
    let (cert, tls_key) = crate::support::tls::generate_cert(&dir.path);
    // A TLS front for the stub: a plain (CHP-mode) hubgate with --ssl-key/--ssl-cert.
    let front = Hubgate::start(
        &[
            "--ssl-key",
            tls_key.to_str().unwrap(),
            "--ssl-cert",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    front.add_route("/", &stub.issuer);
    let jwks_https = format!("https://127.0.0.1:{}/jwks", front.port);
    let start = |extra: &[&str]| {
        let port = free_port();
        let mut iss = IssuerCfg::new(&stub.issuer);
        iss.jwks_url = Some(jwks_https.clone());
        iss.refresh = 1;
        start_auth_proxy_with(
            port,
            &AuthCfg::new(port, vec![iss]),
            HubgateBuilder::default().args(extra),
        )
    };
    let trusted = start(&["--client-ssl-ca", cert.to_str().unwrap()]);
    let untrusted = start(&[]);
    let insecure = start(&["--insecure"]);
    assert!(
        wait_until(Duration::from_secs(15), || healthz(&trusted) == 200),
        "JWKS over https with a trusted CA never loaded:\n{}",
        trusted.output()
    );
    let tok = mint(&key, &claims(&stub.issuer, "alice"));
    let be = route_alice(&trusted);
    assert_eq!(status_with(&trusted, "/user/alice/", &tok), 200);
    assert_eq!(be.count(), 1);
    std::thread::sleep(Duration::from_millis(2500));
    for (what, px) in [("untrusted", &untrusted), ("--insecure", &insecure)] {
        assert_eq!(healthz(px), 503, "{what}: keys loaded over unverified TLS");
        let be = route_alice(px);
        assert_eq!(status_with(px, "/user/alice/", &tok), 503, "{what}");
        assert_not_called(&be, what);
    }
}
