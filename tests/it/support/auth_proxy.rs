//! hubgate with `[auth]`: config files (`[[auth.issuers]]`, policies), the running proxy
//! and its metrics, the standard denial assertions, a standard environment ([`AuthEnv`])
//! and logins through a fake IdP.

use super::backend::{Backend, Recorded};
use super::browser::{form, parse_set_cookie, query_param, Browser, Cookie};
use super::client::{Req, Response};
use super::jwt::{claims, mint, nonce_string, pool, TestKey};
use super::oidc::{JwksStub, AUDIENCE, MFA_ACR, SESSION_COOKIE};
use super::process::{Hubgate, HubgateBuilder};
use super::{free_port, wait_until, TempDir};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// A typical issuer: the settings of the usual configuration example (discovery on).
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
