//! The `[auth]` section: trusted issuers, the MFA rule, path policies, the browser login.
//!
//! The file shape (serde, kebab-case) is validated here into [`AuthConfig`]; a setting that
//! cannot work (no issuer, a symmetric algorithm, an unreadable key file, an unknown access
//! kind) stops startup with the key's name.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::ConfigError;

/// `[auth]` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthSection {
    pub public_url: Option<String>,
    pub base_url: Option<String>,
    pub session_secret_file: Option<PathBuf>,
    pub session_lifetime_seconds: Option<u64>,
    pub query_param: Option<String>,
    pub close_websockets_on_expiry: Option<bool>,
    pub forward_authorization: Option<bool>,
    pub cache_size: Option<usize>,
    pub cache_ttl_seconds: Option<u64>,
    pub audit_log: Option<String>,
    pub revocation_lifetime_seconds: Option<u64>,
    pub revocation_capacity: Option<usize>,
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    #[serde(default)]
    pub policies: Vec<PolicySection>,
    pub hub_grants: Option<HubGrantsSection>,
}

/// `[auth.hub-grants]` as written in the file: learn from JupyterHub's REST API who else
/// may use a user's server (shares, and roles with `access:servers`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HubGrantsSection {
    pub hub_api_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub refresh_seconds: Option<u64>,
    pub max_stale_seconds: Option<u64>,
    pub request_timeout_seconds: Option<u64>,
    pub miss_wait_ms: Option<u64>,
    pub max_owners: Option<usize>,
    pub max_entries: Option<usize>,
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

/// `[[auth.issuers]]` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IssuerSection {
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub discovery: Option<bool>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub leeway_seconds: Option<u64>,
    pub username_claim: Option<String>,
    pub username_lowercase: Option<bool>,
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub admin_groups: Vec<String>,
    pub require_mfa: Option<bool>,
    #[serde(default)]
    pub mfa_acr: Vec<String>,
    pub mfa_amr: Option<Vec<String>>,
    pub max_auth_age_seconds: Option<u64>,
    pub refresh_seconds: Option<u64>,
    pub max_stale_seconds: Option<u64>,
    pub min_refetch_seconds: Option<u64>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
    pub step_up: Option<bool>,
    pub step_up_acr_values: Option<Vec<String>>,
}

/// `[[auth.policies]]` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicySection {
    pub prefix: Option<String>,
    pub access: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    /// A JWKS URL.
    Url(String),
    /// A local JWKS file (re-read on refresh).
    File(PathBuf),
}

/// One trusted issuer, validated.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub username_claim: String,
    pub username_lowercase: bool,
    pub groups_claim: String,
    pub admin_groups: Vec<String>,
    pub require_mfa: bool,
    pub mfa_acr: Vec<String>,
    pub mfa_amr: Vec<String>,
    pub max_auth_age: Duration,
    pub refresh: Duration,
    pub max_stale: Duration,
    pub min_refetch: Duration,
    /// Browser login through this issuer (authorization code + PKCE).
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// A browser whose login lacks MFA or is too old is sent back through this issuer's login
    /// with `prompt=login`, `max_age` and `acr_values` (once; see docs/security.md, "Step-up").
    pub step_up: bool,
    /// `acr_values` of a step-up request and of the RFC 9470 challenge (default `mfa-acr`).
    pub step_up_acr_values: Vec<String>,
}

/// Who may use a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone; the target authenticates (the hub's login pages, static files).
    Public,
    /// Any user with a valid MFA credential.
    Authenticated,
    /// Only the user named in the route's `user` field (JupyterHub's user servers) or an admin.
    Owner,
    /// Members of one of these groups (or admins).
    Group(Vec<String>),
}

/// A path prefix and its access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub prefix: String,
    pub access: Access,
}

/// Which decisions get an audit log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLog {
    All,
    Denials,
    Off,
}

