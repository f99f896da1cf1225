//! Each trusted issuer's signing keys: discovered, fetched, refreshed, kept while stale.
//!
//! Rules (`docs/security.md`, "Key sets"): keys are scoped per issuer;
//! only RSA (≥ 2048 bits), EC (P-256/P-384) and Ed25519 signing keys are loaded, `oct`
//! (symmetric) keys never; an empty or unusable set never replaces a good one; a key set
//! older than `max-stale` is not used (requests then fail closed); an unknown `kid` triggers
//! at most one refetch per `min-refetch` interval, shared by concurrent requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use log::{info, warn};
use serde::Deserialize;

use crate::config::auth::{IssuerConfig, KeySource};
use crate::net::{Fetch, HttpClient};

/// Largest key set or discovery document accepted.
const MAX_DOC: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A verification key and the algorithms it may be used with.
pub struct VerifyKey {
    pub key: DecodingKey,
    /// The JWK's own `alg` when it names one; otherwise any algorithm of the key's kind.
    pub algorithms: Vec<Algorithm>,
}

/// The endpoints an issuer's discovery document names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// No usable key set: never fetched, or older than `max-stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoKeySet;

struct KeyState {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched_at: Instant,
}

/// One issuer's keys and endpoints.
pub struct IssuerKeys {
    pub config: Arc<IssuerConfig>,
    state: ArcSwapOption<KeyState>,
    endpoints: ArcSwapOption<Endpoints>,
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// Seconds since the epoch of the last successful fetch (metrics).
    pub last_success: std::sync::atomic::AtomicI64,
    /// Fetch failures so far (metrics).
    pub failures: std::sync::atomic::AtomicU64,
    /// Kids dropped by the last refresh, for purging cached verifications.
    pub removed: ArcSwap<Vec<String>>,
}

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("fetching {0}: {1}")]
    Fetch(String, String),
    #[error("{0}: HTTP status {1}")]
    Status(String, u16),
    #[error("{0}: not a valid document ({1})")]
    Parse(String, String),
    #[error("{0}: no usable signing key (an empty set never replaces the current one)")]
    Empty(String),
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { found: String, expected: String },
    #[error("{0}")]
    Other(String),
}

fn algorithms_for(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            // n is base64url without padding: 342+ chars for a 2048-bit modulus.
            if rsa.n.len() * 6 < 2040 {
                return None;
            }
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric (`oct`) keys would turn verification into shared-secret signing.
        _ => return None,
    };
    match &jwk.common.key_algorithm {
        None => Some(family),
        Some(ka) => {
            let alg = key_algorithm_to_algorithm(ka)?;
            family.contains(&alg).then(|| vec![alg])
        }
    }
}

fn key_algorithm_to_algorithm(ka: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document into usable verification keys, skipping (and counting) the rest.
/// Whether a key may verify signatures: its `use` (RFC 7517 §4.2), when present, is `sig`,
/// and its `key_ops` (§4.3), when present, include `verify`. A key published only for
/// encryption, or only for signing (a private-key operation), never verifies a token.
fn verifies(jwk: &Jwk) -> bool {
    let use_ok = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    let ops_ok = jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    use_ok && ops_ok
}

pub fn parse_key_set(doc: &[u8]) -> Result<(HashMap<String, Arc<VerifyKey>>, usize), String> {
    let value: serde_json::Value = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| "no \"keys\" array".to_string())?;
    let mut out = HashMap::new();
    let mut skipped = 0;
    for raw in keys {
        // One malformed key must not cost the others.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            skipped += 1;
            continue;
        };
        let (Some(kid), true) = (jwk.common.key_id.clone(), verifies(&jwk)) else {
            skipped += 1;
            continue;
        };
        let (Some(algorithms), Ok(key)) = (algorithms_for(&jwk), DecodingKey::from_jwk(&jwk))
        else {
            skipped += 1;
            continue;
        };
        out.insert(kid, Arc::new(VerifyKey { key, algorithms }));
    }
    Ok((out, skipped))
}

