//! The background task that loads the shared table and follows its change stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::scripts::{self, FORMAT};
use super::state::{Change, Snapshot};
use super::{Backend, Inner};
use crate::routes::table::now_ms;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may take before the store counts as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the sentinels may take to name the master.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one `XREAD` waits for changes; an idle stream is checked against the revision
/// this often.
const BLOCK_MS: u64 = 1_000;
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(1_000);
/// How often "still unreachable" is logged.
const REPEAT_LOG: Duration = Duration::from_secs(30);
/// How often a Sentinel session asks whether the sentinels still name its master.
const MASTER_CHECK: Duration = Duration::from_secs(1);

/// Why a session with Redis ended.
enum End {
    /// Connection or command failure: reconnect.
    Lost(String),
    /// The store holds data this hubgate must not touch.
    Fatal(String),
}

impl From<redis::RedisError> for End {
    fn from(e: redis::RedisError) -> End {
        End::Lost(e.to_string())
    }
}

type XReadReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

/// `MULTI` reply: epoch, revision, routes, activity, newest stream entry.
type SnapshotReply = (
    Option<String>,
    Option<u64>,
    HashMap<String, String>,
    Vec<(String, f64)>,
    Vec<(String, Vec<String>)>,
);

/// Connects, loads and follows, reconnecting for ever.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut last_log: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let end = session(&inner).await;
        inner.conn.store(None);
        let was_up = inner.up.swap(false, Ordering::Relaxed);
        inner.metrics.up.set(0);
        let (reason, fatal) = match end {
            End::Lost(r) => (r, false),
            End::Fatal(r) => (r, true),
        };
        inner.set_reason(Some(reason.clone()));
        let loaded = inner.loaded.load(Ordering::Relaxed);
        if fatal {
            error!("route store: {reason}");
            if !loaded {
                // Refuse to start rather than run with a table we cannot keep.
                std::process::exit(1);
            }
        } else if was_up {
            error!(
                "route store: lost Redis at {}: {reason}; routing continues from the local table ({} routes); API writes answer 503 until it is back",
                inner.url,
                inner.table.len()
            );
            last_log = Some(Instant::now());
        } else if last_log.is_none_or(|t| t.elapsed() >= REPEAT_LOG) {
            if loaded {
                warn!(
                    "route store: Redis at {} still unreachable: {reason}",
                    inner.url
                );
            } else {
                warn!(
                    "route store: cannot load the route table from Redis at {}: {reason}; not ready until it is loaded",
                    inner.url
                );
            }
            last_log = Some(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(50);
        }
        let pause = if fatal {
            Duration::from_secs(10)
        } else {
            backoff
        };
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The server to talk to this session: the configured one, or the master the sentinels
/// name now (so a reconnection after a failover reaches the promoted replica).
async fn master_client(inner: &Inner) -> Result<redis::Client, End> {
    let (client, settings) = match &inner.backend {
        Backend::Direct(c) => return Ok(c.clone()),
        Backend::Sentinel { client, settings } => (client, settings),
    };
    let found = tokio::time::timeout(SENTINEL_TIMEOUT, async {
        client.lock().await.async_get_client().await
    })
    .await;
    let c = match found {
        Err(_) => {
            return Err(End::Lost(format!(
                "no sentinel named a master for {:?} within {} s",
                settings.master_name,
                SENTINEL_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => {
            return Err(End::Lost(format!(
                "the sentinels named no reachable master for {:?}: {e}",
                settings.master_name
            )))
        }
        Ok(Ok(c)) => c,
    };
    let addr = c.get_connection_info().addr().to_string();
    let mut last = inner.master_addr.lock().unwrap_or_else(|e| e.into_inner());
    if last.as_deref() != Some(addr.as_str()) {
        if last.is_some() {
            inner.metrics.master_changes.inc();
        }
        info!(
            "route store: Sentinel names {addr} master of {:?}",
            settings.master_name
        );
        *last = Some(addr);
    }
    Ok(c)
}

async fn connect(client: &redis::Client, response: Duration) -> Result<MultiplexedConnection, End> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response));
    Ok(client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?)
}

/// One connection's life: load, then follow the stream until something fails.
async fn session(inner: &Arc<Inner>) -> End {
    let client = match master_client(inner).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    inner.reconnect_requested.store(false, Ordering::Relaxed);
    // Writes may wait for replicas (WAIT) on the command connection.
    let wait = inner.backend.wait().map_or(Duration::ZERO, |(_, t)| t);
    let mut conn = match connect(&client, COMMAND_TIMEOUT + wait).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    // XREAD BLOCK holds its connection, so it gets one of its own.
    let mut reader = match connect(&client, COMMAND_TIMEOUT + Duration::from_millis(BLOCK_MS)).await
    {
        Ok(c) => c,
        Err(e) => return e,
    };
    let first = !inner.loaded.load(Ordering::Relaxed);
    // A new connection, perhaps to another server: what it holds is the whole truth.
    if let Err(e) = full_sync(inner, &mut conn, false).await {
        return e;
    }
    inner.conn.store(Some(Arc::new(conn.clone())));
    if first {
        if let Some(data) = &inner.default_route {
            if let Err(e) = inner.add("/", data.clone(), true).await {
                inner.conn.store(None);
                return End::Lost(format!("cannot write the default route: {e}"));
            }
        }
    }
    let rev = inner.state().applied;
    let n = inner.table.len();
    inner.set_reason(None);
    inner.up.store(true, Ordering::Relaxed);
    inner.metrics.up.set(1);
    inner.current_at.store(now_ms(), Ordering::Relaxed);
    if first {
        info!(
            "route store: loaded {n} routes from Redis at {} (revision {rev})",
            inner.url
        );
    } else {
        info!(
            "route store: connected to Redis at {}; table resynchronised, {n} routes (revision {rev})",
            inner.url
        );
    }
    inner.loaded.store(true, Ordering::Relaxed);
    follow(inner, &mut conn, &mut reader).await
}

/// Reads stream entries after `last_id`, waiting up to `block_ms` for one (`None`: no wait).
async fn read_stream(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
    last_id: &str,
    block_ms: Option<u64>,
) -> Result<Vec<(String, Vec<String>)>, End> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(1000);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(&inner.keys.changes).arg(last_id);
    let reply: XReadReply = cmd.query_async(conn).await?;
    Ok(reply
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .collect())
}

/// Reads the change stream and applies it; returns when the connection fails.
async fn follow(
    inner: &Arc<Inner>,
    conn: &mut MultiplexedConnection,
    reader: &mut MultiplexedConnection,
) -> End {
    let watch = MasterWatch::start(inner);
    loop {
        if let Some(why) = watch.moved() {
            return End::Lost(why);
        }
        if inner.reconnect_requested.swap(false, Ordering::Relaxed) {
            return End::Lost(
                "the server refused a write as a read-only replica (demoted by a failover)".into(),
            );
        }
        if inner.resync_requested.swap(false, Ordering::Relaxed) {
            if let Err(e) = resync(inner, conn, "a write found the store reset", true).await {
                return e;
            }
        }
        let last_id = inner.state().last_id.clone();
        let entries = match read_stream(inner, reader, &last_id, Some(BLOCK_MS)).await {
            Ok(e) => e,
            Err(e) => return e,
        };
        if entries.is_empty() {
            if let Err(e) = check_role(inner, conn).await {
                return e;
            }
            // Idle: is the revision where the table is? (A stream trimmed past us, or
            // deleted, would otherwise go unnoticed until the next change.)
            let (epoch, rev): (Option<String>, Option<u64>) = match redis::pipe()
                .get(&inner.keys.epoch)
                .get(&inner.keys.rev)
                .query_async(conn)
                .await
            {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
            let (my_epoch, applied) = {
                let st = inner.state();
                (st.epoch.clone(), st.applied)
            };
            let rev = rev.unwrap_or(0);
            // The store behind this table (a failover to a replica that missed changes)
            // is the truth: no local write is kept over it.
            let keep_newer = rev >= applied;
            let why = if epoch != my_epoch {
                Some("the store's epoch changed (Redis lost or replaced its data)".to_string())
            } else if rev < applied {
                Some(format!(
                    "the store is at revision {rev}, behind this table's {applied}"
                ))
            } else if rev > applied {
                // A change may have landed since XREAD returned: look once more, without
                // waiting. Nothing there means the changes we need are gone from the stream.
                match read_stream(inner, conn, &last_id, None).await {
                    Ok(e) if e.is_empty() => Some(format!(
                        "the store is at revision {rev} but no change after {applied} is in the stream"
                    )),
                    Ok(_) => None,
                    Err(e) => return e,
                }
            } else {
                inner.current_at.store(now_ms(), Ordering::Relaxed);
                None
            };
            if let Some(why) = why {
                if let Err(e) = resync(inner, conn, &why, keep_newer).await {
                    return e;
                }
            }
            continue;
        }
        let mut changes = Vec::with_capacity(entries.len());
        let mut bad = None;
        for (id, fields) in entries {
            match Change::parse(id, fields) {
                Ok(c) => changes.push(c),
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        let now = now_ms();
        let result = inner.state().apply_stream(&inner.table, &changes, |c| {
            inner.metrics.applied.inc();
            if let Some(ms) = c.written_ms() {
                inner
                    .metrics
                    .propagation
                    .observe((now - ms).max(0) as f64 / 1000.0);
            }
        });
        let why = match (result, bad) {
            (Err(why), _) => Some(why),
            (Ok(()), Some(bad)) => Some(format!("unreadable change in the stream: {bad}")),
            (Ok(()), None) => None,
        };
        if let Some(why) = why {
            if let Err(e) = resync(inner, conn, &why, true).await {
                return e;
            }
        }
        inner.current_at.store(now_ms(), Ordering::Relaxed);
    }
}

/// With Sentinel, a master that was demoted while the connection stayed up (a partition
/// healed, a manual failover) must not be followed any further: ask the sentinels again.
async fn check_role(inner: &Inner, conn: &mut MultiplexedConnection) -> Result<(), End> {
    if !matches!(inner.backend, Backend::Sentinel { .. }) {
        return Ok(());
    }
    match redis::cmd("ROLE").query_async(conn).await? {
        redis::Role::Primary { .. } => Ok(()),
        _ => Err(End::Lost(
            "the server is no longer the master (demoted by a failover)".into(),
        )),
    }
}

/// With Sentinel, whether the sentinels still name the master this session writes to.
///
/// `ROLE` on the master is not enough: a master that the sentinels failed over while it
/// stayed up (a second failover right after a first, when a loaded sentinel briefly saw the
/// new master down; a partition that healed) goes on answering "master" until Sentinel
/// reconfigures it, which Sentinel does on its next `INFO` round, ~10 s later. Every write
/// meanwhile goes to a server that will be wiped and resynchronised, and (with no replica
/// under it) answers 503 (`tests/e2e/test_sentinel.py` met this on a loaded 2-core machine).
///
/// A task of the session's own asks one sentinel once a second (`SENTINEL
/// GET-MASTER-ADDR-BY-NAME`, over a kept connection). Only when it names another server does
/// the full lookup decide (every sentinel, the named server's own `ROLE`), so one stale
/// sentinel cannot make the session flap. A sentinel that does not answer, or a named master
/// this hubgate cannot reach, never ends a session that works; and since the task runs beside
/// the stream reader, a sentinel that hangs never delays the table's changes.
struct MasterWatch {
    moved: Arc<Mutex<Option<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MasterWatch {
    fn start(inner: &Arc<Inner>) -> MasterWatch {
        let moved = Arc::new(Mutex::new(None));
        let task = matches!(inner.backend, Backend::Sentinel { .. }).then(|| {
            let (inner, moved) = (inner.clone(), moved.clone());
            tokio::spawn(async move {
                let mut probe = None;
                loop {
                    tokio::time::sleep(MASTER_CHECK).await;
                    if let Some(why) = moved_from(&inner, &mut probe).await {
                        *moved.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                        return;
                    }
                }
            })
        });
        MasterWatch { moved, task }
    }

    /// Why the session must end, once the sentinels have named another master.
    fn moved(&self) -> Option<String> {
        self.moved.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for MasterWatch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One check: `Some(reason)` when the sentinels name a master other than this session's.
async fn moved_from(inner: &Inner, probe: &mut Option<MultiplexedConnection>) -> Option<String> {
    let Backend::Sentinel { client, settings } = &inner.backend else {
        return None;
    };
    let current = inner
        .master_addr
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    let named = tokio::time::timeout(
        SENTINEL_TIMEOUT,
        named_master(client, probe, &settings.master_name),
    )
    .await;
    let Ok(Some(named)) = named else {
        // No answer, or a sentinel that does not know the name: keep the session, and a
        // new probe connection next time.
        *probe = None;
        return None;
    };
    if named == current {
        return None;
    }
    let found = tokio::time::timeout(SENTINEL_TIMEOUT, async {
        client.lock().await.async_get_client().await
    })
    .await;
    let addr = found.ok()?.ok()?.get_connection_info().addr().to_string();
    (addr != current).then(|| {
        format!(
            "the sentinels now name {addr} master of {:?} (a failover while this one stayed up)",
            settings.master_name
        )
    })
}

/// The master one sentinel names now (`None`: no sentinel answered).
async fn named_master(
    client: &tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    probe: &mut Option<MultiplexedConnection>,
    name: &str,
) -> Option<String> {
    if probe.is_none() {
        let c = client.lock().await.async_get_sentinel_client().await.ok()?;
        *probe = connect(&c, COMMAND_TIMEOUT).await.ok();
    }
    let reply = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async::<Option<(String, u16)>>(probe.as_mut()?)
        .await;
    match reply {
        Ok(Some((host, port))) => Some(format!("{host}:{port}")),
        _ => None,
    }
}

async fn resync(
    inner: &Arc<Inner>,
    conn: &mut MultiplexedConnection,
    why: &str,
    keep_newer: bool,
) -> Result<(), End> {
    warn!("route store: {why}; reloading the whole table");
    let n = full_sync(inner, conn, keep_newer).await?;
    let rev = inner.state().applied;
    info!("route store: table reloaded, {n} routes (revision {rev})");
    Ok(())
}

/// Checks the format, initialises or re-seeds the store if needed, then loads the table
/// (`keep_newer`: see [`SyncState::load`](super::state::SyncState::load)).
async fn full_sync(
    inner: &Arc<Inner>,
    conn: &mut MultiplexedConnection,
    keep_newer: bool,
) -> Result<usize, End> {
    init_store(inner, conn).await?;
    let (epoch, rev, routes, activity, last): SnapshotReply = redis::pipe()
        .atomic()
        .get(&inner.keys.epoch)
        .get(&inner.keys.rev)
        .hgetall(&inner.keys.routes)
        .cmd("ZRANGE")
        .arg(&inner.keys.activity)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("XREVRANGE")
        .arg(&inner.keys.changes)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let snap = Snapshot {
        epoch,
        rev: rev.unwrap_or(0),
        routes,
        activity: activity.into_iter().map(|(k, v)| (k, v as i64)).collect(),
        last_id: last.into_iter().next().map(|(id, _)| id),
    };
    let n = inner.state().load(&inner.table, snap, keep_newer);
    inner.metrics.resyncs.inc();
    Ok(n)
}

/// Refuses a store of another format; creates the format and epoch keys of a new store; and,
/// when the store's epoch is not the one this replica loaded from (Redis lost its data),
/// writes this replica's routes back.
async fn init_store(inner: &Arc<Inner>, conn: &mut MultiplexedConnection) -> Result<(), End> {
    let (format, epoch): (Option<String>, Option<String>) = redis::pipe()
        .get(&inner.keys.format)
        .get(&inner.keys.epoch)
        .query_async(conn)
        .await?;
    if let Some(f) = format.as_deref().filter(|f| *f != FORMAT.to_string()) {
        return Err(format_error(inner, f));
    }
    let (mine, seed) = {
        let st = inner.state();
        let seed = match (&st.epoch, &epoch) {
            (Some(m), Some(e)) if m == e => None,
            (Some(_), _) => Some(st.seed(&inner.table)),
            (None, _) => Some(Vec::new()),
        };
        (st.epoch.clone(), seed)
    };
    if format.is_some() && mine.is_none() && epoch.is_some() {
        return Ok(());
    }
    let Some(seed) = seed else {
        return Ok(());
    };
    let mut inv = scripts::SEED.prepare_invoke();
    for k in inner.keys.all() {
        inv.key(k);
    }
    inv.arg(FORMAT)
        .arg(new_epoch())
        .arg(scripts::STREAM_MAX_LEN)
        .arg(now_ms());
    let n = seed.len();
    for (slot, value, at) in seed {
        inv.arg(slot).arg(value).arg(at);
    }
    let (epoch_now, added): (String, u64) = match inv.invoke_async(conn).await {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            if let Some(f) = msg.split("HUBGATE_FORMAT ").nth(1) {
                return Err(format_error(inner, f.trim()));
            }
            return Err(e.into());
        }
    };
    if mine.is_some() && mine.as_deref() != Some(epoch_now.as_str()) {
        warn!(
            "route store: Redis at {} lost the route table (or it was replaced); restored {added} of this replica's {n} routes (the others were there already)",
            inner.url
        );
    }
    Ok(())
}

fn format_error(inner: &Inner, found: &str) -> End {
    let newer = found.parse::<u64>().is_ok_and(|f| f > u64::from(FORMAT));
    End::Fatal(format!(
        "Redis at {} holds route data in format {found:?} under key prefix {:?}, {}; this hubgate reads and writes format {FORMAT} only and will not touch it (run a hubgate that knows format {found}, or give this one another storage.key-prefix)",
        inner.url,
        inner.settings.key_prefix,
        if newer { "written by a newer hubgate" } else { "which this hubgate does not know" },
    ))
}

/// A random id for a newly initialised store.
fn new_epoch() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        return format!("{:x}-{}", now_ms(), std::process::id());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
