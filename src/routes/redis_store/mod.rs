//! The Redis route store: several hubgate replicas share one route table.
//!
//! **Layout** (prefix `hubgate` by default; see [`scripts::Keys`]): `{prefix}:format` holds
//! the format number (1); under `{prefix}:v1:` live the routes hash (slot → `{"key","data"}`),
//! the revision counter `rev`, the change stream `changes`, the activity sorted set and an
//! `epoch` id that identifies one lifetime of the data.
//!
//! **Writes** (API `POST`/`DELETE` on any replica) run one Lua script: check format and epoch,
//! change the hash, `INCR rev`, `XADD changes MAXLEN ~ 10000 * rev N op … key K …`. The
//! writing replica applies its own change at once; every replica (the writer too) then
//! reads it from the stream.
//!
//! **Reads** never touch Redis: requests and `GET /api/routes` use the local
//! [`RouteTable`]. A background task keeps it current: `XREAD BLOCK` from the last stream ID,
//! applying each change whose revision is the next one. Any gap (a change missed while
//! disconnected or too slow, a stream trimmed past us, a revision that moved while the
//! stream was idle), every reconnection, and a changed epoch trigger a full reload:
//! `HGETALL` plus the revision and the newest stream ID in one `MULTI`.
//!
//! **Redis lost its data** (restarted without persistence, flushed): the epoch key is gone or
//! different, so the first replica to reconnect writes its routes back (`HSETNX`, so routes
//! written since win) and announces a `reset`; every replica then reloads.
//!
//! **Activity** is recorded locally on each [`Route`](super::Route) as before. Every
//! `activity-flush-ms` each replica reads the activity others wrote since its last look
//! (merged with `touch_at`, which only moves forward) and writes its own newer values
//! (`ZADD GT`). So an API on any replica shows activity seen anywhere within two flush
//! intervals.
//!
//! **Sentinel** (`redis+sentinel://…`, see [`settings`]): every connection starts by asking
//! the sentinels which server is the master (the redis crate checks its `ROLE`), so after a
//! promotion the next reconnection finds the new master. A write refused with `READONLY`
//! (the server was demoted), or a master that reports another role at the idle check,
//! ends the session at once. Writes are acknowledged only after `WAIT` saw them on
//! `wait-replicas` replicas: Sentinel promotes the replica with the most data, so an
//! acknowledged route survives the master's death. A write the replicas did not confirm in
//! time answers 503, like a write to an unreachable Redis; it may still be in the store,
//! which is harmless because JupyterHub retries and adds and deletes are idempotent.
//!
//! **Revocations** (`revocations.rs`): a hash of revoked credentials and a counter beside the
//! routes; replicas poll the counter every 250 ms and read the hash when it moved.
//!
//! **Redis unreachable**: replicas keep routing from their copy, API writes answer 503
//! (JupyterHub retries), `/_chp_healthz` and `hubgate_store_up` say so. A replica that has
//! never loaded the table is not ready (503 on `/_chp_healthz`).

mod activity;
mod revocations;
mod scripts;
mod settings;
mod state;
mod sync;

pub use settings::RedisStorage;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use redis::aio::MultiplexedConnection;

use self::scripts::Keys;
use self::settings::{Endpoint, SentinelSettings};
use self::state::{LocalWrite, SyncState};
use super::store::{store_up_gauge, RouteStore, StoreError, StoreHealth};
use super::table::{now_ms, segment_form, RouteTable};

/// The Redis store's own metrics.
struct StoreMetrics {
    up: IntGauge,
    resyncs: IntCounter,
    applied: IntCounter,
    write_errors: IntCounter,
    propagation: Histogram,
    master_changes: IntCounter,
}

