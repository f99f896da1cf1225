//! Token verification through the proxy (the token threats of docs/security.md):
//! algorithms (confusion, `none`, pinned to the key), time claims and clock skew,
//! audience / issuer, kid abuse, oversized / malformed tokens, issuer mix-up, generic
//! error bodies, the MFA rule and username mapping, and the Bearer happy path with a
//! token from the real OpenID provider.
//!
//! Every negative case asserts: the status, a generic JSON body, that no backend was
//! called; representative ones also the `reason` label on `/metrics` and that the token
//! is not in hubgate's output.

use crate::support::auth_proxy::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An edit of a token's claims.
type ClaimEdit = dyn Fn(&mut serde_json::Map<String, Value>);

/// Runs `f` and returns how much the deny counter for `reason` moved.
fn delta(env: &AuthEnv, reason: &str, f: impl FnOnce()) -> f64 {
    let before = env.px.denials(reason);
    f();
    // The counter is bumped before the response is written; allow a scrape race anyway.
    let mut after = env.px.denials(reason);
    let deadline = Instant::now() + Duration::from_secs(2);
    while after <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = env.px.denials(reason);
    }
    after - before
}

fn total_denials(env: &AuthEnv) -> f64 {
    env.px.decisions(&[("result", "deny")])
}

// ------------------------------------------------------------------ happy paths

#[test]
fn bearer_access_token_from_real_provider() {
    let p = pool();
    let k1 = p.rsa[1].with_kid("idp-rsa");
    let k2 = p.ec[1].with_kid("idp-ec");
    let idp = OidcProvider::start(ProviderOptions::new(&[&k1, &k2]));
    let port = free_port();
    let mut iss = IssuerCfg::new(&idp.issuer); // discovery
    iss.discovery = Some(true);
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let alice_be = Backend::echo();
    let bob_be = Backend::echo();
    px.add_route_json(
        "/user/alice",
        &json!({"target": alice_be.url(), "user": "alice"}).to_string(),
    );
    px.add_route_json(
        "/user/bob",
        &json!({"target": bob_be.url(), "user": "bob"}).to_string(),
    );

    let t = idp.login(&LoginAs::user("alice"));
    assert_eq!(jwt_header(&t.access_token)["kid"], json!("idp-rsa"));
    let r = px.get_bearer("/user/alice/api/contents?x=1", &t.access_token);
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = alice_be.last().expect("alice's server saw nothing");
    assert_eq!(rec.target, "/user/alice/api/contents?x=1");
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(
        rec.header("x-auth-request-email").as_deref(),
        Some("alice@example.org")
    );
    assert_eq!(
        rec.header("x-auth-request-groups").as_deref(),
        Some("physics")
    );

    // The same (now cached) token is still refused on bob's server.
    let r = px.get_bearer("/user/bob/api/contents", &t.access_token);
    assert_api_denial(&r, 403, "alice on bob's server");
    assert_not_called(&bob_be, "alice on bob's server");

    // carol logs in without MFA: valid token, 401 with the RFC 9470 step-up challenge.
    let c = idp.login(&LoginAs::user("carol"));
    let r = px.get_bearer("/user/alice/", &c.access_token);
    assert_api_denial(&r, 401, "carol without MFA");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("error=\"insufficient_user_authentication\"")));
    // carol with a hardware key as second factor passes the amr rule (not hers: owner).
    let c2 = idp.login(&LoginAs::user("carol").amr("pwd,hwk"));
    let r = px.get_bearer("/user/alice/", &c2.access_token);
    assert_api_denial(&r, 403, "carol with MFA on alice's server");
    // dave is a hub admin: may open alice's server.
    let d = idp.login(&LoginAs::user("dave"));
    let r = px.get_bearer("/user/alice/lab", &d.access_token);
    assert_eq!(r.status, 200, "admin dave: {}", r.describe());

    px.assert_not_logged(&t.access_token);
    px.assert_not_logged(&c.access_token);
    let line = px.wait_audit(&["user=alice", "decision=allow"]);
    assert!(line.contains("route="), "{line}");
}

#[test]
fn all_signing_algorithms_and_scheme_case() {
    let env = AuthEnv::start();
    for key in [&env.rsa, &env.ec, &env.ed] {
        let t = mint(key, &env.claims("alice"));
        env.assert_allowed("/user/alice/", &t, &env.alice, key.alg_name());
    }
    let t = env.token("alice");
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        env.clear();
        let r = env
            .px
            .request(&Req::get("/user/alice/").header("Authorization", &format!("{scheme} {t}")));
        assert_eq!(r.status, 200, "scheme {scheme}: {}", r.describe());
    }
}

