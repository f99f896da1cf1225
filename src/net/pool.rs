//! Idle keep-alive connections to plain (`http://` over TCP) targets, for the direct request
//! path (docs/direct-path.md).
//!
//! A connection is kept only after a complete exchange on it, for at most [`Pool::idle`], and
//! is checked when taken rather than watched while idle (no task per connection): it is used
//! only if its deadline has not passed and the kernel holds nothing for it. A server that
//! closed it, or wrote bytes nobody asked for (a stray response that must never be read as the
//! next request's answer), shows as readable there. The same rules as the vendored pingora
//! pool's (docs/pingora-patches.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections by target address, at most `max` in all.
pub struct Pool {
    idle: Duration,
    max: usize,
    conns: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_addr: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    count: usize,
}

impl Pool {
    /// A pool keeping at most `max` connections, each idle at most `idle`.
    pub fn new(max: usize, idle: Duration) -> Pool {
        Pool {
            idle,
            max,
            conns: Mutex::new(Idle::default()),
        }
    }

    /// An idle connection to `addr` that can carry a request, newest first.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let now = Instant::now();
        loop {
            let (conn, released) = {
                let mut idle = self.conns.lock().unwrap_or_else(|e| e.into_inner());
                let list = idle.by_addr.get_mut(&addr)?;
                let entry = list.pop();
                if list.is_empty() {
                    idle.by_addr.remove(&addr);
                }
                let entry = entry?;
                idle.count -= 1;
                entry
            };
            if now.duration_since(released) < self.idle && quiet(&conn) {
                return Some(conn);
            }
            // Expired, closed by the server, or holding unasked bytes: dropped (closed).
        }
    }

    /// Keeps a connection whose last exchange was complete. Past the bound, the connection
    /// is closed instead.
    pub fn put(&self, addr: SocketAddr, conn: TcpStream) {
        let mut idle = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if idle.count >= self.max {
            return;
        }
        idle.count += 1;
        idle.by_addr
            .entry(addr)
            .or_default()
            .push((conn, Instant::now()));
    }

    /// Connections kept now.
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the kernel holds nothing to read for an idle connection: not closed by the peer,
/// no bytes nobody asked for. (The runtime's readiness flag can lag behind bytes that have
/// already arrived, so the kernel is asked.)
fn quiet(conn: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the descriptor is the open socket `conn` owns; the buffer is one valid byte.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error().kind();
        e == std::io::ErrorKind::WouldBlock || e == std::io::ErrorKind::Interrupted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn only_quiet_unexpired_connections_are_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = Pool::new(2, Duration::from_secs(60));

        // A quiet connection comes back.
        let c = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        pool.put(addr, c);
        assert_eq!(pool.len(), 1);
        assert!(pool.take(addr).is_some());
        assert!(pool.is_empty());

        // One the server wrote to while idle does not.
        let c = TcpStream::connect(addr).await.expect("connect");
        let (mut s2, _) = listener.accept().await.expect("accept");
        pool.put(addr, c);
        s2.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        s2.flush().await.expect("flush");
        wait_readable(&pool, addr).await;
        assert!(pool.take(addr).is_none());

        // Nor one the server closed.
        let c = TcpStream::connect(addr).await.expect("connect");
        let (s3, _) = listener.accept().await.expect("accept");
        pool.put(addr, c);
        drop(s3);
        wait_readable(&pool, addr).await;
        assert!(pool.take(addr).is_none());

        // Nor an expired one.
        let pool = Pool::new(2, Duration::ZERO);
        let c = TcpStream::connect(addr).await.expect("connect");
        let _s4 = listener.accept().await.expect("accept");
        pool.put(addr, c);
        assert!(pool.take(addr).is_none());

        // The bound: the third is closed, not kept.
        let pool = Pool::new(2, Duration::from_secs(60));
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.expect("connect");
            let _ = listener.accept().await.expect("accept");
            pool.put(addr, c);
        }
        assert_eq!(pool.len(), 2);
        server.shutdown().await.expect("shutdown");
    }

    /// Waits until the loopback delivered what the server sent (bounded).
    async fn wait_readable(pool: &Pool, addr: SocketAddr) {
        let idle = pool.conns.lock().expect("lock");
        let conn = &idle.by_addr[&addr][0].0;
        for _ in 0..200 {
            if !quiet(conn) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the server's bytes never arrived");
    }
}