impl StoreMetrics {
    fn new() -> prometheus::Result<StoreMetrics> {
        Ok(StoreMetrics {
            up: store_up_gauge("redis")?,
            resyncs: IntCounter::new(
                "hubgate_store_resyncs_total",
                "Full loads of the route table from the store (the first one included)",
            )?,
            applied: IntCounter::new(
                "hubgate_store_changes_applied_total",
                "Route changes applied from the store's change stream",
            )?,
            write_errors: IntCounter::new(
                "hubgate_store_write_errors_total",
                "API route writes the store did not accept (answered 503)",
            )?,
            master_changes: IntCounter::new(
                "hubgate_store_master_changes_total",
                "Times this replica moved to another master the sentinels named (failovers followed; Sentinel only)",
            )?,
            propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "hubgate_store_propagation_seconds",
                    "Time from a change reaching the store to this replica applying it",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            )?,
        })
    }
}

/// `hubgate_store_lag_seconds`, computed at scrape time.
struct LagCollector {
    inner: Arc<Inner>,
    desc: prometheus::core::Desc,
}

const LAG_HELP: &str = "Seconds since the local route table was last known to match the store (0 while the store is up)";

impl prometheus::core::Collector for LagCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        match prometheus::Gauge::new("hubgate_store_lag_seconds", LAG_HELP) {
            Ok(g) => {
                g.set(self.inner.lag_seconds());
                prometheus::core::Collector::collect(&g)
            }
            Err(_) => Vec::new(),
        }
    }
}

/// How the store reaches Redis.
enum Backend {
    /// One server.
    Direct(redis::Client),
    /// Whichever server the sentinels name master when a session starts.
    Sentinel {
        // Boxed: the sentinel client is large, and there is one Backend per store.
        client: Box<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
        settings: SentinelSettings,
    },
}

