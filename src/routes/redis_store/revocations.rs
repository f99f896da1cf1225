//! Revocations shared between replicas: `{prefix}:v1:revocations` (hash, field → value, both
//! opaque here: the revocation list's text form) and
//! `{prefix}:v1:revocations-rev` (incremented by every write). Each replica polls the counter
//! every 250 ms (the revocation list's poll interval) over the route store's
//! command connection and reads the hash when it moved, so a revocation made on one replica
//! is in force on all within about a quarter of a second, and a replica that starts later
//! reads every entry still in force. Entries past their `until` are pruned by writers.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;

use super::Inner;
use crate::routes::RevocationStore;

/// Writes one entry, keeping the later `until` and (for a user) the later not-before when
/// the field exists, bumps the counter and, every 64th write, drops expired entries.
/// KEYS: hash, counter. ARGV: field, value, now.
static PUT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local function parse(v)
  local a, b = string.match(v, '^(%d+) ?(%d*)$')
  return tonumber(a), tonumber(b)
end
local value = ARGV[2]
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local u1, n1 = parse(old)
  local u2, n2 = parse(value)
  if u1 and u2 then
    local u = math.max(u1, u2)
    if n1 and n2 then value = u .. ' ' .. math.max(n1, n2) else value = tostring(u) end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], value)
local rev = redis.call('INCR', KEYS[2])
if rev % 64 == 0 then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local u = parse(all[i + 1])
    if u and u <= tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return rev
"#,
    )
});

/// The Redis side of the revocation list.
pub(super) struct RedisRevocations(pub(super) Arc<Inner>);

impl RedisRevocations {
    fn conn(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        match self.0.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => Err(format!(
                "Redis at {} is not reachable ({})",
                self.0.url,
                self.0
                    .reason()
                    .unwrap_or_else(|| "not connected yet".into())
            )),
        }
    }
}

#[async_trait]
impl RevocationStore for RedisRevocations {
    async fn put(&self, field: &str, value: &str, _until: i64) -> Result<(), String> {
        let mut conn = self.conn()?;
        let keys = &self.0.keys;
        let _rev: u64 = PUT
            .key(&keys.revocations)
            .key(&keys.revocations_rev)
            .arg(field)
            .arg(value)
            .arg(crate::time::now_secs())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if let Some((replicas, timeout)) = self.0.backend.wait() {
            // As for routes: acknowledged only once a promoted replica would still have it.
            let acked: u64 = redis::cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if acked < u64::from(replicas) {
                return Err(format!(
                    "only {acked} of the {replicas} Redis replicas required (wait-replicas) confirmed it"
                ));
            }
        }
        Ok(())
    }

    async fn load(
        &self,
        version: &mut Option<String>,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let mut conn = self.conn()?;
        let keys = &self.0.keys;
        let rev: Option<String> = redis::cmd("GET")
            .arg(&keys.revocations_rev)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let rev = rev.unwrap_or_else(|| "0".into());
        if version.as_deref() == Some(rev.as_str()) {
            return Ok(None);
        }
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&keys.revocations)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        // A write between the two reads is read again at the next poll (entries are
        // idempotent), since the version kept is the older one.
        *version = Some(rev);
        Ok(Some(entries))
    }
}