// ------------------------------------------------------------------ alg confusion

#[test]
fn row01_hs256_keyed_with_the_rsa_public_key_is_refused() {
    let env = AuthEnv::start();
    let payload = env.claims("alice").to_string();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k-rsa"}).to_string();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PEM spki", env.rsa.public_pem_spki.as_bytes().to_vec()),
        (
            "PEM pkcs1",
            env.rsa.public_pem_pkcs1.clone().unwrap().into_bytes(),
        ),
        ("DER spki", env.rsa.public_der_spki.clone()),
        ("DER pkcs1", env.rsa.public_der_pkcs1.clone().unwrap()),
        (
            "JWK n",
            env.rsa.public_jwk["n"]
                .as_str()
                .unwrap()
                .as_bytes()
                .to_vec(),
        ),
    ];
    let mut tokens = vec![];
    let d = delta(&env, "bad_algorithm", || {
        for (what, secret) in &secrets {
            let t = sign_hs256(&header, &payload, secret);
            env.assert_denied("/user/alice/", &t, 401, &format!("HS256 keyed with {what}"));
            tokens.push(t);
        }
    });
    assert_eq!(d, secrets.len() as f64, "reason=bad_algorithm per token");
    for t in &tokens {
        env.px.assert_not_logged(t);
    }
}

// ------------------------------------------------------------------ alg none

#[test]
fn row02_alg_none_variants_and_missing_signatures() {
    let env = AuthEnv::start();
    let payload = env.claims("alice").to_string();
    let valid = env.token("alice");
    let (vh, vp) = {
        let mut it = valid.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let mut cases: Vec<(String, String)> = vec![];
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": "k-rsa"}).to_string();
        cases.push((
            format!("alg {alg}, empty signature"),
            raw_token(&h, &payload, ""),
        ));
        cases.push((
            format!("alg {alg}, two segments"),
            raw_token(&h, &payload, "")
                .trim_end_matches('.')
                .to_string(),
        ));
    }
    cases.push((
        "RS256 header, empty signature".into(),
        format!("{vh}.{vp}."),
    ));
    cases.push(("RS256 header, two segments".into(), format!("{vh}.{vp}")));
    for (what, h) in [
        ("alg missing", json!({"typ": "JWT", "kid": "k-rsa"})),
        ("alg number", json!({"alg": 256, "kid": "k-rsa"})),
        ("alg array", json!({"alg": ["RS256"], "kid": "k-rsa"})),
        ("alg null", json!({"alg": null, "kid": "k-rsa"})),
        ("alg empty", json!({"alg": "", "kid": "k-rsa"})),
    ] {
        // Properly RS256-signed over the odd header: only the header is wrong.
        cases.push((
            what.to_string(),
            sign_raw(&h.to_string(), &payload, &env.rsa, Algorithm::RS256),
        ));
    }
    let before = total_denials(&env);
    for (what, t) in &cases {
        env.assert_denied("/user/alice/", t, 401, what);
    }
    assert_eq!(total_denials(&env) - before, cases.len() as f64);
    assert!(env.px.denials("malformed") + env.px.denials("bad_algorithm") >= cases.len() as f64);
}

// ------------------------------------------------------------------ alg pinned to the key

#[test]
fn row03_algorithm_is_pinned_to_the_jwk() {
    let env = AuthEnv::start_with(|c| {
        c.issuers[0].algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    });
    let payload = env.claims("alice").to_string();
    // A genuine PS256 signature by the RSA key whose JWK says alg RS256.
    let ps = sign_raw(
        &json!({"alg": "PS256", "typ": "JWT", "kid": "k-rsa"}).to_string(),
        &payload,
        &env.rsa,
        Algorithm::PS256,
    );
    env.assert_denied("/user/alice/", &ps, 401, "PS256 with an RS256 JWK");
    // ES384 header on the P-256 key's kid (signed by a P-384 key).
    let es384 = sign_raw(
        &json!({"alg": "ES384", "typ": "JWT", "kid": "k-ec"}).to_string(),
        &payload,
        &pool().es384[0],
        Algorithm::ES384,
    );
    env.assert_denied("/user/alice/", &es384, 401, "ES384 on an ES256 key");
    // RS256 header on the EC key's kid, and EdDSA on the RSA kid.
    let rs_on_ec = sign_raw(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "k-ec"}).to_string(),
        &payload,
        &env.rsa,
        Algorithm::RS256,
    );
    env.assert_denied("/user/alice/", &rs_on_ec, 401, "RS256 on an EC kid");
    let ed_on_rsa = sign_raw(
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": "k-rsa"}).to_string(),
        &payload,
        &env.ed,
        Algorithm::EdDSA,
    );
    env.assert_denied("/user/alice/", &ed_on_rsa, 401, "EdDSA on an RSA kid");
    // Control: the matching algorithms pass.
    env.assert_allowed(
        "/user/alice/",
        &env.token("alice"),
        &env.alice,
        "RS256 control",
    );
}

