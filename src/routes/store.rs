//! The store interface behind the REST API: where route writes go.
//!
//! Every store keeps a local [`RouteTable`] that requests are matched against, so the
//! request path never waits on a store. The in-memory store writes the table directly;
//! a shared store ([`super::RedisStore`]) writes remotely and updates its local copy.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus::core::Collector;
use prometheus::{IntGauge, Opts};
use thiserror::Error;

use super::table::{Route, RouteTable};

/// A store write that could not be carried out.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backing store cannot be reached; the caller should retry.
    #[error("route store unavailable: {0}")]
    Unavailable(String),
}

/// Where revocations (the authentication layer's revocation list) are shared between
/// replicas: the Redis route store keeps them beside the routes. Entries are opaque text here.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Stores one entry (`field`/`value`: a revocation's text form) until `until`.
    async fn put(&self, field: &str, value: &str, until: i64) -> Result<(), String>;
    /// Every stored entry when the store changed since `version` (which is updated), else
    /// `None`.
    async fn load(
        &self,
        version: &mut Option<String>,
    ) -> Result<Option<Vec<(String, String)>>, String>;
}

/// Where the API's route writes go.
#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Adds or replaces the route under `key` (already normalised).
    async fn add(
        &self,
        key: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError>;
    /// Removes the route under `key`; `Ok(false)` when there was none.
    async fn remove(&self, key: &str) -> Result<bool, StoreError>;
    /// The local table that requests and reads use.
    fn table(&self) -> &Arc<RouteTable>;
    /// A short description for the startup log.
    fn describe(&self) -> String;
    /// The store's state for `/_chp_healthz`; a store local to the process is always usable.
    fn health(&self) -> StoreHealth {
        StoreHealth::Local
    }
    /// The store's metrics, to register with the server's registry. Every store exports
    /// [`store_up_gauge`], so dashboards and the store-down alert read the same series
    /// whichever backend is configured.
    /// Where replicas share revocations (`None`: this process is alone).
    fn revocation_store(&self) -> Option<Arc<dyn RevocationStore>> {
        None
    }

    fn collectors(&self) -> prometheus::Result<Vec<Box<dyn Collector>>>;
}

/// `hubgate_store_up{backend}`: 1 while route writes can be stored. The `backend` label
/// (`memory`, `redis`) is constant per process; it tells a dashboard which kind of store a
/// replica runs without another series.
pub fn store_up_gauge(backend: &str) -> prometheus::Result<IntGauge> {
    IntGauge::with_opts(
        Opts::new(
            "hubgate_store_up",
            "1 while the route store takes writes: always for the in-memory store; for Redis, while it is reachable and the local table follows it",
        )
        .const_label("backend", backend),
    )
}

/// What a store reports about itself to the health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The table lives in this process: nothing can be unreachable.
    Local,
    /// The table is shared through an external store.
    Shared {
        /// The table has been loaded from the store at least once (not ready until then).
        loaded: bool,
        /// The store is reachable and the local table follows it.
        up: bool,
        /// Why the store is not up (or not loaded), when it is not.
        reason: Option<String>,
    },
}

impl StoreHealth {
    /// `/_chp_healthz`'s status and body, or `None` to answer as CHP does (200 `{"status":"OK"}`).
    ///
    /// A shared store that has never been loaded makes the replica not ready (503). Once
    /// loaded, the replica routes from its copy whatever the store does, so it stays ready
    /// (200) and the body tells whether the store is up.
    pub fn healthz(&self) -> Option<(u16, String)> {
        let StoreHealth::Shared { loaded, up, reason } = self else {
            return None;
        };
        let mut body = serde_json::Map::new();
        let code = if *loaded { 200 } else { 503 };
        body.insert(
            "status".into(),
            (if *loaded { "OK" } else { "not ready" }).into(),
        );
        body.insert("store".into(), (if *up { "up" } else { "down" }).into());
        if !*loaded {
            body.insert(
                "reason".into(),
                format!(
                    "route table not loaded from the store yet{}",
                    reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
                .into(),
            );
        } else if let Some(r) = reason.as_deref().filter(|_| !*up) {
            body.insert("reason".into(), r.into());
        }
        Some((code, serde_json::Value::Object(body).to_string()))
    }
}

/// The default store: the route table itself, in this process only (like CHP's MemoryStore).
#[derive(Debug, Default)]
pub struct MemoryStore {
    table: Arc<RouteTable>,
}

impl MemoryStore {
    /// A new, empty in-memory store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RouteStore for MemoryStore {
    async fn add(
        &self,
        key: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.table
            .insert(Arc::new(Route::new(Arc::from(key), data)));
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.table.remove(key).is_some())
    }

    fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    fn describe(&self) -> String {
        "in-memory (this process only)".to_string()
    }

    fn collectors(&self) -> prometheus::Result<Vec<Box<dyn Collector>>> {
        // Nothing outside the process can fail, so the store is up for as long as it exists.
        let up = store_up_gauge("memory")?;
        up.set(1);
        Ok(vec![Box::new(up)])
    }
}
