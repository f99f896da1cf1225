//! Shared counters, the once-a-second progress line, /proc sampling of watched processes,
//! and the final summary (table on stdout, JSON file).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::hist::Histogram;

/// Counters updated by every worker; read by the progress line.
#[derive(Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// ws-hold: connections currently open.
    pub open: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Prints one line a second to stderr until `stop` is set. `what` names the unit ("req", "msg").
pub fn spawn_progress(
    mode: &'static str,
    what: &'static str,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    enabled: bool,
) -> Option<std::thread::JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = 0u64;
        let mut tick = 1u64;
        loop {
            // Sleep in short steps so the thread ends promptly.
            let due = start + Duration::from_secs(tick);
            while Instant::now() < due {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(
                    Duration::from_millis(50).min(due.saturating_duration_since(Instant::now())),
                );
            }
            let done = Counters::get(&counters.done);
            let errors = Counters::get(&counters.errors);
            let open = Counters::get(&counters.open);
            let mut line = format!(
                "hubgate-load {mode}: {tick:>4}s  {:>9} {what}/s  total {done}  errors {errors}",
                done - last
            );
            if mode == "ws-hold" {
                let _ = write!(line, "  open {open}");
            }
            eprintln!("{line}");
            last = done;
            tick += 1;
        }
    }))
}

// ---------------------------------------------------------------- /proc sampling

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// `pid` and all its descendants (through /proc/PID/task/*/children).
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
        if out.len() > 4096 {
            break;
        }
    }
    out
}

/// utime+stime of one process in clock ticks.
fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (cpu µs, rss KiB) summed over the process tree of `pid`.
pub fn tree_usage(pid: u32) -> (u64, u64) {
    let tck = clk_tck();
    let mut ticks = 0;
    let mut rss = 0;
    for p in tree(pid) {
        ticks += proc_ticks(p).unwrap_or(0);
        rss += proc_rss_kib(p).unwrap_or(0);
    }
    (ticks * 1_000_000 / tck, rss)
}

/// (busy µs, total µs) over all CPUs from /proc/stat, and the CPU count.
fn machine_times() -> (u64, u64, usize) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ncpu = s
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    let Some(l) = s.lines().next() else {
        return (0, 0, ncpu);
    };
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0, 0, ncpu);
    }
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let total = busy + v[3] + v[4];
    let tck = clk_tck();
    (busy * 1_000_000 / tck, total * 1_000_000 / tck, ncpu.max(1))
}

fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Serialize, Clone, Default)]
pub struct WatchResult {
    pub pid: u32,
    /// utime+stime of the process tree during the measured window.
    pub cpu_us: u64,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
}

#[derive(Serialize, Clone, Default)]
pub struct MachineResult {
    pub ncpu: usize,
    pub window_s: f64,
    /// Busy CPU time of the whole machine during the window (all CPUs).
    pub busy_us: u64,
    /// This load tool's own CPU during the window.
    pub self_cpu_us: u64,
    /// Machine busy time not spent in this tool or the watched processes, as % of all CPUs.
    pub background_busy_pct: f64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// Samples the watched process trees every 100 ms between `start` and `finish`.
pub struct Watcher {
    names: Vec<(String, u32)>,
    start_cpu: Vec<u64>,
    results: Arc<Mutex<Vec<WatchResult>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    m_start: (u64, u64, usize),
    self_start: u64,
    load_start: String,
    t0: Instant,
}

impl Watcher {
    pub fn start(names: &[(String, u32)]) -> Watcher {
        let m_start = machine_times();
        let self_start = self_cpu_us();
        let mut start_cpu = Vec::new();
        let mut init = Vec::new();
        for (_, pid) in names {
            let (cpu, rss) = tree_usage(*pid);
            start_cpu.push(cpu);
            init.push(WatchResult {
                pid: *pid,
                cpu_us: 0,
                rss_start_kib: rss,
                rss_peak_kib: rss,
                rss_end_kib: rss,
            });
        }
        let results = Arc::new(Mutex::new(init));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = if names.is_empty() {
            None
        } else {
            let (r, s, pids) = (
                results.clone(),
                stop.clone(),
                names.iter().map(|n| n.1).collect::<Vec<_>>(),
            );
            Some(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    for (i, pid) in pids.iter().enumerate() {
                        let (_, rss) = tree_usage(*pid);
                        let mut g = r.lock().unwrap();
                        g[i].rss_peak_kib = g[i].rss_peak_kib.max(rss);
                    }
                }
            }))
        };
        Watcher {
            names: names.to_vec(),
            start_cpu,
            results,
            stop,
            thread,
            m_start,
            self_start,
            load_start: loadavg(),
            t0: Instant::now(),
        }
    }

    pub fn finish(mut self) -> (BTreeMap<String, WatchResult>, MachineResult) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let window = self.t0.elapsed();
        let m_end = machine_times();
        let self_cpu = self_cpu_us().saturating_sub(self.self_start);
        let mut out = BTreeMap::new();
        let mut watched_cpu = 0;
        let results = self.results.lock().unwrap().clone();
        for (i, (name, pid)) in self.names.iter().enumerate() {
            let (cpu, rss) = tree_usage(*pid);
            let mut r = results[i].clone();
            r.cpu_us = cpu.saturating_sub(self.start_cpu[i]);
            r.rss_end_kib = rss;
            r.rss_peak_kib = r.rss_peak_kib.max(rss);
            watched_cpu += r.cpu_us;
            out.insert(name.clone(), r);
        }
        let busy = m_end.0.saturating_sub(self.m_start.0);
        let ncpu = m_end.2;
        let cap = window.as_micros() as f64 * ncpu as f64;
        let bg = busy.saturating_sub(self_cpu + watched_cpu) as f64;
        let machine = MachineResult {
            ncpu,
            window_s: window.as_secs_f64(),
            busy_us: busy,
            self_cpu_us: self_cpu,
            background_busy_pct: if cap > 0.0 {
                (100.0 * bg / cap * 10.0).round() / 10.0
            } else {
                0.0
            },
            loadavg_start: self.load_start.clone(),
            loadavg_end: loadavg(),
        };
        (out, machine)
    }
}

