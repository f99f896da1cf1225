//! Token verification cost: cold (signature and claims, per algorithm) and cached (the
//! steady state of a logged-in user: one SHA-256 and a map probe); and the whole per-request
//! check with a cached token (credential extraction, cache, owner policy), what every
//! authenticated request through the proxy pays.
//!
//! `cargo bench --bench token_verify`. Keys are generated with the openssl CLI at start.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hubgate::auth::{Auth, CredentialKind};
use hubgate::config::auth::AuthSection;
use hubgate::metrics::Metrics;
use hubgate::net::{Connector, HttpClient};
use hubgate::routes::{Route, RouteTable};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://idp.bench";

fn openssl_key(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&path)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl genpkey failed for {name}");
    std::fs::read(path).expect("key written")
}

fn token(key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
    let now = hubgate::time::now_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "jupyterhub", "sub": "u1", "exp": now + 3600, "iat": now,
        "auth_time": now, "amr": ["pwd", "otp"], "preferred_username": "alice",
        "email": "alice@example.org", "groups": ["physics"],
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).expect("token signs")
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("hubgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rsa = EncodingKey::from_rsa_pem(&openssl_key(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    ))
    .expect("rsa key");
    let ec = EncodingKey::from_ec_pem(&openssl_key(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ))
    .expect("ec key");
    let ed = EncodingKey::from_ed_pem(&openssl_key(&dir, "ed", &["-algorithm", "ED25519"]))
        .expect("ed key");
    let cases = [
        ("RS256", &rsa, Algorithm::RS256),
        ("ES256", &ec, Algorithm::ES256),
        ("EdDSA", &ed, Algorithm::EdDSA),
    ];
    let mut keys = Vec::new();
    for (kid, key, alg) in &cases {
        let mut jwk = Jwk::from_encoding_key(key, *alg).expect("jwk");
        jwk.common.key_id = Some((*kid).into());
        keys.push(serde_json::to_value(jwk).expect("jwk json"));
    }
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string()).expect("jwks written");

    let toml_text = format!(
        "[[issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"jupyterhub\"]\njwks-file = \"{}\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nmfa-amr = [\"otp\"]\n",
        jwks.display()
    );
    let section: AuthSection = toml::from_str(&toml_text).expect("auth section");
    let config = section.validate().expect("valid auth config");
    let metrics = Metrics::new(Arc::new(RouteTable::new())).expect("metrics");
    let client = Arc::new(HttpClient::new(Connector::new(
        Arc::default(),
        Arc::default(),
        false,
    )));
    let auth = Arc::new(Auth::new(config, client, &metrics));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(auth.load_all()).expect("keys load");

    let mut group = c.benchmark_group("token_verify");
    for (kid, key, alg) in &cases {
        let t = token(key, *alg, kid);
        assert!(
            rt.block_on(auth.verify_token(&t, None, None)).is_ok(),
            "{kid} verifies"
        );
        group.bench_function(format!("cold/{kid}"), |b| {
            b.iter(|| rt.block_on(auth.verify_token(black_box(&t), None, None)))
        });
        group.bench_function(format!("cached/{kid}"), |b| {
            b.iter(|| rt.block_on(auth.verify_credential(CredentialKind::Bearer, black_box(&t))))
        });
        // A request as a browser-less client sends it, to alice's own server.
        let mut req = pingora::http::RequestHeader::build("GET", b"/user/alice/api/contents", None)
            .expect("request header");
        for (name, value) in [
            ("host", "hub.example.org".to_string()),
            ("user-agent", "python-requests/2.32.3".to_string()),
            ("accept", "*/*".to_string()),
            ("authorization", format!("Bearer {t}")),
        ] {
            req.append_header(name, value).expect("header");
        }
        let mut data = serde_json::Map::new();
        data.insert("target".into(), "http://127.0.0.1:9999".into());
        data.insert("user".into(), "alice".into());
        let route = Route::new(Arc::from("/user/alice"), data);
        assert!(matches!(
            rt.block_on(auth.check(&req, "/user/alice/api/contents", Some(&route), false)),
            hubgate::auth::Outcome::Allow(_)
        ));
        group.bench_function(format!("check-cached/{kid}"), |b| {
            b.iter(|| {
                rt.block_on(auth.check(
                    black_box(&req),
                    "/user/alice/api/contents",
                    Some(&route),
                    false,
                ))
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