/// The validated `[auth]` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `scheme://host[:port]` of the public URL (no path), for redirect URIs and Origin checks.
    pub public_origin: Option<String>,
    /// JupyterHub's base URL, with leading and trailing `/`.
    pub base_url: String,
    pub session_secret: Option<Vec<u8>>,
    pub session_lifetime: Duration,
    pub query_param: Option<String>,
    pub close_websockets_on_expiry: bool,
    pub forward_authorization: bool,
    pub cache_size: usize,
    pub cache_ttl: Duration,
    pub audit_log: AuditLog,
    /// How long a revocation (of a user's credentials or of one session) is kept: at least
    /// the longest credential lifetime, so nothing it refused becomes valid again.
    pub revocation_lifetime: Duration,
    /// At most this many revocations are kept; more are refused (fail closed, counted).
    pub revocation_capacity: usize,
    pub issuers: Vec<IssuerConfig>,
    /// Longest prefix first.
    pub policies: Vec<Policy>,
    /// Grants learned from the hub (`[auth.hub-grants]`), if configured.
    pub hub_grants: Option<HubGrantsConfig>,
}

/// The validated `[auth.hub-grants]`.
#[derive(Debug, Clone)]
pub struct HubGrantsConfig {
    /// The hub's REST API, without trailing `/` (`http://127.0.0.1:8081/hub/api`).
    pub hub_api_url: String,
    pub token: String,
    pub refresh: Duration,
    pub max_stale: Duration,
    pub request_timeout: Duration,
    /// How long a request waits for a first fetch of an owner's shares.
    pub miss_wait: Duration,
    /// Owners whose shares are kept (and refreshed).
    pub max_owners: usize,
    /// Users, groups or shares accepted from one listing.
    pub max_entries: usize,
    /// Role name → the `access:servers` scopes it grants (mirroring the hub's `load_roles`).
    pub roles: Vec<(String, Vec<String>)>,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn parse_algorithm(key: &str, name: &str) -> Result<Algorithm, ConfigError> {
    let alg: Algorithm = name.parse().map_err(|_| {
        invalid(
            key,
            format!("{name:?} is not a JWS algorithm; use RS256, PS256, ES256, ES384 or EdDSA"),
        )
    })?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(invalid(
            key,
            format!("{name} is symmetric: anyone who can verify could also mint tokens; use an asymmetric algorithm (RS256, ES256, EdDSA)"),
        )),
        other => Ok(other),
    }
}

/// The default path policies for a JupyterHub at `base` (with leading and trailing `/`).
pub fn default_policies(base: &str) -> Vec<Policy> {
    let mut out: Vec<Policy> = [
        "hub/login",
        "hub/logout",
        "hub/oauth_login",
        "hub/oauth_callback",
        "hub/static/",
        "hub/api/oauth2/",
    ]
    .iter()
    .map(|p| Policy {
        prefix: format!("{base}{p}"),
        access: Access::Public,
    })
    .collect();
    out.push(Policy {
        prefix: "/_hubgate/".into(),
        access: Access::Public,
    });
    out.push(Policy {
        prefix: format!("{base}user/"),
        access: Access::Owner,
    });
    out
}

fn read_secret(key: &str, path: &PathBuf) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(text)
}

impl AuthSection {
    /// Validates the section.
    pub fn validate(&self) -> Result<AuthConfig, ConfigError> {
        // The steps run in this order so that, of several mistakes, the same one is reported
        // first every time.
        let public_origin = self.public_origin()?;
        let base_url = self.base_url();
        let session_secret = self.session_secret()?;
        let audit_log = self.audit_log()?;
        let issuers = self.issuers(public_origin.as_deref())?;
        let policies = self.policies(&base_url)?;
        let query_param = self.query_param.clone().filter(|q| !q.is_empty());
        let session_lifetime = self.session_lifetime()?;
        let revocation_lifetime = self.revocation_lifetime(session_lifetime)?;
        let hub_grants = self.hub_grants.as_ref().map(|g| g.validate()).transpose()?;
        Ok(AuthConfig {
            public_origin,
            base_url,
            session_secret,
            session_lifetime,
            query_param,
            close_websockets_on_expiry: self.close_websockets_on_expiry.unwrap_or(true),
            forward_authorization: self.forward_authorization.unwrap_or(false),
            cache_size: self.cache_size.unwrap_or(100_000).max(1),
            cache_ttl: Duration::from_secs(self.cache_ttl_seconds.unwrap_or(60)),
            audit_log,
            revocation_lifetime,
            revocation_capacity: self.revocation_capacity.unwrap_or(100_000).max(1),
            issuers,
            policies,
            hub_grants,
        })
    }