impl Backend {
    fn new(endpoint: Endpoint) -> Result<Backend, String> {
        match endpoint {
            Endpoint::Direct(url) => Ok(Backend::Direct(
                redis::Client::open(url.as_str()).map_err(|e| e.to_string())?,
            )),
            Endpoint::Sentinel(s) => {
                let mut addrs = Vec::new();
                for u in s.sentinel_urls() {
                    let info = redis::IntoConnectionInfo::into_connection_info(u.as_str())
                        .map_err(|e| format!("sentinel {u}: {e}"))?;
                    addrs.push(info.addr().clone());
                }
                let mut b = redis::sentinel::SentinelClientBuilder::new(
                    addrs,
                    &s.master_name,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| e.to_string())?
                .set_client_to_redis_db(s.db);
                if s.tls {
                    b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(u) = &s.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &s.password {
                    b = b.set_client_to_redis_password(p);
                }
                if let Some(u) = &s.sentinel_username {
                    b = b.set_client_to_sentinel_username(u);
                }
                if let Some(p) = &s.sentinel_password {
                    b = b.set_client_to_sentinel_password(p);
                }
                let client = b.build().map_err(|e| e.to_string())?;
                Ok(Backend::Sentinel {
                    client: Box::new(tokio::sync::Mutex::new(client)),
                    settings: s,
                })
            }
        }
    }

    /// Replicas a write must reach before it is acknowledged, and how long to wait for them.
    fn wait(&self) -> Option<(u32, std::time::Duration)> {
        match self {
            Backend::Sentinel { settings, .. } if settings.wait_replicas > 0 => {
                Some((settings.wait_replicas, settings.wait_timeout))
            }
            _ => None,
        }
    }
}

/// State shared by the store handle (API writes) and its background task.
struct Inner {
    settings: RedisStorage,
    url: String,
    backend: Backend,
    /// A write found the server demoted (`READONLY`): end the session and ask Sentinel again.
    reconnect_requested: AtomicBool,
    /// The master the sentinels named last (logged when it changes).
    master_addr: Mutex<Option<String>>,
    keys: Keys,
    table: Arc<RouteTable>,
    /// The command connection, present while the store is up (after a full load).
    conn: ArcSwapOption<MultiplexedConnection>,
    state: Mutex<SyncState>,
    loaded: AtomicBool,
    up: AtomicBool,
    reason: Mutex<Option<String>>,
    /// A write hit a reset store: reload before reading on.
    resync_requested: AtomicBool,
    /// When the table was last known to match the store (ms).
    current_at: AtomicI64,
    /// `--default-target`: written as `/` on first load unless the table already has a root.
    default_route: Option<serde_json::Map<String, serde_json::Value>>,
    metrics: StoreMetrics,
    activity: tokio::sync::Mutex<activity::ActivityState>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_reason(&self, r: Option<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn lag_seconds(&self) -> f64 {
        if self.up.load(Ordering::Relaxed) {
            return 0.0;
        }
        (now_ms() - self.current_at.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
    }

    fn unavailable(&self) -> StoreError {
        let why = self
            .reason()
            .unwrap_or_else(|| "not connected yet".to_string());
        StoreError::Unavailable(format!(
            "Redis at {} is unreachable ({why}); this replica keeps routing from its copy of the table, retry the write later",
            self.url
        ))
    }

    fn write_failed(&self, e: redis::RedisError) -> StoreError {
        self.metrics.write_errors.inc();
        let msg = e.to_string();
        // A demoted master refuses writes with READONLY (inside a script the code is
        // wrapped in the script's error, hence the text match).
        if e.code() == Some("READONLY") || msg.contains("READONLY") {
            self.reconnect_requested.store(true, Ordering::Relaxed);
            return StoreError::Unavailable(format!(
                "Redis at {} is no longer the master (a failover is under way); retry the write",
                self.url
            ));
        }
        if msg.contains(scripts::RESET_ERROR) {
            self.resync_requested.store(true, Ordering::Relaxed);
            return StoreError::Unavailable(format!(
                "the route table in Redis at {} was reset or changed format; this replica is resynchronising, retry the write",
                self.url
            ));
        }
        StoreError::Unavailable(format!(
            "Redis at {} did not take the write: {msg}; retry later",
            self.url
        ))
    }

    /// Runs a write script; `Ok(None)` when it changed nothing.
    async fn write(
        &self,
        script: &redis::Script,
        slot: &str,
        args: &[&str],
    ) -> Result<Option<(String, u64)>, StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(self.unavailable());
        };
        let mut conn = (*conn).clone();
        let epoch = self.state().epoch.clone().unwrap_or_default();
        let mut inv = script.prepare_invoke();
        for k in self.keys.all() {
            inv.key(k);
        }
        inv.arg(scripts::FORMAT).arg(&epoch).arg(slot);
        for a in args {
            inv.arg(*a);
        }
        let (rev, _id): (u64, String) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.write_failed(e))?;
        if rev > 0 {
            if let Some((replicas, timeout)) = self.backend.wait() {
                // Acknowledge only what a promoted replica would still have.
                let acked: u64 = redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(timeout.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.write_failed(e))?;
                if acked < u64::from(replicas) {
                    self.metrics.write_errors.inc();
                    return Err(StoreError::Unavailable(format!(
                        "Redis at {} took the write but only {acked} of the {replicas} replicas required (wait-replicas) confirmed it within {} ms; retry the write",
                        self.url,
                        timeout.as_millis()
                    )));
                }
            }
        }
        Ok((rev > 0).then_some((epoch, rev)))
    }

    async fn add(
        &self,
        key: &str,
        mut data: serde_json::Map<String, serde_json::Value>,
        only_if_absent: bool,
    ) -> Result<(), StoreError> {
        data.remove("last_activity");
        let value = state::stored_value(key, &data);
        let at = now_ms();
        let written = self
            .write(
                &scripts::ADD,
                segment_form(key),
                &[
                    &value,
                    key,
                    &at.to_string(),
                    &scripts::STREAM_MAX_LEN.to_string(),
                    if only_if_absent { "1" } else { "0" },
                ],
            )
            .await?;
        if let Some((epoch, rev)) = written {
            let route = Box::new(super::Route::new_at(Arc::from(key), data, at));
            self.state()
                .apply_local(&self.table, &epoch, rev, LocalWrite::Add { value, route });
        }
        Ok(())
    }
}

/// Routes kept in Redis and shared by every replica using the same server and key prefix.
pub struct RedisStore {
    inner: Arc<Inner>,
    table: Arc<RouteTable>,
}

