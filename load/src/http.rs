//! `http`: keep-alive HTTP/1.1 GETs, closed-loop (N connections as fast as answered) or
//! fixed-rate (open loop; latency from the intended send time, so a stalled server is not
//! hidden by the client waiting — no coordinated omission).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{Conn, Connector};
use super::hist::Histogram;
use super::report::{Counters, Latency, Summary, Watcher};
use super::RunOpts;

/// A read buffer with a consumed prefix (one per connection; kept across keep-alive requests).
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Read more bytes; Err(UnexpectedEof) on EOF.
    async fn fill(&mut self, s: &mut Conn) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = s.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.end += n;
        Ok(n)
    }

    /// Consume and return one CRLF-terminated line (without CRLF) as an owned String.
    async fn line(&mut self, s: &mut Conn, read: &mut u64) -> io::Result<String> {
        loop {
            if let Some(i) = self.avail().windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.start += i + 2;
                return Ok(l);
            }
            *read += self.fill(s).await? as u64;
        }
    }

    /// Consume `n` body bytes.
    async fn skip(&mut self, s: &mut Conn, mut n: u64, read: &mut u64) -> io::Result<()> {
        loop {
            let a = (self.end - self.start) as u64;
            if a >= n {
                self.start += n as usize;
                return Ok(());
            }
            n -= a;
            self.start = self.end;
            *read += self.fill(s).await? as u64;
        }
    }
}

pub struct Response {
    pub status: u16,
    pub close: bool,
}