// ------------------------------------------------------------------ time claims and clock skew

#[test]
fn row04_row09_expiry_not_before_issued_at_with_leeway() {
    // Issuer 0 (leeway 30) from the env, plus a second stub issuer with leeway 0.
    let strict = JwksStub::start(&[&pool().rsa[0].with_kid("k-rsa")]);
    let strict_iss = strict.issuer.clone();
    let env = AuthEnv::start_with(|c| {
        let mut s = IssuerCfg::stub(&strict);
        s.leeway = 0;
        c.issuers.push(s);
    });
    let t = now();
    let ok = |what: &str, tok: String| env.assert_allowed("/user/alice/", &tok, &env.alice, what);

    // leeway 0: exp one second ago is expired.
    let mut c = claims(&strict_iss, "alice");
    c["exp"] = json!(t - 1);
    let expired_strict = mint(&env.rsa, &c);
    let d = delta(&env, "expired", || {
        env.assert_denied("/user/alice/", &expired_strict, 401, "exp=now-1, leeway 0");
    });
    assert_eq!(d, 1.0, "reason=expired");
    env.px.assert_not_logged(&expired_strict);

    // leeway 30: inside (−25 s) passes, outside (−36 s) fails.
    ok(
        "exp=now-25, leeway 30",
        env.token_with("alice", |c| {
            c.insert("exp".into(), json!(t - 25));
            c.insert("iat".into(), json!(t - 100));
        }),
    );
    env.assert_denied(
        "/user/alice/",
        &env.token_with("alice", |c| {
            c.insert("exp".into(), json!(t - 36));
            c.insert("iat".into(), json!(t - 100));
        }),
        401,
        "exp=now-36, leeway 30",
    );
    // nbf: inside the leeway passes, beyond it fails (regression: crate default skips nbf).
    ok(
        "nbf=now+25",
        env.token_with("alice", |c| {
            c.insert("nbf".into(), json!(t + 25));
        }),
    );
    let d = delta(&env, "not_yet_valid", || {
        env.assert_denied(
            "/user/alice/",
            &env.token_with("alice", |c| {
                c.insert("nbf".into(), json!(t + 35));
            }),
            401,
            "nbf=now+35",
        );
    });
    assert_eq!(d, 1.0, "reason=not_yet_valid");
    // iat in the future beyond the leeway.
    ok(
        "iat=now+25",
        env.token_with("alice", |c| {
            c.insert("iat".into(), json!(t + 25));
        }),
    );
    let d = delta(&env, "issued_in_future", || {
        env.assert_denied(
            "/user/alice/",
            &env.token_with("alice", |c| {
                c.insert("iat".into(), json!(t + 3600));
            }),
            401,
            "iat=now+3600",
        );
    });
    assert_eq!(d, 1.0, "reason=issued_in_future");
    // Odd exp values.
    for (what, v) in [
        ("exp as string", json!("9999999999")),
        ("exp 1e300", json!(1e300)),
        ("exp null", Value::Null),
        ("exp negative", json!(-1)),
        ("exp object", json!({"t": 1})),
    ] {
        let tok = env.token_with("alice", |c| {
            c.insert("exp".into(), v);
        });
        env.assert_denied("/user/alice/", &tok, 401, what);
    }
    let d = delta(&env, "missing_claim", || {
        let tok = env.token_with("alice", |c| {
            c.remove("exp");
        });
        env.assert_denied("/user/alice/", &tok, 401, "no exp");
    });
    assert_eq!(d, 1.0, "reason=missing_claim for a token without exp");
}

// ------------------------------------------------------------------ audience and issuer

