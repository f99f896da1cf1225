//! Authentication test support: signing keys, minted tokens, the test OpenID provider
//! (`tests/oidc/provider.mjs`, panva's oidc-provider under node), a switchable JWKS /
//! discovery stub, a browser-ish cookie jar, hubgate `[auth]` config files, metrics
//! scraping and the standard denial assertions.
//!
//! Every process started here is killed on drop (and gets `PR_SET_PDEATHSIG`); every
//! wait is bounded.

use super::backend::{Backend, Recorded, Reply};
use super::client::{Conn, Req, Response};
use super::process::{Hubgate, HubgateBuilder};
use super::{free_port, wait_until, TempDir};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const MFA_ACR: &str = "https://refeds.org/profile/mfa";
pub const SFA_ACR: &str = "https://refeds.org/profile/sfa";
pub const AUDIENCE: &str = "jupyterhub";
pub const SESSION_COOKIE: &str = "__Host-hubgate-session";
pub const LOGIN_COOKIE: &str = "__Host-hubgate-login";
/// Password of every account of the test provider (alice also needs OTP 123456).
pub const IDP_PASSWORD: &str = "test-password";
pub const TEST_CLI_REDIRECT: &str = "http://127.0.0.1:9/test-cli/callback";

pub fn oidc_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc"))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ====================================================================== encoding

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(B64URL[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64 or base64url, with or without padding.
pub fn b64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => panic!("bad base64 char {ch}"),
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// SHA-256 (for PKCE S256 in the test client; no dependency on hubgate's crates).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for i in 0..8 {
            h[i] = h[i].wrapping_add(v[i]);
        }
    }
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[4 * i..4 * i + 4].copy_from_slice(&h[i].to_be_bytes());
    }
    out
}

/// A unique-enough random-looking string (state, nonce, verifier) for tests.
pub fn nonce_string() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{}-{:?}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now(),
        line!()
    );
    b64url(&sha256(seed.as_bytes()))
}

/// application/x-www-form-urlencoded body / query string.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                super::encode_component(k),
                super::encode_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-decodes (no `+` handling).
pub fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Query parameters of a URL or path (`+` is a space), decoded.
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let q = match url.split_once('?') {
        Some((_, q)) => q.split('#').next().unwrap_or(""),
        None => return vec![],
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                pct_decode(&k.replace('+', " ")),
                pct_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Splits `http://127.0.0.1:PORT/path?q` into (port, "/path?q").
pub fn split_url(url: &str) -> (u16, String) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback http URL: {url}"));
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    (port.parse().expect("port"), path)
}

/// The decoded JSON payload of a JWT (no verification).
pub fn jwt_claims(token: &str) -> Value {
    let p = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&b64_decode(p)).expect("JWT payload JSON")
}

pub fn jwt_header(token: &str) -> Value {
    let p = token.split('.').next().expect("JWT header");
    serde_json::from_slice(&b64_decode(p)).expect("JWT header JSON")
}

// ====================================================================== keys

/// A signing key pair generated by `tests/oidc/keygen.mjs` (node's crypto).
#[derive(Clone, Debug)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub private_jwk: Value,
    pub public_jwk: Value,
    /// RSA: PKCS#1 DER; EC / Ed25519: PKCS#8 DER (what `jsonwebtoken` signs with).
    pub private_der: Vec<u8>,
    pub public_pem_spki: String,
    pub public_der_spki: Vec<u8>,
    pub public_pem_pkcs1: Option<String>,
    pub public_der_pkcs1: Option<Vec<u8>>,
}

impl TestKey {
    pub fn encoding_key(&self) -> EncodingKey {
        match self.alg {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_der(&self.private_der),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_der(&self.private_der),
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.private_der),
            a => panic!("no key for {a:?}"),
        }
    }

    /// The same key material under another kid.
    pub fn with_kid(&self, kid: &str) -> TestKey {
        let mut k = self.clone();
        k.kid = kid.to_string();
        k.private_jwk["kid"] = json!(kid);
        k.public_jwk["kid"] = json!(kid);
        k
    }

    /// The same key with the JWK's `alg` changed (or removed with `None`).
    pub fn with_jwk_alg(&self, alg: Option<&str>) -> TestKey {
        let mut k = self.clone();
        for jwk in [&mut k.private_jwk, &mut k.public_jwk] {
            match alg {
                Some(a) => jwk["alg"] = json!(a),
                None => {
                    jwk.as_object_mut().unwrap().remove("alg");
                }
            }
        }
        k
    }

    pub fn alg_name(&self) -> &'static str {
        alg_name(self.alg)
    }
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => panic!("alg {a:?}"),
    }
}

fn parse_alg(s: &str) -> Algorithm {
    match s {
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => panic!("alg {s}"),
    }
}

fn node_bin() -> String {
    std::env::var("NODE").unwrap_or_else(|_| "node".to_string())
}

fn check_node_modules() {
    let p = oidc_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (installs oidc-provider into tests/oidc/node_modules)",
        p.display()
    );
}

