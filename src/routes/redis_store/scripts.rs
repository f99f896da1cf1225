//! The keys hubgate keeps in Redis and the Lua scripts that change them.
//!
//! Every change is one script, so Redis runs it atomically: the routes hash, the revision
//! counter and the change stream never disagree. Each write script first checks the format
//! and epoch keys, so a replica that has not seen a reset (or a newer format) cannot write.

use std::sync::LazyLock;

use redis::Script;

/// The stored format this hubgate reads and writes. A newer hubgate that changes the layout
/// uses new `{prefix}:v{N}:…` keys and sets `{prefix}:format` to N; this one then refuses.
pub(super) const FORMAT: u32 = 1;

/// The change stream keeps about this many entries (`XADD MAXLEN ~`); a replica further
/// behind than that reloads the whole table.
pub(super) const STREAM_MAX_LEN: u32 = 10_000;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `{prefix}:format`: the format number, checked at start.
    pub format: String,
    /// `{prefix}:v1:epoch`: a random id set when the store is initialised; it changes only
    /// when Redis lost its data and was seeded again.
    pub epoch: String,
    /// `{prefix}:v1:routes`: hash, route segment form → `{"key":…,"data":{…}}`.
    pub routes: String,
    /// `{prefix}:v1:rev`: the revision, incremented by every change.
    pub rev: String,
    /// `{prefix}:v1:changes`: stream of `rev N op add|del|reset key K route V at MS`.
    pub changes: String,
    /// `{prefix}:v1:activity`: sorted set, route segment form → last activity (ms).
    pub activity: String,
    /// `{prefix}:v1:revocations`: hash of revoked credentials (`revocations.rs`).
    pub revocations: String,
    /// `{prefix}:v1:revocations-rev`: incremented by every revocation written.
    pub revocations_rev: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let v = format!("{prefix}:v{FORMAT}");
        Keys {
            format: format!("{prefix}:format"),
            epoch: format!("{v}:epoch"),
            routes: format!("{v}:routes"),
            rev: format!("{v}:rev"),
            changes: format!("{v}:changes"),
            activity: format!("{v}:activity"),
            revocations: format!("{v}:revocations"),
            revocations_rev: format!("{v}:revocations-rev"),
        }
    }

    /// The six keys every write script takes, in order.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.format,
            &self.epoch,
            &self.routes,
            &self.rev,
            &self.changes,
            &self.activity,
        ]
    }
}

/// The error a write script returns when the format or epoch is not the caller's.
pub(super) const RESET_ERROR: &str = "HUBGATE_RESET";

const GUARD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return redis.error_reply('HUBGATE_RESET the route store was reset or holds another format')
end
"#;

/// Adds or replaces a route. ARGV: format, epoch, slot, value, key, at, maxlen, only-if-absent.
/// Returns `{rev, stream id}`, or `{0, ''}` when only-if-absent found the slot taken.
pub(super) static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{GUARD}
if ARGV[8] == '1' and redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  return {{0, ''}}
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[3])
local rev = redis.call('INCR', KEYS[4])
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*',
  'rev', rev, 'op', 'add', 'key', ARGV[5], 'route', ARGV[4], 'at', ARGV[6])
return {{rev, id}}
"#
    ))
});

/// Deletes a route if its slot holds exactly this key. ARGV: format, epoch, slot,
/// value prefix, key, at, maxlen. Returns `{rev, stream id}`, or `{0, ''}` if absent.
pub(super) static DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{GUARD}
local v = redis.call('HGET', KEYS[3], ARGV[3])
if not v or string.sub(v, 1, #ARGV[4]) ~= ARGV[4] then
  return {{0, ''}}
end
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
local rev = redis.call('INCR', KEYS[4])
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*',
  'rev', rev, 'op', 'del', 'key', ARGV[5], 'route', '', 'at', ARGV[6])
return {{rev, id}}
"#
    ))
});

/// Initialises the store if needed and writes back routes it lacks. ARGV: format, new epoch,
/// maxlen, now, then (slot, value, activity) triples. Returns `{epoch, routes written}` or
/// an error `HUBGATE_FORMAT <found>` when the store holds another format.
pub(super) static SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('GET', KEYS[1])
if f and f ~= ARGV[1] then
  return redis.error_reply('HUBGATE_FORMAT ' .. f)
end
if not f then redis.call('SET', KEYS[1], ARGV[1]) end
local ep = redis.call('GET', KEYS[2])
if not ep then
  ep = ARGV[2]
  redis.call('SET', KEYS[2], ep)
end
local added = 0
for i = 5, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) == 1 then
    added = added + 1
    redis.call('ZADD', KEYS[6], 'GT', ARGV[i + 2], ARGV[i])
  end
end
if added > 0 then
  local rev = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*',
    'rev', rev, 'op', 'reset', 'key', '', 'route', '', 'at', ARGV[4])
end
return {ep, added}
"#,
    )
});

/// Records activity of routes that still exist. KEYS: routes, activity. ARGV: (slot, ms)
/// pairs. `ZADD GT` keeps the newest value whichever replica wrote it.
pub(super) static FLUSH_ACTIVITY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], 'GT', ARGV[i + 1], ARGV[i])
    n = n + 1
  end
end
return n
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        let k = Keys::new("hubgate");
        assert_eq!(k.format, "hubgate:format");
        assert_eq!(k.routes, "hubgate:v1:routes");
        assert_eq!(k.changes, "hubgate:v1:changes");
        assert_eq!(k.all().len(), 6);
        // The scripts are valid enough to hash.
        for s in [&*ADD, &*DEL, &*SEED, &*FLUSH_ACTIVITY] {
            assert_eq!(s.get_hash().len(), 40);
        }
    }
}
