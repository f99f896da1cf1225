//! The test OpenID provider (`tests/oidc/provider.mjs`, panva's oidc-provider under node)
//! and a switchable JWKS / discovery stub for the cases a real provider cannot produce.
//!
//! Every process started here is killed on drop (and gets `PR_SET_PDEATHSIG`); every
//! wait is bounded.

use super::backend::{Backend, Recorded, Reply};
use super::browser::{form, query_param, query_params, resolve, split_url, Browser};
use super::jwt::{b64url, jwks_private, jwks_public, jwt_claims, nonce_string, sha256, TestKey};
use super::{wait_until, TempDir};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MFA_ACR: &str = "https://refeds.org/profile/mfa";
pub const SFA_ACR: &str = "https://refeds.org/profile/sfa";
pub const AUDIENCE: &str = "jupyterhub";
pub const SESSION_COOKIE: &str = "__Host-hubgate-session";
/// hubgate's cookie holding the ID token for the provider's logout (`Path=/_hubgate/logout`).
pub const LOGOUT_HINT_COOKIE: &str = "__Secure-hubgate-logout";
pub const LOGIN_COOKIE: &str = "__Host-hubgate-login";
/// Password of every account of the test provider (alice also needs OTP 123456).
pub const IDP_PASSWORD: &str = "test-password";
pub const TEST_CLI_REDIRECT: &str = "http://127.0.0.1:9/test-cli/callback";

pub fn oidc_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc"))
}

pub fn node_bin() -> String {
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
    /// `--step-up-mfa`: MFA claims only when the request asks for them (`acr_values`).
    pub step_up_mfa: bool,
    /// hubgate's origin for RP-initiated and back-channel logout (`--logout-origin`).
    pub logout_origin: Option<String>,
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
            step_up_mfa: false,
            logout_origin: None,
        }
    }
    /// The provider adds the second factor only when asked (see provider.mjs, "step-up").
    pub fn step_up_mfa(mut self) -> Self {
        self.step_up_mfa = true;
        self
    }
    /// Registers hubgate on `port` for RP-initiated and back-channel logout.
    pub fn logout_port(mut self, port: u16) -> Self {
        self.logout_origin = Some(format!("http://127.0.0.1:{port}"));
        self
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
        if opts.step_up_mfa {
            cmd.arg("--step-up-mfa");
        }
        if let Some(o) = &opts.logout_origin {
            cmd.arg("--logout-origin").arg(o);
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
