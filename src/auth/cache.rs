//! Verified credentials, keyed by a SHA-256 of the credential (never the credential itself),
//! kept until `min(exp, now + ttl)`, bounded in size, purged when a signing key leaves its
//! issuer's set. Authorisation is not cached: it runs on every request.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::verify::{Identity, Verified};
use super::CredentialKind;

#[derive(Clone)]
struct Entry {
    identity: Arc<Identity>,
    /// When this entry stops being used (seconds since the epoch).
    until: i64,
    expires_at: i64,
    auth_time: Option<i64>,
    kid: Arc<str>,
}

/// The verified-credential cache.
pub struct VerifiedCache {
    map: DashMap<[u8; 32], Entry>,
    capacity: usize,
    ttl: i64,
}

impl VerifiedCache {
    /// A cache of at most `capacity` entries, each used for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> VerifiedCache {
        VerifiedCache {
            map: DashMap::new(),
            capacity,
            ttl: ttl.as_secs() as i64,
        }
    }

    /// The cache key of a credential.
    pub fn key(kind: CredentialKind, value: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([kind as u8]);
        h.update(value.as_bytes());
        h.finalize().into()
    }

    /// A still-valid entry.
    pub fn get(&self, key: &[u8; 32], now: i64) -> Option<Verified> {
        let entry = self.map.get(key)?;
        if now >= entry.until {
            drop(entry);
            self.map.remove(key);
            return None;
        }
        Some(Verified {
            identity: entry.identity.clone(),
            expires_at: entry.expires_at,
            auth_time: entry.auth_time,
            kid: entry.kid.clone(),
        })
    }

    /// Remembers a verification.
    pub fn insert(&self, key: [u8; 32], v: &Verified, now: i64) {
        if self.ttl <= 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, e| e.until > now);
            if self.map.len() >= self.capacity {
                // Still full of live entries: start over rather than grow without bound.
                self.map.clear();
            }
        }
        self.map.insert(
            key,
            Entry {
                identity: v.identity.clone(),
                until: v.expires_at.min(now + self.ttl),
                expires_at: v.expires_at,
                auth_time: v.auth_time,
                kid: v.kid.clone(),
            },
        );
    }

    /// Drops entries verified with any of these key ids.
    pub fn purge_kids(&self, kids: &[String]) {
        if kids.is_empty() {
            return;
        }
        self.map.retain(|_, e| !kids.iter().any(|k| **k == *e.kid));
    }
}