#[test]
fn row05_audience_and_issuer() {
    let other = JwksStub::start(&[&pool().rsa[1].with_kid("other-only")]);
    let env = AuthEnv::start_with(|c| c.issuers.push(IssuerCfg::stub(&other)));
    let iss = env.issuer().to_string();
    let d = delta(&env, "wrong_audience", || {
        for (what, aud) in [
            ("aud other", json!("other")),
            ("aud [other]", json!(["other"])),
            ("aud []", json!([])),
            ("aud number", json!(7)),
            ("aud JupyterHub (case)", json!("JupyterHub")),
        ] {
            let t = env.token_with("alice", |c| {
                c.insert("aud".into(), aud);
            });
            env.assert_denied("/user/alice/", &t, 401, what);
        }
    });
    assert!(
        d >= 4.0,
        "reason=wrong_audience for the audience cases ({d})"
    );
    let t = env.token_with("alice", |c| {
        c.remove("aud");
    });
    env.assert_denied("/user/alice/", &t, 401, "aud missing");
    let t = env.token_with("alice", |c| {
        c.insert("aud".into(), json!(["other", "jupyterhub"]));
    });
    env.assert_allowed("/user/alice/", &t, &env.alice, "aud intersects");

    let t = env.token_with("alice", |c| {
        c.remove("iss");
    });
    env.assert_denied("/user/alice/", &t, 401, "iss missing");
    let d = delta(&env, "unknown_issuer", || {
        for (what, v) in [
            ("iss trailing slash", json!(format!("{iss}/"))),
            ("iss https", json!(iss.replace("http://", "https://"))),
            ("iss untrusted", json!("http://127.0.0.1:1")),
        ] {
            let t = env.token_with("alice", |c| {
                c.insert("iss".into(), v);
            });
            env.assert_denied("/user/alice/", &t, 401, what);
        }
    });
    assert_eq!(d, 3.0, "reason=unknown_issuer");
    let t = env.token_with("alice", |c| {
        c.insert("iss".into(), json!([iss.clone()]));
    });
    env.assert_denied("/user/alice/", &t, 401, "iss as array");
    // iss of the second trusted issuer with a kid from the first issuer's key set.
    let mut c = claims(&other.issuer, "alice");
    c["iss"] = json!(other.issuer);
    let t = mint(&env.rsa, &c);
    env.assert_denied("/user/alice/", &t, 401, "second issuer, first issuer's kid");
    // Control: the second issuer's own key works.
    let t = mint(&pool().rsa[1].with_kid("other-only"), &c);
    env.assert_allowed("/user/alice/", &t, &env.alice, "second issuer's own key");
}

// ------------------------------------------------------------------ kid abuse

#[test]
fn row06_kid_injection_jku_x5u_and_missing_kid() {
    let env = AuthEnv::start_with(|c| c.issuers[0].min_refetch = 30);
    let attacker = Backend::echo();
    let payload = env.claims("alice").to_string();
    let long_kid = "k".repeat(4000);
    let kids: Vec<(&str, Value)> = vec![
        ("path traversal", json!("../../etc/passwd")),
        ("sql", json!("' OR 1=1 --")),
        ("url", json!(format!("{}/jwks", attacker.url()))),
        ("4000-byte kid", json!(long_kid)),
        ("unicode", json!("ключ-🔑")),
        ("null", Value::Null),
        ("number", json!(1)),
        ("object", json!({"kid": "k-rsa"})),
    ];
    let jwks_before = env.stub.jwks_hits();
    for (what, kid) in &kids {
        let h = json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string();
        let t = sign_raw(&h, &payload, &env.rsa, Algorithm::RS256);
        env.assert_denied("/user/alice/", &t, 401, &format!("kid {what}"));
    }
    assert!(
        env.stub.jwks_hits() - jwks_before <= 1,
        "weird kids caused {} JWKS fetches",
        env.stub.jwks_hits() - jwks_before
    );
    // jku / x5u / jwk header parameters are never dereferenced nor trusted.
    let own = pool().rsa[3].with_kid("attacker");
    let mut jwk = own.public_jwk.clone();
    jwk.as_object_mut().unwrap().remove("d");
    for (what, h) in [
        (
            "jku",
            json!({"alg": "RS256", "kid": "attacker", "jku": format!("{}/jku", attacker.url())}),
        ),
        (
            "x5u",
            json!({"alg": "RS256", "kid": "attacker", "x5u": format!("{}/x5u", attacker.url())}),
        ),
        (
            "embedded jwk",
            json!({"alg": "RS256", "kid": "attacker", "jwk": jwk}),
        ),
        ("embedded jwk, no kid", json!({"alg": "RS256", "jwk": jwk})),
    ] {
        let t = sign_raw(&h.to_string(), &payload, &own, Algorithm::RS256);
        env.assert_denied("/user/alice/", &t, 401, what);
    }
    // jku/x5u with the issuer's real kid: the issuer's key decides, the URL is ignored.
    let h = json!({"alg": "RS256", "kid": "k-rsa", "jku": format!("{}/jku", attacker.url())});
    let t = sign_raw(&h.to_string(), &payload, &env.rsa, Algorithm::RS256);
    env.assert_allowed("/user/alice/", &t, &env.alice, "jku ignored, real kid");
    assert_eq!(
        attacker.count(),
        0,
        "jku/x5u/kid URL dereferenced: {:?}",
        attacker.requests()
    );
    // No kid while the key set has several keys: refused (no try-all).
    let h = json!({"alg": "RS256", "typ": "JWT"});
    let t = sign_raw(&h.to_string(), &payload, &env.rsa, Algorithm::RS256);
    env.assert_denied("/user/alice/", &t, 401, "no kid, 3 keys in the set");
}