// ---------------------------------------------------------------- summary

#[derive(Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram) -> Latency {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            p50: us(h.quantile(0.5)),
            p90: us(h.quantile(0.9)),
            p99: us(h.quantile(0.99)),
            p999: us(h.quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub mode: String,
    pub url: String,
    pub connections: u64,
    pub duration_s: f64,
    /// Completed requests (http) or echoed round trips (ws-echo) or held websockets (ws-hold).
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    /// Latency percentiles in microseconds.
    pub latency_us: Latency,
    pub bytes_read: u64,
    pub bytes_written: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub watch: BTreeMap<String, WatchResult>,
    pub machine: MachineResult,
}

impl Summary {
    /// Print the table to stdout and write `json` if given.
    pub fn emit(&self, json: Option<&str>) -> Result<(), String> {
        let mut t = String::new();
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<22} {v}");
        };
        let _ = writeln!(t, "hubgate-load {} {}", self.mode, self.url);
        row(&mut t, "connections", self.connections.to_string());
        row(&mut t, "duration", format!("{:.2} s", self.duration_s));
        row(&mut t, "requests", self.requests.to_string());
        row(&mut t, "errors", self.errors.to_string());
        row(&mut t, "rate", format!("{:.1} /s", self.rps));
        let l = &self.latency_us;
        row(
            &mut t,
            "latency µs",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            ),
        );
        row(
            &mut t,
            "bytes read/written",
            format!("{} / {}", self.bytes_read, self.bytes_written),
        );
        for (k, v) in &self.status {
            row(&mut t, &format!("status {k}"), v.to_string());
        }
        for (k, v) in &self.extra {
            row(&mut t, k, v.to_string());
        }
        for (k, w) in &self.watch {
            let per = if self.requests > 0 {
                format!(
                    "  ({:.2} µs per request)",
                    w.cpu_us as f64 / self.requests as f64
                )
            } else {
                String::new()
            };
            row(
                &mut t,
                &format!("watch {k} (pid {})", w.pid),
                format!(
                    "cpu {} µs{per}  rss start/peak/end {}/{}/{} KiB",
                    w.cpu_us, w.rss_start_kib, w.rss_peak_kib, w.rss_end_kib
                ),
            );
        }
        let m = &self.machine;
        row(
            &mut t,
            "machine",
            format!(
                "{} cpus, background busy {:.1}%, this tool {} µs cpu, loadavg {} -> {}",
                m.ncpu, m.background_busy_pct, m.self_cpu_us, m.loadavg_start, m.loadavg_end
            ),
        );
        print!("{t}");
        if let Some(path) = json {
            let s = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
            std::fs::write(path, s + "\n").map_err(|e| format!("--json {path}: {e}"))?;
        }
        Ok(())
    }
}
