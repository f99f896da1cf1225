//! Route keys, the route table and the stores that keep it.

mod redis_store;
mod store;
mod table;

pub use redis_store::{RedisStorage, RedisStore};
pub use store::{MemoryStore, RevocationStore, RouteStore, StoreError, StoreHealth};
pub use table::{check_key, trim_prefix, KeyError, Match, Route, RouteKind, RouteTable};
