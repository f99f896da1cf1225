//! Route keys, the route table and the stores that keep it.

mod store;
mod table;
mod target;

pub use store::{MemoryStore, RouteStore, StoreError};
pub use table::{now_ms, trim_prefix, Match, Route, RouteKind, RouteTable};
pub use target::{Target, TargetAddr, TargetError};