/// Generates fresh keys: `specs` = [(kid, "RS256"|"PS256"|"ES256"|"ES384"|"EdDSA")].
pub fn generate_keys(specs: &[(&str, &str)]) -> Vec<TestKey> {
    let args: Vec<String> = specs.iter().map(|(k, a)| format!("{k}:{a}")).collect();
    let out = Command::new(node_bin())
        .arg(oidc_dir().join("keygen.mjs"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run node keygen.mjs (is node on PATH?)");
    assert!(
        out.status.success(),
        "keygen.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arr: Vec<Value> = serde_json::from_slice(&out.stdout).expect("keygen JSON");
    arr.into_iter()
        .map(|v| TestKey {
            kid: v["kid"].as_str().unwrap().to_string(),
            alg: parse_alg(v["alg"].as_str().unwrap()),
            private_jwk: v["private_jwk"].clone(),
            public_jwk: v["public_jwk"].clone(),
            private_der: b64_decode(v["private_der"].as_str().unwrap()),
            public_pem_spki: v["public_pem_spki"].as_str().unwrap().to_string(),
            public_der_spki: b64_decode(v["public_der_spki"].as_str().unwrap()),
            public_pem_pkcs1: v["public_pem_pkcs1"].as_str().map(str::to_string),
            public_der_pkcs1: v["public_der_pkcs1"].as_str().map(b64_decode),
        })
        .collect()
}

/// A pool of keys generated once per test binary (RSA generation is the slow part):
/// rsa[0..4], ec[0..2] (P-256), ed[0..2] (Ed25519), es384[0].
pub struct KeyPool {
    pub rsa: Vec<TestKey>,
    pub ec: Vec<TestKey>,
    pub ed: Vec<TestKey>,
    pub es384: Vec<TestKey>,
}

pub fn pool() -> &'static KeyPool {
    static POOL: OnceLock<KeyPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let keys = generate_keys(&[
            ("rsa0", "RS256"),
            ("rsa1", "RS256"),
            ("rsa2", "RS256"),
            ("rsa3", "RS256"),
            ("ec0", "ES256"),
            ("ec1", "ES256"),
            ("ed0", "EdDSA"),
            ("ed1", "EdDSA"),
            ("p384", "ES384"),
        ]);
        KeyPool {
            rsa: keys[0..4].to_vec(),
            ec: keys[4..6].to_vec(),
            ed: keys[6..8].to_vec(),
            es384: keys[8..9].to_vec(),
        }
    })
}

/// `{"keys": [public JWKs]}`
pub fn jwks_public(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>() })
}

/// `{"keys": [private JWKs]}` (for the provider's key file).
pub fn jwks_private(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.private_jwk.clone()).collect::<Vec<_>>() })
}

// ====================================================================== tokens

/// Claims of a token that passes every check of an issuer configured by
/// [`IssuerCfg::new`]: aud jupyterhub, exp in 5 min, MFA acr + amr, fresh auth_time.
pub fn claims(issuer: &str, user: &str) -> Value {
    let t = now();
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("sub-{user}"),
        "preferred_username": user,
        "email": format!("{user}@example.org"),
        "groups": ["physics"],
        "iat": t - 5,
        "exp": t + 300,
        "auth_time": t - 60,
        "acr": MFA_ACR,
        "amr": ["pwd", "otp"],
        "jti": nonce_string(),
    })
}

/// Signs `claims` with `key` (header: alg of the key, its kid, typ JWT).
pub fn mint(key: &TestKey, claims: &Value) -> String {
    let header = json!({"alg": key.alg_name(), "typ": "JWT", "kid": key.kid});
    sign_raw(&header.to_string(), &claims.to_string(), key, key.alg)
}

/// Signs exactly these header and payload JSON texts with `key` under `alg`.
pub fn sign_raw(header_json: &str, payload_json: &str, key: &TestKey, alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        b64url(header_json.as_bytes()),
        b64url(payload_json.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key.encoding_key(), alg)
        .unwrap_or_else(|e| panic!("sign with {:?}/{:?}: {e}", key.kid, alg));
    format!("{msg}.{sig}")
}

/// HMAC-SHA256 over header.payload keyed with arbitrary bytes (alg-confusion tests).
pub fn sign_hs256(header_json: &str, payload_json: &str, secret: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        b64url(header_json.as_bytes()),
        b64url(payload_json.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("hs256");
    format!("{msg}.{sig}")
}

/// Unsigned pieces joined by dots (for malformed-token tests).
pub fn raw_token(header_json: &str, payload_json: &str, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64url(header_json.as_bytes()),
        b64url(payload_json.as_bytes())
    )
}

// ====================================================================== cookie jar

#[derive(Clone, Debug)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: String,
    /// Attributes as sent, lower-cased names (`secure`, `httponly`, `samesite=lax`, ...).
    pub attrs: Vec<String>,
}

/// Parses one `Set-Cookie` value.
pub fn parse_set_cookie(v: &str) -> Cookie {
    let mut parts = v.split(';');
    let nv = parts.next().unwrap_or("").trim();
    let (name, value) = nv.split_once('=').unwrap_or((nv, ""));
    let mut path = "/".to_string();
    let mut attrs = vec![];
    for a in parts {
        let a = a.trim();
        if let Some(p) = a
            .strip_prefix("path=")
            .or_else(|| a.strip_prefix("Path="))
            .or_else(|| a.strip_prefix("PATH="))
        {
            path = p.to_string();
        }
        attrs.push(a.to_ascii_lowercase());
    }
    Cookie {
        name: name.to_string(),
        value: value.to_string(),
        path,
        attrs,
    }
}

impl Cookie {
    pub fn attr(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.attrs.iter().find_map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
    pub fn has(&self, flag: &str) -> bool {
        self.attr(flag).is_some()
    }
    /// Max-Age=0, or an Expires in the past, or an empty value.
    pub fn is_removal(&self) -> bool {
        self.value.is_empty()
            || self
                .attr("max-age")
                .map(|v| v.trim() == "0" || v.starts_with('-'))
                .unwrap_or(false)
            || self
                .attr("expires")
                .map(|v| v.contains("1970"))
                .unwrap_or(false)
    }
}

/// A cookie jar per port that ignores `Secure` (tests talk plain http to loopback) and
/// honours `Path`.
#[derive(Default, Clone, Debug)]
pub struct Jar {
    cookies: Vec<(u16, Cookie)>,
}

impl Jar {
    pub fn store(&mut self, port: u16, resp: &Response) {
        for v in resp.header_all("set-cookie") {
            let c = parse_set_cookie(v);
            self.cookies
                .retain(|(p, o)| !(*p == port && o.name == c.name && o.path == c.path));
            if !c.is_removal() {
                self.cookies.push((port, c));
            }
        }
    }

    pub fn header_for(&self, port: u16, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or("/");
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|(p, c)| {
                *p == port
                    && (c.path == "/"
                        || path == c.path
                        || path.starts_with(&format!("{}/", c.path.trim_end_matches('/'))))
            })
            .map(|(_, c)| c)
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        if matching.is_empty() {
            None
        } else {
            Some(
                matching
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.value))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    }

