//! Leaves for reaching other servers: target URLs, one DNS cache, one way to connect to a
//! target (plain, TLS or unix socket), the classification of connection failures, and the
//! outbound HTTP client hubgate uses for its own requests. Imports no other hubgate module.

mod client;
mod connect;
mod failure;
mod pool;
mod resolver;
mod target;
mod tls_client;

pub use client::{Fetch, FetchError, Fetched, HttpClient};
pub use connect::{ClientTlsMaterial, Connector, PeerTimeouts, TargetStream, TlsTargetStream};
pub use failure::FailureKind;
pub use pool::Pool;
pub use resolver::Resolver;
pub use target::{Target, TargetAddr, TargetError};