// -------------------------------------------------- oversized and malformed tokens: size and shape

#[test]
fn row18_oversized_and_malformed_tokens() {
    let env = AuthEnv::start();
    let payload = env.claims("alice").to_string();
    // > 8 KiB but otherwise valid (padding claim), properly signed.
    let big = env.token_with("alice", |c| {
        c.insert("pad".into(), json!("x".repeat(7000)));
    });
    assert!(big.len() > 8192, "{}", big.len());
    let d = delta(&env, "too_large", || {
        env.assert_denied("/user/alice/", &big, 401, "9 KiB token");
    });
    assert_eq!(d, 1.0, "reason=too_large");
    env.px.assert_not_logged(&big);
    // Just under the cap is fine.
    let fits = env.token_with("alice", |c| {
        c.insert("pad".into(), json!("x".repeat(5000)));
    });
    assert!(fits.len() < 8192);
    env.assert_allowed("/user/alice/", &fits, &env.alice, "7 KiB token");
    // 100 kB: refused quickly (401, or 431 from the header limit), never forwarded.
    env.clear();
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(20),
        "b".repeat(100_000),
        "c".repeat(20)
    );
    let t0 = Instant::now();
    let r = try_http(
        env.px.port,
        &Req::get("/user/alice/").header("Authorization", &format!("Bearer {huge}")),
    )
    .unwrap_or_else(|e| panic!("100 kB token: no response ({e})"));
    assert!(
        r.status == 401 || r.status == 431,
        "100 kB token: {}",
        r.describe()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "slow: {:?}",
        t0.elapsed()
    );
    env.assert_none_called("100 kB token");

    let valid = env.token("alice");
    let segs: Vec<&str> = valid.split('.').collect();
    let mut cases: Vec<(String, String)> = vec![
        ("4 segments".into(), format!("{valid}.{}", segs[2])),
        (
            "5 segments (JWE shape)".into(),
            format!(
                "{}.{}.{}.{}.{}",
                segs[0], segs[1], segs[2], segs[1], segs[2]
            ),
        ),
        ("padding in signature".into(), format!("{valid}==")),
        (
            "padding in payload".into(),
            format!("{}.{}==.{}", segs[0], segs[1], segs[2]),
        ),
        (
            "standard base64 chars".into(),
            format!(
                "{}.{}.{}",
                segs[0],
                segs[1],
                segs[2].replace('-', "+").replace('_', "/")
            ),
        ),
        ("not base64".into(), format!("{}.{}.!!!", segs[0], segs[1])),
        ("empty header".into(), format!(".{}.{}", segs[1], segs[2])),
        ("garbage".into(), "not-a-jwt".into()),
        ("dots only".into(), "..".into()),
    ];
    // Header / payload JSON shape problems, each properly RS256-signed.
    for (what, header, body) in [
        (
            "duplicate alg, none last",
            r#"{"alg":"RS256","kid":"k-rsa","alg":"none"}"#.to_string(),
            payload.clone(),
        ),
        (
            "duplicate alg, RS256 last",
            r#"{"alg":"none","kid":"k-rsa","alg":"RS256"}"#.to_string(),
            payload.clone(),
        ),
        (
            "crit with unknown parameter",
            json!({"alg": "RS256", "kid": "k-rsa", "crit": ["exp"], "exp": 1}).to_string(),
            payload.clone(),
        ),
        (
            "typ dpop+jwt",
            json!({"alg": "RS256", "kid": "k-rsa", "typ": "dpop+jwt"}).to_string(),
            payload.clone(),
        ),
        (
            "header is an array",
            r#"["RS256"]"#.to_string(),
            payload.clone(),
        ),
        (
            "payload is an array",
            json!({"alg": "RS256", "kid": "k-rsa"}).to_string(),
            "[1,2]".to_string(),
        ),
        (
            "payload not JSON",
            json!({"alg": "RS256", "kid": "k-rsa"}).to_string(),
            "hello".to_string(),
        ),
    ] {
        cases.push((
            what.to_string(),
            sign_raw(&header, &body, &env.rsa, Algorithm::RS256),
        ));
    }
    for (what, t) in &cases {
        env.assert_denied("/user/alice/", t, 401, what);
    }
    // typ values that are fine.
    for typ in ["JWT", "at+jwt", "application/at+jwt"] {
        let t = sign_raw(
            &json!({"alg": "RS256", "kid": "k-rsa", "typ": typ}).to_string(),
            &payload,
            &env.rsa,
            Algorithm::RS256,
        );
        env.assert_allowed("/user/alice/", &t, &env.alice, &format!("typ {typ}"));
    }
    // An empty Bearer value.
    env.clear();
    let r = env
        .px
        .request(&Req::get("/user/alice/").header("Authorization", "Bearer "));
    assert_api_denial(&r, 401, "empty bearer");
    env.assert_none_called("empty bearer");
}

