//! A bidirectional byte relay that holds no buffer while idle.
//!
//! Each poll reads into an uninitialised scratch array on the stack and writes it straight on; only bytes
//! the writer cannot take yet are copied to the heap, and freed once written. An idle
//! kernel websocket therefore costs its two sockets and this small struct, not the three
//! 64 KiB buffers pingora's upgraded-body path keeps (`docs/performance.md`,
//! "Websocket memory path").

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SCRATCH: usize = 16 * 1024;
/// Reads per direction per poll before yielding, so one busy socket cannot starve a worker.
const READS_PER_POLL: usize = 16;

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet accepted by the writer.
    pending: Vec<u8>,
    need_flush: bool,
    read_eof: bool,
    done: bool,
}

/// Copies `a → b` and `b → a` until both sides have closed; calls `on_a` / `on_b` on every
/// chunk read from that side (activity and frame accounting).
pub struct Relay<A, B, FA, FB> {
    a: A,
    b: B,
    a_to_b: Half,
    b_to_a: Half,
    on_a: FA,
    on_b: FB,
}

impl<A, B, FA, FB> Relay<A, B, FA, FB>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    FA: FnMut(&[u8]) + Unpin,
    FB: FnMut(&[u8]) + Unpin,
{
    /// A relay between `a` (the client) and `b` (the upstream).
    pub fn new(a: A, b: B, on_a: FA, on_b: FB) -> Self {
        Relay {
            a,
            b,
            a_to_b: Half::default(),
            b_to_a: Half::default(),
            on_a,
            on_b,
        }
    }
}

impl<A, B, FA, FB> Relay<A, B, FA, FB> {
    /// Whether every byte read from `b` has been written to `a`.
    pub fn idle_toward_a(&self) -> bool {
        self.b_to_a.pending.is_empty() && !self.b_to_a.need_flush
    }

    /// Whether every byte read from `a` has been written to `b`.
    pub fn idle_toward_b(&self) -> bool {
        self.a_to_b.pending.is_empty() && !self.a_to_b.need_flush
    }

    /// The two connections, to end them another way.
    pub fn into_parts(self) -> (A, B) {
        (self.a, self.b)
    }
}

fn poll_direction<R, W, F>(
    cx: &mut Context<'_>,
    reader: &mut R,
    writer: &mut W,
    half: &mut Half,
    on_read: &mut F,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(&[u8]),
{
    if half.done {
        return Poll::Ready(Ok(()));
    }
    let mut reads = 0;
    loop {
        while !half.pending.is_empty() {
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, &half.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            half.pending.drain(..n);
            half.need_flush = true;
        }
        if half.pending.capacity() > 0 {
            half.pending = Vec::new();
        }
        if half.need_flush {
            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
            half.need_flush = false;
        }
        if half.read_eof {
            ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
            half.done = true;
            return Poll::Ready(Ok(()));
        }
        if reads == READS_PER_POLL {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reads += 1;
        // Uninitialised: zeroing 16 KiB before every read (including the final one that
        // finds nothing) cost ~1 µs per relayed message.
        let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
        let filled = buf.filled();
        if filled.is_empty() {
            half.read_eof = true;
            continue;
        }
        on_read(filled);
        let mut off = 0;
        while off < filled.len() {
            match Pin::new(&mut *writer).poll_write(cx, &filled[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    half.pending.extend_from_slice(&filled[off..]);
                    return Poll::Pending;
                }
            }
        }
        half.need_flush = true;
    }
}

impl<A, B, FA, FB> Future for Relay<A, B, FA, FB>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    FA: FnMut(&[u8]) + Unpin,
    FB: FnMut(&[u8]) + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let ab = poll_direction(
            cx,
            &mut this.a,
            &mut this.b,
            &mut this.a_to_b,
            &mut this.on_a,
        );
        if let Poll::Ready(Err(e)) = ab {
            return Poll::Ready(Err(e));
        }
        let ba = poll_direction(
            cx,
            &mut this.b,
            &mut this.a,
            &mut this.b_to_a,
            &mut this.on_b,
        );
        if let Poll::Ready(Err(e)) = ba {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_closes() {
        let (client, relay_a) = tokio::io::duplex(64);
        let (relay_b, upstream) = tokio::io::duplex(64);
        let counts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = counts.clone();
        let task = tokio::spawn(Relay::new(
            relay_a,
            relay_b,
            move |data: &[u8]| {
                c2.fetch_add(data.len(), std::sync::atomic::Ordering::Relaxed);
            },
            |_: &[u8]| {},
        ));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        // More than the duplex buffer, so the pending path runs.
        let big = vec![7u8; 200_000];
        let writer = tokio::spawn(async move {
            cw.write_all(&big).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        ur.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 200_000);
        writer.await.unwrap();
        uw.write_all(b"pong").await.unwrap();
        uw.shutdown().await.unwrap();
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        task.await.unwrap().unwrap();
        assert_eq!(counts.load(std::sync::atomic::Ordering::Relaxed), 200_000);
    }
}