    /// `scheme://host[:port]` of `auth.public-url`.
    fn public_origin(&self) -> Result<Option<String>, ConfigError> {
        let Some(url) = &self.public_url else {
            return Ok(None);
        };
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, r)| matches!(*s, "http" | "https") && !r.is_empty())
            .ok_or_else(|| invalid("auth.public-url", format!("{url:?} is not an http(s) URL")))?;
        let host = rest.split('/').next().unwrap_or_default();
        Ok(Some(format!("{scheme}://{host}")))
    }

    /// `auth.base-url` with leading and trailing `/`.
    fn base_url(&self) -> String {
        let mut base_url = self.base_url.clone().unwrap_or_else(|| "/".into());
        if !base_url.starts_with('/') {
            base_url.insert(0, '/');
        }
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        base_url
    }

    fn session_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.session_secret_file else {
            return Ok(None);
        };
        let s = read_secret("auth.session-secret-file", path)?;
        if s.len() < 32 {
            return Err(invalid(
                "auth.session-secret-file",
                "the secret must be at least 32 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(Some(s.into_bytes()))
    }

    fn audit_log(&self) -> Result<AuditLog, ConfigError> {
        match self.audit_log.as_deref().unwrap_or("all") {
            "all" => Ok(AuditLog::All),
            "denials" => Ok(AuditLog::Denials),
            "off" => Ok(AuditLog::Off),
            other => Err(invalid(
                "auth.audit-log",
                format!("{other:?}: use all, denials or off"),
            )),
        }
    }

    /// Every `[[auth.issuers]]`, validated in file order; at least one, each at most once.
    fn issuers(&self, public_origin: Option<&str>) -> Result<Vec<IssuerConfig>, ConfigError> {
        if self.issuers.is_empty() {
            return Err(invalid(
                "auth.issuers",
                "no issuer configured: add an [[auth.issuers]] table with issuer, audiences and a key source",
            ));
        }
        let issuers = self
            .issuers
            .iter()
            .enumerate()
            .map(|(i, sec)| sec.validate(i, public_origin))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in issuers.iter().enumerate() {
            if issuers[..i].iter().any(|b| b.issuer == a.issuer) {
                return Err(invalid(
                    format!("auth.issuers[{i}].issuer"),
                    "the same issuer is configured twice",
                ));
            }
        }
        Ok(issuers)
    }

    /// The default policies with the file's `[[auth.policies]]` over them, longest prefix first.
    fn policies(&self, base_url: &str) -> Result<Vec<Policy>, ConfigError> {
        let mut policies = default_policies(base_url);
        for (i, p) in self.policies.iter().enumerate() {
            let policy = p.validate(i)?;
            policies.retain(|q| q.prefix != policy.prefix);
            policies.push(policy);
        }
        policies.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        Ok(policies)
    }

    fn session_lifetime(&self) -> Result<Duration, ConfigError> {
        let session_lifetime =
            Duration::from_secs(self.session_lifetime_seconds.unwrap_or(8 * 3600));
        if session_lifetime.is_zero() {
            return Err(invalid(
                "auth.session-lifetime-seconds",
                "must be at least 1",
            ));
        }
        Ok(session_lifetime)
    }

    fn revocation_lifetime(&self, session_lifetime: Duration) -> Result<Duration, ConfigError> {
        let lifetime = self
            .revocation_lifetime_seconds
            .map_or(session_lifetime.max(Duration::from_secs(24 * 3600)), |s| {
                Duration::from_secs(s)
            });
        if lifetime < session_lifetime {
            return Err(invalid(
                "auth.revocation-lifetime-seconds",
                "must be at least auth.session-lifetime-seconds (a revoked session would come back)",
            ));
        }
        Ok(lifetime)
    }
}

/// The name of key `name` of the `i`th issuer, as errors report it.
fn issuer_key(i: usize, name: &str) -> String {
    format!("auth.issuers[{i}].{name}")
}

impl IssuerSection {
    /// Validates `auth.issuers[i]`; `public_origin` is needed when the issuer has a browser
    /// login.
    fn validate(&self, i: usize, public_origin: Option<&str>) -> Result<IssuerConfig, ConfigError> {
        let k = |name: &str| issuer_key(i, name);
        let issuer = self
            .issuer
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(
                    k("issuer"),
                    "missing: the exact `iss` value of the identity provider",
                )
            })?;
        if self.audiences.is_empty() {
            return Err(invalid(
                k("audiences"),
                "missing: the `aud` values hubgate accepts (e.g. [\"jupyterhub\"])",
            ));
        }
        let keys = self.key_source(i)?;
        let algorithms = self.algorithms(i)?;
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let leeway = secs(self.leeway_seconds, 30);
        if leeway > Duration::from_secs(300) {
            return Err(invalid(k("leeway-seconds"), "at most 300"));
        }
        let client_secret = self.browser_login(i, public_origin)?;
        let (require_mfa, mfa_amr) = self.mfa(i)?;
        let (step_up, step_up_acr_values) = self.step_up(i)?;
        Ok(IssuerConfig {
            issuer,
            audiences: self.audiences.clone(),
            keys,
            algorithms,
            leeway,
            username_claim: self
                .username_claim
                .clone()
                .unwrap_or_else(|| "preferred_username".into()),
            username_lowercase: self.username_lowercase.unwrap_or(true),
            groups_claim: self.groups_claim.clone().unwrap_or_else(|| "groups".into()),
            admin_groups: self.admin_groups.clone(),
            require_mfa,
            mfa_acr: self.mfa_acr.clone(),
            mfa_amr,
            max_auth_age: secs(self.max_auth_age_seconds, 12 * 3600),
            refresh: secs(self.refresh_seconds, 600).max(Duration::from_secs(1)),
            max_stale: secs(self.max_stale_seconds, 86_400),
            min_refetch: secs(self.min_refetch_seconds, 30),
            client_id: self.client_id.clone(),
            client_secret,
            scopes: self
                .scopes
                .clone()
                .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]),
            step_up,
            step_up_acr_values,
        })
    }

    /// `(step-up, step-up-acr-values)`. Step-up sends the browser through this issuer's login,
    /// so it needs `client-id`; it is on by default where there is one. The ACR values go into
    /// a URL parameter (space-separated) and a quoted challenge parameter, so they may not
    /// contain spaces, quotes, backslashes or control characters.
    fn step_up(&self, i: usize) -> Result<(bool, Vec<String>), ConfigError> {
        let has_login = self.client_id.is_some();
        let step_up = self.step_up.unwrap_or(has_login);
        if step_up && !has_login {
            return Err(invalid(
                issuer_key(i, "step-up"),
                "step-up sends the browser back through this issuer's login and needs client-id",
            ));
        }
        let values = self
            .step_up_acr_values
            .clone()
            .unwrap_or_else(|| self.mfa_acr.clone());
        if let Some(bad) = values.iter().find(|v| {
            v.is_empty()
                || v.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
        }) {
            return Err(invalid(
                issuer_key(i, "step-up-acr-values"),
                format!("{bad:?}: an ACR value must be non-empty, without spaces, quotes or backslashes"),
            ));
        }
        Ok((step_up, values))
    }

    /// The browser login's client secret, if any; the login needs `auth.public-url` for its
    /// redirect URI.
    fn browser_login(
        &self,
        i: usize,
        public_origin: Option<&str>,
    ) -> Result<Option<String>, ConfigError> {
        let client_secret = match &self.client_secret_file {
            Some(p) => Some(read_secret(&issuer_key(i, "client-secret-file"), p)?),
            None => None,
        };
        if self.client_id.is_some() && public_origin.is_none() {
            return Err(invalid(
                "auth.public-url",
                "needed for the browser login (client-id is set): the URL users open, e.g. https://hub.example.org",
            ));
        }
        Ok(client_secret)
    }

    /// Where the signing keys come from: a JWKS URL, a JWKS file, or discovery (the default).
    fn key_source(&self, i: usize) -> Result<KeySource, ConfigError> {
        let k = |name: &str| issuer_key(i, name);
        match (&self.jwks_url, &self.jwks_file, self.discovery) {
            (Some(_), Some(_), _) => Err(invalid(
                k("jwks-url"),
                "give jwks-url or jwks-file, not both",
            )),
            (Some(url), None, _) => Ok(KeySource::Url(url.clone())),
            (None, Some(file), _) => {
                std::fs::metadata(file).map_err(|e| {
                    invalid(
                        k("jwks-file"),
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                Ok(KeySource::File(file.clone()))
            }
            (None, None, Some(false)) => Err(invalid(
                k("discovery"),
                "discovery is off and no jwks-url or jwks-file is given",
            )),
            (None, None, _) => Ok(KeySource::Discovery),
        }
    }

    fn algorithms(&self, i: usize) -> Result<Vec<Algorithm>, ConfigError> {
        let key = issuer_key(i, "algorithms");
        let algorithms = self
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()])
            .iter()
            .map(|a| parse_algorithm(&key, a))
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err(invalid(
                key,
                "empty: list the algorithms the issuer signs with",
            ));
        }
        Ok(algorithms)
    }

    /// `(require-mfa, mfa-amr)`: with MFA required (the default), some `acr` or `amr` value
    /// must be accepted as proof of it.
    fn mfa(&self, i: usize) -> Result<(bool, Vec<String>), ConfigError> {
        let require_mfa = self.require_mfa.unwrap_or(true);
        let mfa_amr = self.mfa_amr.clone().unwrap_or_else(|| vec!["mfa".into()]);
        if require_mfa && self.mfa_acr.is_empty() && mfa_amr.is_empty() {
            return Err(invalid(
                issuer_key(i, "mfa-acr"),
                "require-mfa is on but neither mfa-acr nor mfa-amr lists an accepted value",
            ));
        }
        Ok((require_mfa, mfa_amr))
    }
}

