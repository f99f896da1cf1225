//! The store interface behind the REST API: where route writes go.
//!
//! Every store keeps a local [`RouteTable`] that requests are matched against, so the
//! request path never waits on a store. The in-memory store writes the table directly;
//! a shared store (Redis, a later issue) writes remotely and updates its local copy.

use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;

use super::table::{Route, RouteTable};

/// A store write that could not be carried out.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backing store cannot be reached; the caller should retry.
    #[error("route store unavailable: {0}")]
    Unavailable(String),
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
}