// ------------------------------------------------------------------ issuer mix-up

#[test]
fn row19_keys_are_scoped_per_issuer() {
    let p = pool();
    // Both issuers publish kid "shared", with different key material.
    let a_key = p.rsa[0].with_kid("shared");
    let b_key = p.rsa[1].with_kid("shared");
    let a = JwksStub::start(&[&a_key]);
    let b = JwksStub::start(&[&b_key, &p.rsa[2].with_kid("b-only")]);
    let port = free_port();
    let px = start_ready(
        port,
        &AuthCfg::new(port, vec![IssuerCfg::stub(&a), IssuerCfg::stub(&b)]),
    );
    let be = Backend::echo();
    px.add_route_json(
        "/user/alice",
        &json!({"target": be.url(), "user": "alice"}).to_string(),
    );

    let ok_a = mint(&a_key, &claims(&a.issuer, "alice"));
    let ok_b = mint(&b_key, &claims(&b.issuer, "alice"));
    for (what, t) in [("A by A", &ok_a), ("B by B", &ok_b)] {
        let r = px.get_bearer("/user/alice/", t);
        assert_eq!(r.status, 200, "{what}: {}", r.describe());
    }
    be.clear();
    let before = px.denials("bad_signature");
    let mixed = mint(&b_key, &claims(&a.issuer, "alice")); // iss A, signed by B's "shared"
    let r = px.get_bearer("/user/alice/", &mixed);
    assert_api_denial(&r, 401, "iss A signed with B's key (kid collision)");
    assert!(px.denials("bad_signature") > before, "reason=bad_signature");
    let b_only = mint(&p.rsa[2].with_kid("b-only"), &claims(&a.issuer, "alice"));
    let r = px.get_bearer("/user/alice/", &b_only);
    assert_api_denial(&r, 401, "iss A with a kid only B publishes");
    assert_not_called(&be, "issuer mix-up");
    px.assert_not_logged(&mixed);
}

// ------------------------------------------------------------------ MFA rule

