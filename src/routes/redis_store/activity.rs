//! Activity exchange: each replica records activity on its own routes; every flush interval
//! it reads what the others wrote to Redis since its last look, then writes its own newer
//! values. `last_activity` in any replica's API is therefore at most two intervals behind
//! the newest activity seen by any replica.

use std::collections::HashMap;
use std::sync::Arc;

use log::debug;

use super::scripts;
use super::Inner;
use crate::routes::table::{now_ms, segment_form, Route};

/// Slack when reading others' activity incrementally: a value written at most this long
/// before our previous read (a late flush, clocks that disagree a little) is still seen.
const READ_SLACK_MS: i64 = 30_000;

/// Pairs per flush script call.
const FLUSH_BATCH: usize = 1_000;

/// What the exchange remembers between rounds.
#[derive(Debug, Default)]
pub(super) struct ActivityState {
    /// Slot → the newest activity this replica knows Redis has.
    known: HashMap<String, i64>,
    /// When the last successful read started (ms); `None` reads everything.
    read_at: Option<i64>,
}

/// Exchanges activity every flush interval while the store is up.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.settings.activity_flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = exchange_once(&inner).await {
            debug!("route store: activity exchange failed: {e}");
        }
    }
}

/// One round: read others' activity, merge it, write ours.
pub(super) async fn exchange_once(inner: &Inner) -> Result<(), redis::RedisError> {
    let Some(conn) = inner.conn.load_full() else {
        inner.activity.lock().await.read_at = None;
        return Ok(());
    };
    let mut conn = (*conn).clone();
    let mut st = inner.activity.lock().await;
    let started = now_ms();
    let min = match st.read_at {
        Some(t) => {
            (t - 2 * inner.settings.activity_flush.as_millis() as i64 - READ_SLACK_MS).to_string()
        }
        None => "-inf".to_string(),
    };
    let result: Result<Vec<(String, f64)>, _> = redis::cmd("ZRANGEBYSCORE")
        .arg(&inner.keys.activity)
        .arg(min)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await;
    let seen = match result {
        Ok(s) => s,
        Err(e) => {
            st.read_at = None;
            return Err(e);
        }
    };
    let routes: Vec<Arc<Route>> = inner.table.all();
    let by_slot: HashMap<&str, &Arc<Route>> =
        routes.iter().map(|r| (segment_form(&r.key), r)).collect();
    for (slot, ms) in seen {
        let ms = ms as i64;
        if let Some(r) = by_slot.get(slot.as_str()) {
            r.touch_at(ms);
        }
        let k = st.known.entry(slot).or_insert(ms);
        *k = (*k).max(ms);
    }

    let mut newer: Vec<(&str, i64)> = Vec::new();
    let mut known = HashMap::with_capacity(routes.len());
    for r in &routes {
        let slot = segment_form(&r.key);
        let ms = r.last_activity_ms();
        let prev = st.known.get(slot).copied();
        if prev.is_none_or(|p| ms > p) {
            newer.push((slot, ms));
        }
        known.insert(slot.to_string(), prev.map_or(ms, |p| p.max(ms)));
    }
    for batch in newer.chunks(FLUSH_BATCH) {
        let mut inv = scripts::FLUSH_ACTIVITY.prepare_invoke();
        inv.key(&inner.keys.routes).key(&inner.keys.activity);
        for (slot, ms) in batch {
            inv.arg(*slot).arg(*ms);
        }
        let _: i64 = inv.invoke_async(&mut conn).await?;
    }
    st.known = known;
    st.read_at = Some(started);
    Ok(())
}