/// Read one response (head + body) from `s`. Adds received bytes to `read`.
pub async fn read_response(
    s: &mut Conn,
    r: &mut Reader,
    head_only: bool,
    read: &mut u64,
) -> io::Result<Response> {
    // head
    let head_end = loop {
        if let Some(i) = r.avail().windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        *read += r.fill(s).await? as u64;
    };
    let head = &r.avail()[..head_end];
    let text = std::str::from_utf8(head)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        )
    })?;
    let mut close = version == "HTTP/1.0";
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    r.start += head_end + 4;
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        if (100..200).contains(&status) && status != 101 {
            // interim response: the real one follows
            return Box::pin(read_response(s, r, head_only, read)).await;
        }
        return Ok(Response { status, close });
    }
    if chunked {
        loop {
            let line = r.line(s, read).await?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers until an empty line
                while !r.line(s, read).await?.is_empty() {}
                break;
            }
            r.skip(s, size + 2, read).await?;
        }
    } else if let Some(n) = length {
        r.skip(s, n, read).await?;
    } else {
        // body until close
        loop {
            r.start = r.end;
            match r.fill(s).await {
                Ok(n) => *read += n as u64,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        close = true;
    }
    Ok(Response { status, close })
}

/// Send one request on `s` and read its response, both within `timeout`. Adds received bytes
/// to `read`. Any error leaves the connection in an unknown state: drop it.
pub async fn exchange(
    s: &mut Conn,
    reader: &mut Reader,
    req: &[u8],
    head_only: bool,
    timeout: Duration,
    read: &mut u64,
) -> io::Result<Response> {
    tokio::time::timeout(timeout, async {
        s.write_all(req).await?;
        read_response(s, reader, head_only, read).await
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")))
}

#[derive(Clone, Copy)]
pub enum Pace {
    /// As fast as answered.
    Closed,
    /// Fixed total rate, requests/s.
    Rate(f64),
}

pub struct HttpOpts {
    pub connections: u64,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub pace: Pace,
    pub method: String,
    pub headers: Vec<String>,
    pub token: Option<String>,
}

struct WorkerResult {
    hist: Histogram,
    /// Fixed rate: how late each request was actually sent (timer slack, busy client).
    lag: Histogram,
    status: BTreeMap<u16, u64>,
}

pub async fn run(conn: Connector, o: HttpOpts, run: &RunOpts) -> Result<Summary, String> {
    let t = conn.target.clone();
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hubgate-load\r\n",
        o.method, t.path, t.authority
    );
    for h in &o.headers {
        if !h.contains(':') {
            return Err(format!("--header {h:?}: expected \"Name: value\""));
        }
        req.push_str(h.trim());
        req.push_str("\r\n");
    }
    if let Some(tok) = &o.token {
        req.push_str(&format!("Authorization: Bearer {tok}\r\n"));
    }
    req.push_str("\r\n");
    let req: Arc<[u8]> = Arc::from(req.into_bytes());
    let head_only = o.method.eq_ignore_ascii_case("HEAD");

    // Connect everything first, so the measured window is load only.
    let mut conns = Vec::new();
    for _ in 0..o.connections {
        conns.push(
            conn.connect()
                .await
                .map_err(|e| format!("connect to {}: {e}", t.url))?,
        );
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Requests left to start (budget for -n); i64 so it can go negative harmlessly.
    let budget = Arc::new(AtomicI64::new(
        o.requests.map(|n| n as i64).unwrap_or(i64::MAX),
    ));
    let progress =
        super::report::spawn_progress("http", "req", counters.clone(), stop.clone(), run.progress);
    let watcher = Watcher::start(&run.watch);
    let start = Instant::now();
    let deadline = o.duration.map(|d| start + d);

    let mut tasks = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let (conn, counters, budget, req) =
            (conn.clone(), counters.clone(), budget.clone(), req.clone());
        let pace = o.pace;
        let n = o.connections;
        let timeout = conn.timeout;
        tasks.push(tokio::spawn(async move {
            let mut res = WorkerResult {
                hist: Histogram::default(),
                lag: Histogram::default(),
                status: BTreeMap::new(),
            };
            let mut c = Some(c);
            let mut reader = Reader::new();
            // fixed rate: this connection's k-th request is due at start + (i + k*n)/rate
            let mut k: u64 = 0;
            loop {
                let intended = match pace {
                    Pace::Closed => None,
                    Pace::Rate(r) => {
                        let at = start + Duration::from_secs_f64((i as f64 + (k * n) as f64) / r);
                        k += 1;
                        Some(at)
                    }
                };
                if let Some(at) = intended {
                    if deadline.is_some_and(|d| at >= d) {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                    break;
                }
                let t0 = intended.unwrap_or_else(Instant::now);
                if intended.is_some() {
                    res.lag.record(t0.elapsed().as_nanos() as u64);
                }
                if c.is_none() {
                    match conn.connect().await {
                        Ok(s) => {
                            c = Some(s);
                            reader = Reader::new();
                        }
                        Err(_) => {
                            Counters::add(&counters.errors, 1);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let s = c.as_mut().unwrap();
                let mut read = 0u64;
                let r = exchange(s, &mut reader, &req, head_only, timeout, &mut read).await;
                Counters::add(&counters.bytes_written, req.len() as u64);
                Counters::add(&counters.bytes_read, read);
                match r {
                    Ok(resp) => {
                        res.hist.record(t0.elapsed().as_nanos() as u64);
                        *res.status.entry(resp.status).or_default() += 1;
                        Counters::add(&counters.done, 1);
                        if resp.status >= 400 {
                            Counters::add(&counters.errors, 1);
                        }
                        if resp.close {
                            c = None;
                        }
                    }
                    Err(_) => {
                        Counters::add(&counters.errors, 1);
                        c = None;
                    }
                }
            }
            res
        }));
    }
    let mut hist = Histogram::default();
    let mut lag = Histogram::default();
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        hist.merge(&r.hist);
        lag.merge(&r.lag);
        for (k, v) in r.status {
            *status.entry(k.to_string()).or_default() += v;
        }
    }
    let elapsed = start.elapsed();
    let (watch, machine) = watcher.finish();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut extra = BTreeMap::new();
    if let Pace::Rate(r) = o.pace {
        extra.insert("target_rate".to_string(), serde_json::json!(r));
        // Latency counts from the intended send time; this shows how much of it is the client
        // sending late (tokio's timer has 1 ms granularity, so expect up to ~1 ms here).
        let l = Latency::from_hist(&lag);
        extra.insert(
            "send_lag_us".to_string(),
            serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max}),
        );
    }
    Ok(Summary {
        mode: "http".into(),
        url: t.url.clone(),
        connections: o.connections,
        duration_s: elapsed.as_secs_f64(),
        requests: hist.count(),
        errors: Counters::get(&counters.errors),
        rps: hist.count() as f64 / elapsed.as_secs_f64(),
        latency_us: Latency::from_hist(&hist),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_written: Counters::get(&counters.bytes_written),
        status,
        extra,
        watch,
        machine,
    })
}