#[test]
fn mfa_rule_acr_amr_and_auth_time() {
    let lax = JwksStub::start(&[&pool().rsa[0].with_kid("k-rsa")]);
    let lax_iss = lax.issuer.clone();
    let env = AuthEnv::start_with(|c| {
        let mut i = IssuerCfg::stub(&lax);
        i.require_mfa = false;
        c.issuers.push(i);
    });
    let t = now();
    let allowed = |what: &str, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let tok = env.token_with("alice", |c| f(c));
        env.assert_allowed("/user/alice/", &tok, &env.alice, what);
    };
    allowed("acr MFA, amr pwd only", &|c| {
        c.insert("amr".into(), json!(["pwd"]));
    });
    allowed("acr MFA, no amr", &|c| {
        c.remove("amr");
    });
    allowed("acr sfa, amr contains otp", &|c| {
        c.insert("acr".into(), json!(SFA_ACR));
    });
    allowed("no acr, amr mfa", &|c| {
        c.remove("acr");
        c.insert("amr".into(), json!(["mfa"]));
    });
    allowed("no acr, amr hwk", &|c| {
        c.remove("acr");
        c.insert("amr".into(), json!(["hwk", "pwd"]));
    });
    allowed("auth_time 11 h ago", &|c| {
        c.insert("auth_time".into(), json!(t - 11 * 3600));
    });

    let no_mfa: Vec<(&str, Box<ClaimEdit>)> = vec![
        (
            "acr sfa, amr pwd",
            Box::new(|c| {
                c.insert("acr".into(), json!(SFA_ACR));
                c.insert("amr".into(), json!(["pwd"]));
            }),
        ),
        (
            "no acr, no amr",
            Box::new(|c| {
                c.remove("acr");
                c.remove("amr");
            }),
        ),
        (
            "amr as a string",
            Box::new(|c| {
                c.remove("acr");
                c.insert("amr".into(), json!("mfa"));
            }),
        ),
        (
            "amr numbers",
            Box::new(|c| {
                c.remove("acr");
                c.insert("amr".into(), json!([1, 2]));
            }),
        ),
        (
            "acr array",
            Box::new(|c| {
                c.insert("acr".into(), json!([MFA_ACR]));
                c.insert("amr".into(), json!(["pwd"]));
            }),
        ),
        (
            "acr prefix of the MFA value",
            Box::new(|c| {
                c.insert("acr".into(), json!("https://refeds.org/profile/"));
                c.insert("amr".into(), json!(["pwd"]));
            }),
        ),
    ];
    let d = delta(&env, "mfa_required", || {
        for (what, f) in &no_mfa {
            let tok = env.token_with("alice", |c| f(c));
            // RFC 9470 §3: 401 with the step-up challenge.
            let r = env.assert_denied("/user/alice/", &tok, 401, what);
            let wa = r.header("www-authenticate").unwrap_or("");
            assert!(
                wa.contains("insufficient_user_authentication")
                    && wa.contains(&format!("acr_values=\"{MFA_ACR}\""))
                    && wa.contains("max_age=\"43200\""),
                "{what}: RFC 9470 error expected in WWW-Authenticate, got {wa:?}"
            );
        }
    });
    assert_eq!(d, no_mfa.len() as f64, "reason=mfa_required");

    let d = delta(&env, "auth_too_old", || {
        let tok = env.token_with("alice", |c| {
            c.insert("auth_time".into(), json!(t - 43200 - 120));
        });
        let r = env.assert_denied("/user/alice/", &tok, 401, "auth_time 12 h + 2 min ago");
        let wa = r.header("www-authenticate").unwrap_or("");
        assert!(wa.contains("insufficient_user_authentication"), "{wa:?}");
        env.px.assert_not_logged(&tok);
    });
    assert_eq!(d, 1.0, "reason=auth_too_old");
    for (what, v) in [
        ("auth_time missing", None),
        ("auth_time string", Some(json!("yesterday"))),
    ] {
        let tok = env.token_with("alice", |c| match &v {
            None => {
                c.remove("auth_time");
            }
            Some(v) => {
                c.insert("auth_time".into(), v.clone());
            }
        });
        env.clear();
        let r = env.px.get_bearer("/user/alice/", &tok);
        assert!(
            r.status == 401 || r.status == 403,
            "{what}: {}",
            r.describe()
        );
        assert_generic_body(&r, what);
        env.assert_none_called(what);
    }

    // require-mfa = false on the second issuer: a password-only token passes there.
    let mut c = claims(&lax_iss, "alice");
    c["acr"] = json!(SFA_ACR);
    c["amr"] = json!(["pwd"]);
    let tok = mint(&env.rsa, &c);
    env.assert_allowed("/user/alice/", &tok, &env.alice, "require-mfa=false issuer");
}

// ------------------------------------------------------------------ usernames