impl IssuerKeys {
    /// Keys for one issuer, not fetched yet.
    pub fn new(config: IssuerConfig) -> IssuerKeys {
        IssuerKeys {
            config: Arc::new(config),
            state: ArcSwapOption::empty(),
            endpoints: ArcSwapOption::empty(),
            last_attempt: tokio::sync::Mutex::new(None),
            last_success: Default::default(),
            failures: Default::default(),
            removed: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The key for `kid`, unless the set was never fetched or is older than `max-stale`.
    pub fn get(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, NoKeySet> {
        let state = self.state.load();
        match state.as_ref() {
            Some(s) if s.fetched_at.elapsed() <= self.config.max_stale => {
                Ok(s.keys.get(kid).cloned())
            }
            _ => Err(NoKeySet),
        }
    }

    /// Whether a usable (not too stale) key set is loaded.
    pub fn ready(&self) -> bool {
        self.get("").is_ok()
    }

    /// Seconds since the key set was fetched, if ever.
    pub fn age(&self) -> Option<Duration> {
        self.state.load().as_ref().map(|s| s.fetched_at.elapsed())
    }

    /// The discovery endpoints, once fetched.
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.endpoints.load_full()
    }

    async fn fetch(&self, client: &HttpClient, url: &str) -> Result<bytes::Bytes, KeyError> {
        let r = client
            .request(
                Fetch::get(url, FETCH_TIMEOUT, MAX_DOC)
                    .with_headers(&[("Accept", "application/json")]),
            )
            .await
            .map_err(|e| KeyError::Fetch(url.to_string(), e.to_string()))?;
        if r.status != 200 {
            return Err(KeyError::Status(url.to_string(), r.status));
        }
        Ok(r.body)
    }

    /// Fetches the discovery document (if configured) and the key set; replaces the current set
    /// only with a non-empty one.
    pub async fn load(&self, client: &HttpClient) -> Result<usize, KeyError> {
        let cfg = &self.config;
        let doc = match &cfg.keys {
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| KeyError::Fetch(path.display().to_string(), e.to_string()))?
                .into(),
            KeySource::Url(url) => {
                if cfg.client_id.is_some() && self.endpoints.load().is_none() {
                    self.discover(client).await?;
                }
                self.fetch(client, url).await?
            }
            KeySource::Discovery => {
                let endpoints = self.discover(client).await?;
                let jwks = endpoints
                    .jwks_uri
                    .clone()
                    .ok_or_else(|| KeyError::Other("discovery document has no jwks_uri".into()))?;
                self.fetch(client, &jwks).await?
            }
        };
        let source = match &cfg.keys {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Url(u) => u.clone(),
            KeySource::Discovery => format!("{} (discovery)", cfg.issuer),
        };
        let (keys, skipped) =
            parse_key_set(&doc).map_err(|e| KeyError::Parse(source.clone(), e))?;
        if keys.is_empty() {
            return Err(KeyError::Empty(source));
        }
        if skipped > 0 {
            warn!(
                "{}: ignored {skipped} key(s) that are not asymmetric signing keys hubgate accepts",
                cfg.issuer
            );
        }
        let count = keys.len();
        let old = self.state.load_full();
        let removed: Vec<String> = old
            .as_ref()
            .map(|o| {
                o.keys
                    .keys()
                    .filter(|k| !keys.contains_key(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let changed = old
            .as_ref()
            .is_none_or(|o| o.keys.len() != count || !removed.is_empty());
        self.state.store(Some(Arc::new(KeyState {
            keys,
            fetched_at: Instant::now(),
        })));
        self.removed.store(Arc::new(removed));
        self.last_success.store(
            crate::time::now_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if changed {
            info!(
                "{}: {count} signing key(s) loaded from {source}",
                cfg.issuer
            );
        }
        Ok(count)
    }

    async fn discover(&self, client: &HttpClient) -> Result<Arc<Endpoints>, KeyError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let body = self.fetch(client, &url).await?;
        let endpoints: Endpoints = serde_json::from_slice(&body)
            .map_err(|e| KeyError::Parse(url.clone(), e.to_string()))?;
        if endpoints.issuer != self.config.issuer {
            return Err(KeyError::IssuerMismatch {
                found: endpoints.issuer,
                expected: self.config.issuer.clone(),
            });
        }
        let endpoints = Arc::new(endpoints);
        self.endpoints.store(Some(endpoints.clone()));
        Ok(endpoints)
    }

    /// Refetches for an unknown `kid`, at most once per `min-refetch` (concurrent callers wait
    /// for the same fetch instead of starting their own).
    pub async fn refetch_for_unknown_kid(&self, client: &HttpClient) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.config.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.load(client).await {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!("{}: key set refetch failed: {e}", self.config.issuer);
        }
    }

    /// Background refresh loop: load now, then every `refresh`; retry sooner while failing.
    pub async fn run_refresh(self: Arc<Self>, client: Arc<HttpClient>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let ok = {
                let mut last = self.last_attempt.lock().await;
                *last = Some(Instant::now());
                match self.load(&client).await {
                    Ok(_) => true,
                    Err(e) => {
                        self.failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let stale = match self.age() {
                            Some(age) => format!("using keys fetched {}s ago", age.as_secs()),
                            None => "no keys yet: protected routes answer 503".to_string(),
                        };
                        warn!(
                            "{}: key set refresh failed: {e}; {stale}",
                            self.config.issuer
                        );
                        false
                    }
                }
            };
            let wait = if ok {
                backoff = Duration::from_millis(250);
                self.config.refresh
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff.min(self.config.refresh)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RSA public JWK of 2048 bits (the components need not form a real key pair: only
    /// the set's parsing rules are tested here) with extra members `extra`.
    fn rsa_jwk(kid: &str, extra: &str) -> String {
        use base64::Engine;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{n}","e":"AQAB"{extra}}}"#)
    }

    fn kids(jwks: &[String]) -> (Vec<String>, usize) {
        let doc = format!(r#"{{"keys":[{}]}}"#, jwks.join(","));
        let (keys, skipped) = parse_key_set(doc.as_bytes()).expect("a key set");
        let mut kids: Vec<String> = keys.keys().cloned().collect();
        kids.sort();
        (kids, skipped)
    }

    #[test]
    fn key_ops_and_use_decide_whether_a_key_verifies() {
        let (got, skipped) = kids(&[
            rsa_jwk("plain", ""),
            rsa_jwk("sig", r#","use":"sig""#),
            rsa_jwk("verify", r#","key_ops":["verify"]"#),
            rsa_jwk("both", r#","key_ops":["sign","verify"]"#),
            rsa_jwk("enc-use", r#","use":"enc""#),
            rsa_jwk("enc-ops", r#","key_ops":["encrypt","wrapKey"]"#),
            rsa_jwk("sign-only", r#","key_ops":["sign"]"#),
            rsa_jwk("empty-ops", r#","key_ops":[]"#),
            rsa_jwk("sig-but-enc-ops", r#","use":"sig","key_ops":["encrypt"]"#),
        ]);
        assert_eq!(got, ["both", "plain", "sig", "verify"]);
        assert_eq!(skipped, 5);
    }

    #[test]
    fn symmetric_short_and_unnamed_keys_are_skipped() {
        let short = r#"{"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"}"#.to_string();
        let oct = r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}"#.to_string();
        let no_kid = rsa_jwk("", "").replace(r#""kid":"","#, "");
        let (got, skipped) = kids(&[short, oct, no_kid, rsa_jwk("ok", "")]);
        assert_eq!(got, ["ok"]);
        assert_eq!(skipped, 3);
        assert!(parse_key_set(br#"{"nokeys":[]}"#).is_err());
    }
}