impl RedisStore {
    /// A store for these settings; nothing connects until its [`sync_service`](Self::sync_service)
    /// runs. `default_target` becomes the `/` route when the shared table has none.
    pub fn new(
        settings: RedisStorage,
        default_target: Option<String>,
    ) -> Result<RedisStore, String> {
        let backend = settings
            .endpoint()
            .map_err(|e| e.to_string())
            .and_then(Backend::new)
            .map_err(|e| format!("storage backend {}: {e}", settings.redacted_url()))?;
        let metrics = StoreMetrics::new().map_err(|e| format!("metrics: {e}"))?;
        let table = Arc::new(RouteTable::new());
        let default_route = default_target.map(|t| {
            let mut m = serde_json::Map::new();
            m.insert("target".into(), serde_json::Value::String(t));
            m
        });
        let inner = Arc::new(Inner {
            url: settings.redacted_url(),
            keys: Keys::new(&settings.key_prefix),
            settings,
            backend,
            reconnect_requested: AtomicBool::new(false),
            master_addr: Mutex::new(None),
            table: table.clone(),
            conn: ArcSwapOption::empty(),
            state: Mutex::new(SyncState::new()),
            loaded: AtomicBool::new(false),
            up: AtomicBool::new(false),
            reason: Mutex::new(None),
            resync_requested: AtomicBool::new(false),
            current_at: AtomicI64::new(now_ms()),
            default_route,
            metrics,
            activity: Default::default(),
        });
        Ok(RedisStore { inner, table })
    }

    /// The background service that connects, loads and follows the shared table and
    /// exchanges activity; add it to the server.
    pub fn sync_service(&self) -> RedisSync {
        RedisSync(self.inner.clone())
    }
}

#[async_trait]
impl RouteStore for RedisStore {
    fn revocation_store(&self) -> Option<Arc<dyn super::store::RevocationStore>> {
        Some(Arc::new(revocations::RedisRevocations(self.inner.clone())))
    }

    async fn add(
        &self,
        key: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.inner.add(key, data, false).await
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let written = inner
            .write(
                &scripts::DEL,
                segment_form(key),
                &[
                    &state::value_prefix(key),
                    key,
                    &now_ms().to_string(),
                    &scripts::STREAM_MAX_LEN.to_string(),
                ],
            )
            .await?;
        match written {
            Some((epoch, rev)) => {
                inner.state().apply_local(
                    &inner.table,
                    &epoch,
                    rev,
                    LocalWrite::Del {
                        key: key.to_string(),
                    },
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (key prefix {:?}, shared by every replica using it; activity exchanged every {} ms)",
            self.inner.url,
            self.inner.settings.key_prefix,
            self.inner.settings.activity_flush.as_millis()
        )
    }

    fn health(&self) -> StoreHealth {
        let up = self.inner.up.load(Ordering::Relaxed);
        StoreHealth::Shared {
            loaded: self.inner.loaded.load(Ordering::Relaxed),
            up,
            reason: if up { None } else { self.inner.reason() },
        }
    }

    fn collectors(&self) -> prometheus::Result<Vec<Box<dyn prometheus::core::Collector>>> {
        let m = &self.inner.metrics;
        Ok(vec![
            Box::new(m.up.clone()),
            Box::new(m.resyncs.clone()),
            Box::new(m.applied.clone()),
            Box::new(m.write_errors.clone()),
            Box::new(m.propagation.clone()),
            Box::new(m.master_changes.clone()),
            Box::new(LagCollector {
                inner: self.inner.clone(),
                desc: prometheus::core::Desc::new(
                    "hubgate_store_lag_seconds".into(),
                    LAG_HELP.into(),
                    vec![],
                    Default::default(),
                )?,
            }),
        ])
    }
}

/// The background task of a [`RedisStore`] (a pingora background service).
pub struct RedisSync(Arc<Inner>);

#[async_trait]
impl BackgroundService for RedisSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let inner = self.0.clone();
        let exchange = tokio::spawn(activity::run(inner.clone()));
        tokio::select! {
            _ = sync::run(inner.clone()) => {}
            _ = shutdown.changed() => {}
        }
        exchange.abort();
        // Hand this replica's last activity to the others before going away.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            activity::exchange_once(&inner),
        )
        .await;
    }
}