impl HubGrantsSection {
    /// Validates `[auth.hub-grants]`.
    fn validate(&self) -> Result<HubGrantsConfig, ConfigError> {
        let k = |name: &str| format!("auth.hub-grants.{name}");
        let hub_api_url = self
            .hub_api_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| {
                u.split_once("://")
                    .is_some_and(|(s, r)| matches!(s, "http" | "https") && !r.is_empty())
            })
            .ok_or_else(|| {
                invalid(
                    k("hub-api-url"),
                    "missing or not an http(s) URL: the hub's REST API, e.g. http://127.0.0.1:8081/hub/api",
                )
            })?;
        let token = match &self.token_file {
            Some(p) => read_secret(&k("token-file"), p)?,
            None => {
                return Err(invalid(
                    k("token-file"),
                    "missing: a file holding a JupyterHub API token with the scopes listed in docs/security.md",
                ))
            }
        };
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let refresh = secs(self.refresh_seconds, 30);
        if refresh.is_zero() || refresh > Duration::from_secs(3600) {
            return Err(invalid(k("refresh-seconds"), "between 1 and 3600"));
        }
        let max_stale = secs(self.max_stale_seconds, 120);
        if max_stale < refresh {
            return Err(invalid(
                k("max-stale-seconds"),
                "at least refresh-seconds (grants older than this are not used)",
            ));
        }
        let request_timeout = secs(self.request_timeout_seconds, 10);
        if request_timeout.is_zero() || request_timeout > Duration::from_secs(60) {
            return Err(invalid(k("request-timeout-seconds"), "between 1 and 60"));
        }
        let miss_wait = Duration::from_millis(self.miss_wait_ms.unwrap_or(2000));
        if miss_wait > Duration::from_secs(10) {
            return Err(invalid(k("miss-wait-ms"), "at most 10000"));
        }
        let max_owners = self.max_owners.unwrap_or(10_000);
        if max_owners == 0 {
            return Err(invalid(k("max-owners"), "at least 1"));
        }
        let max_entries = self.max_entries.unwrap_or(100_000);
        if max_entries == 0 {
            return Err(invalid(k("max-entries"), "at least 1"));
        }
        let mut roles = Vec::new();
        for (name, scopes) in &self.roles {
            for scope in scopes {
                if crate::auth::grants::AccessScope::parse(scope).is_none() {
                    return Err(invalid(
                        format!("auth.hub-grants.roles.{name}"),
                        format!("{scope:?} is not access:servers, access:servers!user=NAME, access:servers!server=NAME/SERVER or access:servers!group=NAME"),
                    ));
                }
            }
            roles.push((name.clone(), scopes.clone()));
        }
        Ok(HubGrantsConfig {
            hub_api_url,
            token,
            refresh,
            max_stale,
            request_timeout,
            miss_wait,
            max_owners,
            max_entries,
            roles,
        })
    }
}