    pub fn get(&self, port: u16, name: &str) -> Option<Cookie> {
        self.cookies
            .iter()
            .find(|(p, c)| *p == port && c.name == name)
            .map(|(_, c)| c.clone())
    }

    pub fn remove(&mut self, port: u16, name: &str) {
        self.cookies
            .retain(|(p, c)| !(*p == port && c.name == name));
    }
}

/// A minimal browser: sends requests to `http://127.0.0.1:<port>` URLs with the
/// jar's cookies and records the cookies it gets back. Redirects are never followed
/// automatically.
#[derive(Default)]
pub struct Browser {
    pub jar: Jar,
    /// Extra headers on every request (e.g. `Accept: text/html`).
    pub headers: Vec<(String, String)>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    pub fn html() -> Browser {
        Browser {
            jar: Jar::default(),
            headers: vec![(
                "Accept".into(),
                "text/html,application/xhtml+xml,*/*;q=0.8".into(),
            )],
        }
    }

    pub fn send(&mut self, port: u16, mut req: Req) -> Response {
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(c) = self.jar.header_for(port, &req.target) {
            req = req.header("Cookie", &c);
        }
        let mut conn = Conn::tcp(port).unwrap_or_else(|e| panic!("connect {port}: {e}"));
        let resp = conn
            .request(&req)
            .unwrap_or_else(|e| panic!("{} {} on {port}: {e}", req.method, req.target));
        self.jar.store(port, &resp);
        resp
    }

    /// GET an absolute loopback URL.
    pub fn get(&mut self, url: &str) -> Response {
        let (port, path) = split_url(url);
        self.send(port, Req::get(&path))
    }

    pub fn post_form(&mut self, url: &str, pairs: &[(&str, &str)]) -> Response {
        let (port, path) = split_url(url);
        self.send(
            port,
            Req::post(&path, form(pairs))
                .header("Content-Type", "application/x-www-form-urlencoded"),
        )
    }
}

/// Resolves a `Location` against the URL it came from.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (port, _) = split_url(base);
    if location.starts_with('/') {
        format!("http://127.0.0.1:{port}{location}")
    } else {
        panic!("relative Location {location:?} not supported")
    }
}

// ====================================================================== the provider

/// Overrides for the provider's login form.
#[derive(Clone, Debug, Default)]
pub struct LoginAs {
    pub user: String,
    pub amr: Option<String>,
    pub acr: Option<String>,
    pub auth_time: Option<i64>,
}

impl LoginAs {
    pub fn user(u: &str) -> LoginAs {
        LoginAs {
            user: u.to_string(),
            ..Default::default()
        }
    }
    pub fn amr(mut self, v: &str) -> Self {
        self.amr = Some(v.into());
        self
    }
    pub fn acr(mut self, v: &str) -> Self {
        self.acr = Some(v.into());
        self
    }
    pub fn auth_time(mut self, t: i64) -> Self {
        self.auth_time = Some(t);
        self
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("login", self.user.clone()),
            ("password", IDP_PASSWORD.to_string()),
            ("otp", "123456".to_string()),
        ];
        if let Some(v) = &self.amr {
            f.push(("amr", v.clone()));
        }
        if let Some(v) = &self.acr {
            f.push(("acr", v.clone()));
        }
        if let Some(v) = self.auth_time {
            f.push(("auth_time", v.to_string()));
        }
        f
    }
}

#[derive(Clone, Debug)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
}

pub struct ProviderOptions {
    pub keys: Vec<TestKey>,
    pub redirect_uris: Vec<String>,
    pub client_secret: Option<String>,
    pub id_token_alg: Option<String>,
    pub at_alg: Option<String>,
    pub at_ttl: Option<u64>,
}

impl ProviderOptions {
    pub fn new(keys: &[&TestKey]) -> ProviderOptions {
        ProviderOptions {
            keys: keys.iter().map(|k| (*k).clone()).collect(),
            redirect_uris: vec![],
            client_secret: None,
            id_token_alg: None,
            at_alg: None,
            at_ttl: None,
        }
    }
    /// Registers hubgate's callback on `port` for the `hubgate` clients.
    pub fn hubgate_port(mut self, port: u16) -> Self {
        self.redirect_uris
            .push(format!("http://127.0.0.1:{port}/_hubgate/oidc/callback"));
        self
    }
    pub fn client_secret(mut self, s: &str) -> Self {
        self.client_secret = Some(s.into());
        self
    }
    pub fn id_token_alg(mut self, a: &str) -> Self {
        self.id_token_alg = Some(a.into());
        self
    }
    pub fn at_alg(mut self, a: &str) -> Self {
        self.at_alg = Some(a.into());
        self
    }
}

type Buf = Arc<Mutex<Vec<u8>>>;

/// The test OpenID provider (node `tests/oidc/provider.mjs`), killed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    pub issuer: String,
    pub port: u16,
    pub jwks_file: PathBuf,
    out: Buf,
    _dir: TempDir,
}