#[test]
fn username_claim_mapping_and_escaping() {
    let env = AuthEnv::start();
    let odd = Backend::echo();
    let uni = Backend::echo();
    env.px.add_route_json(
        "/user/has@",
        &json!({"target": odd.url(), "user": "has@"}).to_string(),
    );
    env.px.add_route_json(
        "/user/%E7%A7%80%E6%A8%B9",
        &json!({"target": uni.url(), "user": "秀樹"}).to_string(),
    );
    // username-lowercase: "Alice" is alice.
    let t = env.token_with("Alice", |_| {});
    env.assert_allowed("/user/alice/lab", &t, &env.alice, "Alice lower-cased");
    let r = env.px.get_bearer("/user/has@/lab", &env.token("has@"));
    assert_eq!(r.status, 200, "has@: {}", r.describe());
    assert_eq!(odd.count(), 1);
    let r = env
        .px
        .get_bearer("/user/%E7%A7%80%E6%A8%B9/lab", &env.token("秀樹"));
    assert_eq!(r.status, 200, "unicode user: {}", r.describe());
    assert_eq!(uni.count(), 1);
    let r = env.px.get_bearer("/user/has@/lab", &env.token("alice"));
    assert_api_denial(&r, 403, "alice on has@'s server");
    let r = env
        .px
        .get_bearer("/user/%E7%A7%80%E6%A8%B9/lab", &env.token("alice"));
    assert_api_denial(&r, 403, "alice on 秀樹's server");
    assert_eq!((odd.count(), uni.count()), (1, 1));

    let d = delta(&env, "no_username", || {
        for (what, v) in [
            ("no preferred_username", None),
            ("empty preferred_username", Some(json!(""))),
            ("numeric preferred_username", Some(json!(42))),
        ] {
            let tok = env.token_with("alice", |c| match &v {
                None => {
                    c.remove("preferred_username");
                }
                Some(v) => {
                    c.insert("preferred_username".into(), v.clone());
                }
            });
            env.clear();
            let r = env.px.get_bearer("/user/alice/", &tok);
            assert!(
                r.status == 401 || r.status == 403,
                "{what}: {}",
                r.describe()
            );
            assert_generic_body(&r, what);
            env.assert_none_called(what);
        }
    });
    assert!(d >= 1.0, "reason=no_username");
}

// ------------------------------------------------------------ generic error bodies, metrics, audit

#[test]
fn row21_reasons_only_in_logs_and_metrics() {
    let env = AuthEnv::start();
    let expired = env.token_with("alice", |c| {
        c.insert("exp".into(), json!(now() - 3600));
    });
    env.assert_denied("/user/alice/", &expired, 401, "expired");
    let bad_sig = {
        let t = env.token("alice");
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut sig = b64_decode(&parts[2]);
        sig[10] ^= 1;
        parts[2] = b64url(&sig);
        parts.join(".")
    };
    env.assert_denied("/user/alice/", &bad_sig, 401, "bad signature");
    env.assert_denied("/user/bob/", &env.token("alice"), 403, "not owner");
    env.clear();
    let r = env.px.get("/user/alice/");
    assert_api_denial(&r, 401, "no credential");
    env.assert_none_called("no credential");

    let m = env.px.metrics();
    for reason in [
        "expired",
        "bad_signature",
        "not_owner",
        "missing_credential",
    ] {
        assert!(
            metric_sum(
                &m,
                "hubgate_auth_decisions_total",
                &[("result", "deny"), ("reason", reason)]
            ) >= 1.0,
            "no hubgate_auth_decisions_total{{result=\"deny\",reason=\"{reason}\"}} in:\n{m}"
        );
    }
    assert!(
        metric_sum(&m, "hubgate_auth_decisions_total", &[("result", "allow")]) == 0.0,
        "no request was allowed yet"
    );
    // The audit log has the reason, the user and the route; never the token.
    let l = env.px.wait_audit(&["decision=deny", "reason=expired"]);
    assert!(l.contains("user=") && l.contains("route="), "{l}");
    let l = env.px.wait_audit(&["decision=deny", "reason=not_owner"]);
    assert!(l.contains("user=alice"), "{l}");
    env.px
        .wait_audit(&["decision=deny", "reason=bad_signature"]);
    for t in [&expired, &bad_sig] {
        env.px.assert_not_logged(t);
    }
    // Every 401 says the same: an expired-but-genuine token must not be
    // distinguishable from a forged one or from none.
    let unknown_iss = env.token_with("alice", |c| {
        c.insert("iss".into(), json!("http://127.0.0.1:1"));
    });
    let mut messages = vec![];
    for (what, auth) in [
        ("expired", Some(expired.as_str())),
        ("bad signature", Some(bad_sig.as_str())),
        ("unknown issuer", Some(unknown_iss.as_str())),
        ("garbage", Some("x.y.z")),
        ("no credential", None),
    ] {
        let mut req = Req::get("/user/alice/");
        if let Some(t) = auth {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let r = env.px.request(&req);
        assert_eq!(r.status, 401, "{what}: {}", r.describe());
        messages.push((what, r.json()["message"].as_str().unwrap_or("").to_string()));
    }
    assert!(
        messages.iter().all(|(_, m)| *m == messages[0].1),
        "401 messages depend on the reason: {messages:#?}"
    );
}
