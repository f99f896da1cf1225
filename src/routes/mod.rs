//! Route keys, the route table and the stores that keep it.

mod redis_store;
mod store;
mod table;
mod target;

pub use redis_store::{RedisStorage, RedisStore};
pub use store::{MemoryStore, RouteStore, StoreError, StoreHealth};
pub use table::{now_ms, trim_prefix, Match, Route, RouteKind, RouteTable};
pub use target::{Target, TargetAddr, TargetError};