impl OidcProvider {
    pub fn start(opts: ProviderOptions) -> OidcProvider {
        check_node_modules();
        let dir = TempDir::new("oidc");
        let jwks_file = dir.join("jwks.json");
        let keys: Vec<&TestKey> = opts.keys.iter().collect();
        std::fs::write(&jwks_file, jwks_private(&keys).to_string()).unwrap();
        let mut cmd = Command::new(node_bin());
        cmd.arg(oidc_dir().join("provider.mjs"))
            .arg("--jwks")
            .arg(&jwks_file);
        for u in &opts.redirect_uris {
            cmd.arg("--redirect-uri").arg(u);
        }
        if let Some(s) = &opts.client_secret {
            cmd.arg("--client-secret").arg(s);
        }
        if let Some(a) = &opts.id_token_alg {
            cmd.arg("--id-token-alg").arg(a);
        }
        if let Some(a) = &opts.at_alg {
            cmd.arg("--at-alg").arg(a);
        }
        if let Some(t) = opts.at_ttl {
            cmd.arg("--at-ttl").arg(t.to_string());
        }
        cmd.current_dir(oidc_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .expect("spawn node provider.mjs (is node on PATH?)");
        let out: Buf = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let stdout = child.stdout.take().unwrap();
            let out1 = out.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    out1.lock().unwrap().extend_from_slice(line.as_bytes());
                    if let Some(u) = line.trim().strip_prefix("listening ") {
                        let _ = tx.send(u.to_string());
                    }
                    line.clear();
                }
            });
            let mut stderr = child.stderr.take().unwrap();
            let out2 = out.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    out2.lock().unwrap().extend_from_slice(&b[..n]);
                }
            });
        }
        let issuer = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "test OpenID provider did not start:\n{}",
                    String::from_utf8_lossy(&out.lock().unwrap())
                );
            }
        };
        let port = split_url(&issuer).0;
        super::reserve_port(port);
        OidcProvider {
            child: Some(child),
            issuer,
            port,
            jwks_file,
            out,
            _dir: dir,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Rewrites the key file and reloads it (SIGHUP); sessions survive.
    pub fn rotate(&self, keys: &[&TestKey]) {
        let before = self.output().matches("reloaded ").count();
        std::fs::write(&self.jwks_file, jwks_private(keys).to_string()).unwrap();
        unsafe {
            libc::kill(self.child.as_ref().unwrap().id() as i32, libc::SIGHUP);
        }
        assert!(
            wait_until(Duration::from_secs(10), || self
                .output()
                .matches("reloaded ")
                .count()
                > before),
            "provider did not reload: {}",
            self.output()
        );
        assert!(
            !self.output().contains("reload failed"),
            "{}",
            self.output()
        );
    }

    /// The provider's published key ids.
    pub fn published_kids(&self) -> Vec<String> {
        let r = super::client::get(self.port, "/jwks");
        assert_eq!(r.status, 200, "{}", r.describe());
        r.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Drives the provider's login for `client_id` step by step with `browser`
    /// from an authorization URL to the redirect back to the client; returns that
    /// final redirect's `Location`.
    pub fn authorize(
        &self,
        browser: &mut Browser,
        auth_url: &str,
        who: &LoginAs,
        redirect_prefix: &str,
    ) -> String {
        let mut url = auth_url.to_string();
        for _ in 0..10 {
            if url.starts_with(redirect_prefix) {
                return url;
            }
            let r = browser.get(&url);
            match r.status {
                302 | 303 => {
                    url = resolve(&url, r.header("location").expect("Location"));
                }
                200 if url.contains("/interaction/") => {
                    let uid = url
                        .split("/interaction/")
                        .nth(1)
                        .unwrap()
                        .split(['/', '?'])
                        .next()
                        .unwrap()
                        .to_string();
                    let fields = who.fields();
                    let pairs: Vec<(&str, &str)> =
                        fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let r = browser
                        .post_form(&format!("{}/interaction/{uid}/login", self.issuer), &pairs);
                    assert_eq!(r.status, 303, "IdP login as {}: {}", who.user, r.describe());
                    url = resolve(&url, r.header("location").expect("Location"));
                }
                _ => panic!("unexpected IdP answer for {url}: {}", r.describe()),
            }
        }
        panic!("IdP login did not reach {redirect_prefix}");
    }

    /// Real authorization-code + PKCE flow with the `test-cli` client: tokens for `who`.
    pub fn login(&self, who: &LoginAs) -> Tokens {
        let mut b = Browser::new();
        let verifier = format!("{}{}", nonce_string(), nonce_string());
        let challenge = b64url(&sha256(verifier.as_bytes()));
        let state = nonce_string();
        let nonce = nonce_string();
        let auth = format!(
            "{}/auth?{}",
            self.issuer,
            form(&[
                ("client_id", "test-cli"),
                ("response_type", "code"),
                ("scope", "openid email profile hub"),
                ("redirect_uri", TEST_CLI_REDIRECT),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
        );
        let back = self.authorize(&mut b, &auth, who, TEST_CLI_REDIRECT);
        assert_eq!(
            query_param(&back, "state").as_deref(),
            Some(state.as_str()),
            "{back}"
        );
        assert_eq!(
            query_param(&back, "iss").as_deref(),
            Some(self.issuer.as_str()),
            "{back}"
        );
        let code = query_param(&back, "code").unwrap_or_else(|| panic!("no code in {back}"));
        let r = b.post_form(
            &format!("{}/token", self.issuer),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", TEST_CLI_REDIRECT),
                ("code_verifier", &verifier),
                ("client_id", "test-cli"),
            ],
        );
        assert_eq!(r.status, 200, "token endpoint: {}", r.describe());
        let j = r.json();
        let t = Tokens {
            access_token: j["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            id_token: j["id_token"].as_str().expect("id_token").to_string(),
        };
        let c = jwt_claims(&t.access_token);
        assert_eq!(c["aud"], json!(AUDIENCE), "access token: {c}");
        assert_eq!(
            c["preferred_username"],
            json!(who.user),
            "access token: {c}"
        );
        t
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ====================================================================== JWKS / discovery stub

/// What the stub's `/jwks` answers.
#[derive(Clone, Debug)]
pub enum JwksMode {
    /// 200 with this JSON.
    Json(Value),
    /// This status with an empty JSON object.
    Status(u16),
    /// Accept, read, never answer.
    Hang,
    /// 200 with this raw body.
    Raw(String),
}

struct StubState {
    issuer: String,
    mode: JwksMode,
    discovery_mode: Option<JwksMode>,
    token_response: Option<Value>,
}

/// An issuer stand-in on 127.0.0.1: `/.well-known/openid-configuration` (issuer = its
/// own URL, `jwks_uri` = `<url>/jwks`) and `/jwks` answering per [`JwksMode`],
/// switchable at any time; every request is recorded (hit counters).
pub struct JwksStub {
    pub backend: Backend,
    state: Arc<Mutex<StubState>>,
    /// `http://127.0.0.1:<port>` (also the issuer string).
    pub issuer: String,
}

impl JwksStub {
    pub fn start(keys: &[&TestKey]) -> JwksStub {
        Self::with_mode(JwksMode::Json(jwks_public(keys)))
    }

    pub fn with_mode(mode: JwksMode) -> JwksStub {
        let state = Arc::new(Mutex::new(StubState {
            issuer: String::new(),
            mode,
            discovery_mode: None,
            token_response: None,
        }));
        let st = state.clone();
        let backend = Backend::start(move |req: &Recorded| {
            let s = st.lock().unwrap();
            let answer = |m: &JwksMode| match m {
                JwksMode::Json(v) => Reply::new(200).json(v),
                JwksMode::Status(c) => Reply::new(*c).json(&json!({})),
                JwksMode::Hang => Reply::new(200).hang(),
                JwksMode::Raw(b) => Reply::new(200)
                    .header("Content-Type", "application/json")
                    .body(b.clone()),
            };
            match req.path() {
                "/.well-known/openid-configuration" => match &s.discovery_mode {
                    Some(m) => answer(m),
                    None => Reply::new(200).json(&json!({
                        "issuer": s.issuer,
                        "jwks_uri": format!("{}/jwks", s.issuer),
                        "authorization_endpoint": format!("{}/auth", s.issuer),
                        "token_endpoint": format!("{}/token", s.issuer),
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                        "code_challenge_methods_supported": ["S256"],
                        "authorization_response_iss_parameter_supported": true,
                    })),
                },
                "/jwks" => answer(&s.mode),
                "/token" if req.method == "POST" => match &s.token_response {
                    Some(v) => Reply::new(200).header("Cache-Control", "no-store").json(v),
                    None => Reply::new(400).json(&json!({"error": "invalid_grant"})),
                },
                _ => Reply::new(404).json(&json!({"error": "not found"})),
            }
        });
        let issuer = backend.url();
        state.lock().unwrap().issuer = issuer.clone();
        JwksStub {
            backend,
            state,
            issuer,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn set_mode(&self, mode: JwksMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.set_mode(JwksMode::Json(jwks_public(keys)));
    }

    /// What `POST /token` answers (400 invalid_grant when `None`).
    pub fn set_token_response(&self, v: Option<Value>) {
        self.state.lock().unwrap().token_response = v;
    }

    /// The form bodies of the token requests received, decoded.
    pub fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.backend
            .requests()
            .iter()
            .filter(|r| r.path() == "/token")
            .map(|r| query_params(&format!("?{}", String::from_utf8_lossy(&r.body))))
            .collect()
    }

    pub fn set_discovery(&self, mode: Option<JwksMode>) {
        self.state.lock().unwrap().discovery_mode = mode;
    }

    /// Requests received for exactly this path.
    pub fn hits(&self, path: &str) -> usize {
        self.backend
            .requests()
            .iter()
            .filter(|r| r.path() == path)
            .count()
    }

    pub fn jwks_hits(&self) -> usize {
        self.hits("/jwks")
    }

    pub fn total_hits(&self) -> usize {
        self.backend.count()
    }
}

// ====================================================================== hubgate config

/// One `[[auth.issuers]]` table.
#[derive(Clone, Debug)]
pub struct IssuerCfg {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub discovery: Option<bool>,
    pub algorithms: Vec<String>,
    pub leeway: u64,
    pub username_claim: String,
    pub username_lowercase: bool,
    pub groups_claim: String,
    pub admin_groups: Vec<String>,
    pub require_mfa: bool,
    pub mfa_acr: Vec<String>,
    pub mfa_amr: Vec<String>,
    pub max_auth_age: u64,
    pub refresh: u64,
    pub max_stale: u64,
    pub min_refetch: u64,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    /// Extra raw TOML lines inside the table.
    pub extra: Vec<String>,
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl IssuerCfg {
    /// The issuer with the settings of the example (discovery on).
    pub fn new(issuer: &str) -> IssuerCfg {
        IssuerCfg {
            issuer: issuer.to_string(),
            audiences: strs(&[AUDIENCE]),
            jwks_url: None,
            jwks_file: None,
            discovery: None,
            algorithms: strs(&["RS256", "ES256", "EdDSA"]),
            leeway: 30,
            username_claim: "preferred_username".into(),
            username_lowercase: true,
            groups_claim: "groups".into(),
            admin_groups: strs(&["hub-admins"]),
            require_mfa: true,
            mfa_acr: strs(&[MFA_ACR]),
            mfa_amr: strs(&["mfa", "otp", "hwk"]),
            max_auth_age: 43200,
            refresh: 600,
            max_stale: 86400,
            min_refetch: 30,
            client_id: None,
            client_secret_file: None,
            scopes: strs(&["openid", "profile", "email"]),
            extra: vec![],
        }
    }

    /// An issuer whose keys come from `stub`'s `/jwks` (jwks-url, no discovery).
    pub fn stub(stub: &JwksStub) -> IssuerCfg {
        let mut c = IssuerCfg::new(&stub.issuer);
        c.jwks_url = Some(stub.jwks_url());
        c
    }

    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml_str(s);
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut t = String::from("\n[[auth.issuers]]\n");
        t += &format!("issuer = {}\n", q(&self.issuer));
        t += &format!("audiences = {}\n", list(&self.audiences));
        if let Some(u) = &self.jwks_url {
            t += &format!("jwks-url = {}\n", q(u));
        }
        if let Some(f) = &self.jwks_file {
            t += &format!("jwks-file = {}\n", q(&f.to_string_lossy()));
        }
        if let Some(d) = self.discovery {
            t += &format!("discovery = {d}\n");
        }
        t += &format!("algorithms = {}\n", list(&self.algorithms));
        t += &format!("leeway-seconds = {}\n", self.leeway);
        t += &format!("username-claim = {}\n", q(&self.username_claim));
        t += &format!("username-lowercase = {}\n", self.username_lowercase);
        t += &format!("groups-claim = {}\n", q(&self.groups_claim));
        t += &format!("admin-groups = {}\n", list(&self.admin_groups));
        t += &format!("require-mfa = {}\n", self.require_mfa);
        t += &format!("mfa-acr = {}\n", list(&self.mfa_acr));
        t += &format!("mfa-amr = {}\n", list(&self.mfa_amr));
        t += &format!("max-auth-age-seconds = {}\n", self.max_auth_age);
        t += &format!("refresh-seconds = {}\n", self.refresh);
        t += &format!("max-stale-seconds = {}\n", self.max_stale);
        t += &format!("min-refetch-seconds = {}\n", self.min_refetch);
        if let Some(c) = &self.client_id {
            t += &format!("client-id = {}\n", q(c));
            t += &format!("scopes = {}\n", list(&self.scopes));
        }
        if let Some(f) = &self.client_secret_file {
            t += &format!("client-secret-file = {}\n", q(&f.to_string_lossy()));
        }
        for l in &self.extra {
            t += l;
            t.push('\n');
        }
        t
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The `[auth]` section plus its issuers and policies.
#[derive(Clone, Debug)]
pub struct AuthCfg {
    pub public_url: String,
    pub base_url: String,
    pub session_secret_file: Option<PathBuf>,
    pub session_lifetime: u64,
    pub query_param: Option<String>,
    pub close_websockets_on_expiry: bool,
    pub cache_size: u64,
    pub cache_ttl: u64,
    pub audit_log: String,
    pub issuers: Vec<IssuerCfg>,
    /// (prefix, access, groups)
    pub policies: Vec<(String, String, Vec<String>)>,
    /// Extra raw TOML lines in `[auth]`.
    pub extra: Vec<String>,
}

impl AuthCfg {
    /// `[auth]` for a hubgate whose public listener is `port`.
    pub fn new(port: u16, issuers: Vec<IssuerCfg>) -> AuthCfg {
        AuthCfg {
            public_url: format!("http://127.0.0.1:{port}"),
            base_url: "/".into(),
            session_secret_file: None,
            session_lifetime: 28800,
            query_param: None,
            close_websockets_on_expiry: true,
            cache_size: 100000,
            cache_ttl: 60,
            audit_log: "all".into(),
            issuers,
            policies: vec![],
            extra: vec![],
        }
    }

    pub fn policy(mut self, prefix: &str, access: &str, groups: &[&str]) -> Self {
        self.policies
            .push((prefix.into(), access.into(), strs(groups)));
        self
    }

    pub fn to_toml(&self) -> String {
        let q = toml_str;
        let mut t = String::from("[auth]\n");
        t += &format!("public-url = {}\n", q(&self.public_url));
        t += &format!("base-url = {}\n", q(&self.base_url));
        if let Some(f) = &self.session_secret_file {
            t += &format!("session-secret-file = {}\n", q(&f.to_string_lossy()));
        }
        t += &format!("session-lifetime-seconds = {}\n", self.session_lifetime);
        if let Some(p) = &self.query_param {
            t += &format!("query-param = {}\n", q(p));
        }
        t += &format!(
            "close-websockets-on-expiry = {}\n",
            self.close_websockets_on_expiry
        );
        t += &format!("cache-size = {}\n", self.cache_size);
        t += &format!("cache-ttl-seconds = {}\n", self.cache_ttl);
        t += &format!("audit-log = {}\n", q(&self.audit_log));
        for l in &self.extra {
            t += l;
            t.push('\n');
        }
        for i in &self.issuers {
            t += &i.to_toml();
        }
        for (prefix, access, groups) in &self.policies {
            t += "\n[[auth.policies]]\n";
            t += &format!("prefix = {}\n", q(prefix));
            t += &format!("access = {}\n", q(access));
            if !groups.is_empty() {
                t += &format!(
                    "groups = [{}]\n",
                    groups.iter().map(|g| q(g)).collect::<Vec<_>>().join(", ")
                );
            }
        }
        t
    }

    pub fn write(&self, dir: &TempDir) -> PathBuf {
        dir.write("hubgate.toml", self.to_toml())
    }
}

// ====================================================================== running hubgate with auth

/// hubgate started with an `[auth]` config and a metrics listener.
pub struct AuthProxy {
    pub hg: Hubgate,
    pub metrics_port: u16,
    pub config: PathBuf,
    pub dir: TempDir,
}

impl std::ops::Deref for AuthProxy {
    type Target = Hubgate;
    fn deref(&self) -> &Hubgate {
        &self.hg
    }
}

/// Starts hubgate on `port` (the one `cfg.public_url` names) with `cfg` written to a
/// temp file; does NOT wait for the key sets (see [`AuthProxy::wait_ready`]).
pub fn start_auth_proxy(port: u16, cfg: &AuthCfg) -> AuthProxy {
    start_auth_proxy_with(port, cfg, HubgateBuilder::default())
}

pub fn start_auth_proxy_with(port: u16, cfg: &AuthCfg, builder: HubgateBuilder) -> AuthProxy {
    let dir = TempDir::new("auth");
    let config = cfg.write(&dir);
    let metrics_port = free_port();
    let hg = builder
        .port(port)
        .args(&[
            "--config",
            config.to_str().unwrap(),
            "--metrics-ip",
            "127.0.0.1",
            "--metrics-port",
            &metrics_port.to_string(),
        ])
        .wait_port(metrics_port)
        .start();
    AuthProxy {
        hg,
        metrics_port,
        config,
        dir,
    }
}

/// Starts hubgate and waits until `/_chp_healthz` answers 200 (every issuer has keys).
pub fn start_ready(port: u16, cfg: &AuthCfg) -> AuthProxy {
    let p = start_auth_proxy(port, cfg);
    p.wait_ready();
    p
}

impl AuthProxy {
    pub fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(15), || {
            super::client::try_http(self.hg.port, &Req::get("/_chp_healthz"))
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        assert!(
            ok,
            "hubgate never became ready (/_chp_healthz != 200):\n{}",
            self.hg.output()
        );
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        let r = super::client::get(self.metrics_port, "/metrics");
        assert_eq!(r.status, 200, "{}", r.describe());
        r.text()
    }

    /// Sum of `hubgate_auth_decisions_total` samples with these label values.
    pub fn decisions(&self, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), "hubgate_auth_decisions_total", labels)
    }

    pub fn denials(&self, reason: &str) -> f64 {
        self.decisions(&[("result", "deny"), ("reason", reason)])
    }

    /// `req` with `Authorization: Bearer <token>`.
    pub fn bearer(&self, req: Req, token: &str) -> Response {
        self.hg
            .request(&req.header("Authorization", &format!("Bearer {token}")))
    }

    pub fn get_bearer(&self, path: &str, token: &str) -> Response {
        self.bearer(Req::get(path), token)
    }

    /// Asserts the token (and its signature part) never appeared in hubgate's output.
    pub fn assert_not_logged(&self, token: &str) {
        let out = self.hg.output();
        assert!(!out.contains(token), "token appears in hubgate's output");
        if let Some(sig) = token.rsplit('.').next() {
            if sig.len() > 16 {
                assert!(
                    !out.contains(sig),
                    "token signature appears in hubgate's output"
                );
            }
        }
        if let Some(payload) = token.split('.').nth(1) {
            if payload.len() > 40 {
                assert!(
                    !out.contains(payload),
                    "token payload appears in hubgate's output"
                );
            }
        }
    }

    /// Audit lines (lines containing `decision=`) in hubgate's output.
    pub fn audit_lines(&self) -> Vec<String> {
        self.hg
            .output()
            .lines()
            .filter(|l| l.contains("decision="))
            .map(str::to_string)
            .collect()
    }

    /// Waits until an audit line containing every needle appears.
    pub fn wait_audit(&self, needles: &[&str]) -> String {
        let mut found = String::new();
        let ok = wait_until(Duration::from_secs(5), || {
            match self
                .audit_lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                Some(l) => {
                    found = l;
                    true
                }
                None => false,
            }
        });
        assert!(
            ok,
            "no audit line with {needles:?}; audit lines:\n{}",
            self.audit_lines().join("\n")
        );
        found
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, lbl) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|p| p.trim() == format!("{k}=\"{v}\"")));
        if ok {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

// ====================================================================== assertions

/// Words that would reveal why a credential was refused; never in a denial body.
pub const REASON_WORDS: &[&str] = &[
    "missing_credential",
    "multiple_credentials",
    "malformed",
    "too_large",
    "unknown_issuer",
    "unknown_key",
    "bad_signature",
    "bad_algorithm",
    "not_yet_valid",
    "issued_in_future",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "mfa_required",
    "auth_too_old",
    "no_username",
    "keys_unavailable",
    "not_owner",
    "not_in_group",
    "origin_mismatch",
    "bad_session",
    "signature",
    "audience",
    "kid",
];

/// An API-style denial: `status`, JSON `{"status": status, "message": <generic>}`,
/// no reason in the body, no redirect, `WWW-Authenticate: Bearer realm="hubgate"` on 401.
pub fn assert_api_denial(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.describe());
    assert!(
        r.header("location").is_none(),
        "{what}: redirect on an API denial: {}",
        r.describe()
    );
    assert_eq!(
        r.media_type().as_deref(),
        Some("application/json"),
        "{what}: {}",
        r.describe()
    );
    let j: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body not JSON ({e}): {}", r.describe()));
    assert_eq!(j["status"], json!(status), "{what}: {}", r.describe());
    let msg = j["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {}", r.describe()));
    assert_generic_body(r, what);
    let _ = msg;
    if status == 401 {
        let wa = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate: {}", r.describe()));
        assert!(
            wa.starts_with("Bearer") && wa.contains("realm=\"hubgate\""),
            "{what}: WWW-Authenticate {wa:?}"
        );
    }
}

/// The body names no reason.
pub fn assert_generic_body(r: &Response, what: &str) {
    let body = r.text().to_ascii_lowercase();
    for w in REASON_WORDS {
        assert!(
            !body.contains(w),
            "{what}: denial body reveals {w:?}: {}",
            r.describe()
        );
    }
}

/// `rec` is nothing: the backend saw no request.
pub fn assert_not_called(b: &Backend, what: &str) {
    assert_eq!(
        b.count(),
        0,
        "{what}: the backend was called: {:?}",
        b.requests()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>()
    );
}

/// Writes `contents` to `name` in `dir` with mode 0600.
pub fn secret_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let p = dir.write(name, contents);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A parsed `Set-Cookie` for `name` in a response.
pub fn set_cookie(r: &Response, name: &str) -> Option<Cookie> {
    r.header_all("set-cookie")
        .into_iter()
        .map(parse_set_cookie)
        .find(|c| c.name == name)
}

/// Reads a file if it exists.
pub fn read_opt(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

// ====================================================================== a standard environment

/// hubgate with `[auth]` and one issuer served by a [`JwksStub`] (keys `k-rsa`
/// RS256, `k-ec` ES256, `k-ed` EdDSA), plus three echo backends routed the way
/// JupyterHub routes them: `/` → `hub` (`{"jupyterhub": true}`), `/user/alice` →
/// `alice` (`{"user": "alice"}`), `/user/bob` → `bob` (`{"user": "bob"}`).
pub struct AuthEnv {
    pub stub: JwksStub,
    pub px: AuthProxy,
    pub hub: Backend,
    pub alice: Backend,
    pub bob: Backend,
    pub rsa: TestKey,
    pub ec: TestKey,
    pub ed: TestKey,
}

impl AuthEnv {
    pub fn start() -> AuthEnv {
        Self::start_with(|_| {})
    }

    /// `tweak` may change the config (the stub's issuer is `cfg.issuers[0]`).
    pub fn start_with(tweak: impl FnOnce(&mut AuthCfg)) -> AuthEnv {
        let p = pool();
        let rsa = p.rsa[0].with_kid("k-rsa");
        let ec = p.ec[0].with_kid("k-ec");
        let ed = p.ed[0].with_kid("k-ed");
        let stub = JwksStub::start(&[&rsa, &ec, &ed]);
        let port = free_port();
        let mut cfg = AuthCfg::new(port, vec![IssuerCfg::stub(&stub)]);
        tweak(&mut cfg);
        let px = start_ready(port, &cfg);
        let hub = Backend::echo();
        let alice = Backend::echo();
        let bob = Backend::echo();
        px.add_route_json(
            "/",
            &json!({"target": hub.url(), "jupyterhub": true}).to_string(),
        );
        px.add_route_json(
            "/user/alice",
            &json!({"target": alice.url(), "user": "alice", "server_name": "", "jupyterhub": true})
                .to_string(),
        );
        px.add_route_json(
            "/user/bob",
            &json!({"target": bob.url(), "user": "bob", "server_name": "", "jupyterhub": true})
                .to_string(),
        );
        AuthEnv {
            stub,
            px,
            hub,
            alice,
            bob,
            rsa,
            ec,
            ed,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.stub.issuer
    }

    /// Valid claims for `user` from this issuer.
    pub fn claims(&self, user: &str) -> Value {
        claims(&self.stub.issuer, user)
    }

    /// A valid RS256 token for `user`.
    pub fn token(&self, user: &str) -> String {
        mint(&self.rsa, &self.claims(user))
    }

    /// A token for `user` after `f` edited its claims.
    pub fn token_with(&self, user: &str, f: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut c = self.claims(user);
        f(c.as_object_mut().unwrap());
        mint(&self.rsa, &c)
    }

    pub fn clear(&self) {
        self.hub.clear();
        self.alice.clear();
        self.bob.clear();
    }

    /// No backend saw a request.
    pub fn assert_none_called(&self, what: &str) {
        assert_not_called(&self.hub, &format!("{what} (hub)"));
        assert_not_called(&self.alice, &format!("{what} (alice)"));
        assert_not_called(&self.bob, &format!("{what} (bob)"));
    }

    /// `GET path` with `token` is denied API-style with `status`; no backend called.
    pub fn assert_denied(&self, path: &str, token: &str, status: u16, what: &str) -> Response {
        self.clear();
        let r = self.px.get_bearer(path, token);
        assert_api_denial(&r, status, what);
        self.assert_none_called(what);
        r
    }

    /// `GET path` with `token` reaches `backend` (200) and returns what it got.
    pub fn assert_allowed(
        &self,
        path: &str,
        token: &str,
        backend: &Backend,
        what: &str,
    ) -> Recorded {
        self.clear();
        let r = self.px.get_bearer(path, token);
        assert_eq!(r.status, 200, "{what}: {}", r.describe());
        assert_eq!(
            backend.count(),
            1,
            "{what}: backend not called exactly once"
        );
        backend.last().unwrap()
    }
}

// ====================================================================== login through a fake IdP

/// The first leg of hubgate's browser login: `GET /_hubgate/login?next=…` and what
/// hubgate put into the authorization request.
#[derive(Clone, Debug)]
pub struct LoginStart {
    pub response: Response,
    /// The authorization URL hubgate redirected to.
    pub auth_url: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub redirect_uri: String,
}

/// `GET /_hubgate/login?next=<next>` as a browser; asserts the 302 to an
/// authorization endpoint and parses it.
pub fn login_start(b: &mut Browser, px_port: u16, next: &str) -> LoginStart {
    let r = b.send(
        px_port,
        Req::get(&format!("/_hubgate/login?{}", form(&[("next", next)])))
            .header("Accept", "text/html"),
    );
    assert_eq!(r.status, 302, "/_hubgate/login: {}", r.describe());
    let auth_url = r.header("location").expect("Location").to_string();
    let p = |n: &str| query_param(&auth_url, n).unwrap_or_else(|| panic!("no {n} in {auth_url}"));
    LoginStart {
        state: p("state"),
        nonce: p("nonce"),
        code_challenge: p("code_challenge"),
        redirect_uri: p("redirect_uri"),
        auth_url,
        response: r,
    }
}

/// Completes a login against a [`JwksStub`] acting as the IdP: its token endpoint
/// answers with `id_token`, then the browser hits hubgate's callback with a code, the
/// state from `start` and `iss` = the stub. Returns the callback response.
pub fn fake_idp_callback(
    b: &mut Browser,
    px_port: u16,
    stub: &JwksStub,
    start: &LoginStart,
    id_token: &str,
) -> Response {
    stub.set_token_response(Some(json!({
        "access_token": "opaque-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
        "scope": "openid profile email",
    })));
    let q = form(&[
        ("code", &format!("code-{}", nonce_string())),
        ("state", &start.state),
        ("iss", &stub.issuer),
    ]);
    b.send(
        px_port,
        Req::get(&format!("/_hubgate/oidc/callback?{q}")).header("Accept", "text/html"),
    )
}

/// ID-token claims for the fake IdP login: `claims()` with aud = `client_id` and nonce.
pub fn id_token_claims(issuer: &str, user: &str, client_id: &str, nonce: &str) -> Value {
    let mut c = claims(issuer, user);
    c["aud"] = json!(client_id);
    c["nonce"] = json!(nonce);
    c
}

/// A session cookie value obtained through a fake-IdP login as `user` (asserts success).
pub fn fake_session(px_port: u16, stub: &JwksStub, key: &TestKey, user: &str) -> String {
    let mut b = Browser::new();
    let start = login_start(&mut b, px_port, "/");
    let tok = mint(
        key,
        &id_token_claims(&stub.issuer, user, "hubgate", &start.nonce),
    );
    let r = fake_idp_callback(&mut b, px_port, stub, &start, &tok);
    assert_eq!(r.status, 302, "fake IdP callback: {}", r.describe());
    set_cookie(&r, SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie: {}", r.describe()))
        .value
}