impl PolicySection {
    /// Validates `auth.policies[i]`.
    fn validate(&self, i: usize) -> Result<Policy, ConfigError> {
        let k = |name: &str| format!("auth.policies[{i}].{name}");
        let prefix = self
            .prefix
            .clone()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| invalid(k("prefix"), "missing or not starting with /"))?;
        let access = match self.access.as_deref() {
            Some("public") => Access::Public,
            Some("authenticated") => Access::Authenticated,
            Some("owner") => Access::Owner,
            Some("group") if !self.groups.is_empty() => Access::Group(self.groups.clone()),
            Some("group") => {
                return Err(invalid(
                    k("groups"),
                    "access = \"group\" needs a non-empty groups list",
                ))
            }
            other => {
                return Err(invalid(
                    k("access"),
                    format!("{other:?}: use public, authenticated, owner or group"),
                ))
            }
        };
        Ok(Policy { prefix, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> AuthSection {
        #[derive(Deserialize)]
        struct Wrap {
            auth: AuthSection,
        }
        toml::from_str::<Wrap>(toml_text).unwrap().auth
    }

    #[test]
    fn minimal_issuer() {
        let c = section(
            "[auth]\n[[auth.issuers]]\nissuer = \"https://idp\"\naudiences = [\"jupyterhub\"]\n",
        )
        .validate()
        .unwrap();
        assert_eq!(c.issuers[0].keys, KeySource::Discovery);
        assert_eq!(
            c.issuers[0].algorithms,
            vec![Algorithm::RS256, Algorithm::ES256]
        );
        assert!(c.issuers[0].require_mfa);
        assert!(c
            .policies
            .iter()
            .any(|p| p.prefix == "/user/" && p.access == Access::Owner));
    }

    #[test]
    fn step_up_defaults_and_errors() {
        let base = "[auth]\npublic-url = \"https://hub.example.org\"\n[[auth.issuers]]\nissuer = \"https://idp\"\naudiences = [\"jupyterhub\"]\nmfa-acr = [\"https://refeds.org/profile/mfa\"]\n";
        // No browser login: no step-up redirect (the API challenge needs none).
        let c = section(base).validate().unwrap();
        assert!(!c.issuers[0].step_up);
        // With a login: on, asking for the issuer's mfa-acr.
        let c = section(&format!("{base}client-id = \"hubgate\"\n"))
            .validate()
            .unwrap();
        assert!(c.issuers[0].step_up);
        assert_eq!(
            c.issuers[0].step_up_acr_values,
            vec!["https://refeds.org/profile/mfa".to_string()]
        );
        let c = section(&format!(
            "{base}client-id = \"hubgate\"\nstep-up = false\nstep-up-acr-values = [\"gold\", \"silver\"]\n"
        ))
        .validate()
        .unwrap();
        assert!(!c.issuers[0].step_up);
        assert_eq!(c.issuers[0].step_up_acr_values, vec!["gold", "silver"]);
        let e = section(&format!("{base}step-up = true\n"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.issuers[0].step-up") && e.contains("client-id"),
            "{e}"
        );
        for bad in ["", "a b", "a\\\"b"] {
            let e = section(&format!("{base}step-up-acr-values = [\"{bad}\"]\n"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("auth.issuers[0].step-up-acr-values"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = section("[auth]\n").validate().unwrap_err().to_string();
        assert!(e.contains("auth.issuers"), "{e}");
        let e = section("[auth]\n[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.issuers[0].algorithms"), "{e}");
        let e = section("[auth]\n[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\njwks-file = \"/nonexistent\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.issuers[0].jwks-file"), "{e}");
        let e = section("[auth]\n[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\n[[auth.policies]]\nprefix = \"/x/\"\naccess = \"maybe\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.policies[0].access"), "{e}");
    }

    #[test]
    fn revocation_lifetime_covers_sessions() {
        let issuer = "[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\n";
        let c = section(&format!("[auth]\n{issuer}")).validate().unwrap();
        assert_eq!(c.revocation_lifetime, Duration::from_secs(86400));
        assert_eq!(c.revocation_capacity, 100_000);
        let c = section(&format!(
            "[auth]\nsession-lifetime-seconds = 200000\n{issuer}"
        ))
        .validate()
        .unwrap();
        assert_eq!(c.revocation_lifetime, Duration::from_secs(200000));
        let e = section(&format!(
            "[auth]\nsession-lifetime-seconds = 600\nrevocation-lifetime-seconds = 60\n{issuer}"
        ))
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("auth.revocation-lifetime-seconds"), "{e}");
    }

    #[test]
    fn hub_grants_validated_with_key_names() {
        let dir = std::env::temp_dir().join(format!("hubgate-grants-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "abc\n").unwrap();
        let base =
            "[auth]\n[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\n[auth.hub-grants]\n";
        let with = |extra: &str| section(&format!("{base}{extra}")).validate();
        let tok = format!("token-file = {:?}\n", token.display().to_string());
        let url = "hub-api-url = \"http://127.0.0.1:8081/hub/api/\"\n";
        let c = with(&format!(
            "{url}{tok}[auth.hub-grants.roles]\nhelpers = [\"access:servers!user=alice\"]\n"
        ))
        .unwrap()
        .hub_grants
        .unwrap();
        assert_eq!(c.hub_api_url, "http://127.0.0.1:8081/hub/api");
        assert_eq!(c.token, "abc");
        assert_eq!((c.refresh.as_secs(), c.max_stale.as_secs()), (30, 120));
        assert_eq!(c.roles.len(), 1);
        let err = |extra: String| with(&extra).unwrap_err().to_string();
        assert!(err(tok.clone()).contains("auth.hub-grants.hub-api-url"));
        assert!(err(url.to_string()).contains("auth.hub-grants.token-file"));
        assert!(err(format!("{url}{tok}refresh-seconds = 0\n"))
            .contains("auth.hub-grants.refresh-seconds"));
        assert!(err(format!(
            "{url}{tok}refresh-seconds = 60\nmax-stale-seconds = 30\n"
        ))
        .contains("auth.hub-grants.max-stale-seconds"));
        assert!(err(format!(
            "{url}{tok}[auth.hub-grants.roles]\nhelpers = [\"read:users\"]\n"
        ))
        .contains("auth.hub-grants.roles.helpers"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policies_longest_first_and_overridable() {
        let c = section("[auth]\nbase-url = \"/jh\"\n[[auth.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\n[[auth.policies]]\nprefix = \"/jh/hub/static/\"\naccess = \"authenticated\"\n")
            .validate()
            .unwrap();
        assert_eq!(c.base_url, "/jh/");
        let stat = c
            .policies
            .iter()
            .find(|p| p.prefix == "/jh/hub/static/")
            .unwrap();
        assert_eq!(stat.access, Access::Authenticated);
        assert!(c
            .policies
            .windows(2)
            .all(|w| w[0].prefix.len() >= w[1].prefix.len()));
    }
}
