//! Host-name targets resolved off the request path's hot loop: results are cached for a
//! short time, so a compute node's name costs one lookup per TTL, not one per request.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long a resolved address is reused.
const TTL: Duration = Duration::from_secs(30);

/// A small DNS cache keyed by `(host, port)`.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: DashMap<(String, u16), (Instant, SocketAddr)>,
}

impl Resolver {
    /// Resolves `host:port`, from the cache when fresh.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> io::Result<SocketAddr> {
        let key = (host.to_string(), port);
        if let Some(entry) = self.cache.get(&key) {
            if entry.0.elapsed() < TTL {
                return Ok(entry.1);
            }
        }
        let lookup = tokio::net::lookup_host((host, port));
        let mut addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("resolving {host} timed out"),
                )
            })??
            .collect();
        addrs.sort_by_key(|a| !a.is_ipv4());
        let addr = addrs.into_iter().next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
        })?;
        self.cache.insert(key, (Instant::now(), addr));
        Ok(addr)
    }
}
