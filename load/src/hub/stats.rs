//! Per-stage times and failures of the hub mode, its progress line, and its summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hist::Histogram;
use crate::report::{MachineResult, WatchResult};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Stage {
    /// The hub's login form posted (or the API token checked).
    Login,
    /// `POST …/server` until the hub reports the server ready.
    Spawn,
    /// JupyterLab's page (OAuth round trip included) and its first API calls.
    Lab,
    /// `POST …/api/kernels` until the first execution's reply on the kernel websocket.
    Kernel,
    /// One execution's round trip on the kernel websocket.
    Execute,
    /// The idle websockets (other tabs): the handshake's time; a failure if one could not
    /// be opened or was closed by the server before the session's end.
    IdleWs,
    /// `DELETE …/server` until the hub reports it gone.
    Stop,
}

pub const STAGES: [Stage; 7] = [
    Stage::Login,
    Stage::Spawn,
    Stage::Lab,
    Stage::Kernel,
    Stage::Execute,
    Stage::IdleWs,
    Stage::Stop,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Login => "login",
            Stage::Spawn => "spawn",
            Stage::Lab => "lab",
            Stage::Kernel => "first_kernel_reply",
            Stage::Execute => "execute",
            Stage::IdleWs => "idle_ws",
            Stage::Stop => "stop",
        }
    }
}

#[derive(Default)]
struct StageData {
    hist: Histogram,
    failures: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Stats {
    stages: Mutex<BTreeMap<Stage, StageData>>,
}

impl Stats {
    pub fn ok(&self, stage: Stage, d: Duration) {
        if let Ok(mut g) = self.stages.lock() {
            g.entry(stage).or_default().hist.record(d.as_nanos() as u64);
        }
    }

    pub fn exec(&self, d: Duration) {
        self.ok(Stage::Execute, d);
    }

    pub fn fail(&self, stage: Stage, reason: &str) {
        if let Ok(mut g) = self.stages.lock() {
            *g.entry(stage)
                .or_default()
                .failures
                .entry(reason.to_string())
                .or_default() += 1;
        }
    }

    fn snapshot(&self, stage: Stage) -> (u64, u64, f64) {
        let g = match self.stages.lock() {
            Ok(g) => g,
            Err(_) => return (0, 0, 0.0),
        };
        g.get(&stage)
            .map(|d| {
                (
                    d.hist.count(),
                    d.failures.values().sum(),
                    d.hist.quantile(0.5) as f64 / 1e6,
                )
            })
            .unwrap_or((0, 0, 0.0))
    }

    pub fn summary(
        &self,
        users: usize,
        elapsed: Duration,
        proxy: Option<WatchResult>,
        machine: MachineResult,
        completed: u64,
    ) -> HubSummary {
        let g = self.stages.lock().map(|g| {
            STAGES
                .iter()
                .map(|s| {
                    let d = g.get(s);
                    let ms = |q: f64| {
                        d.map(|d| (d.hist.quantile(q) as f64 / 1e3).round() / 1e3)
                            .unwrap_or(0.0)
                    };
                    (
                        s.name().to_string(),
                        StageResult {
                            ok: d.map(|d| d.hist.count()).unwrap_or(0),
                            failed: d.map(|d| d.failures.values().sum()).unwrap_or(0),
                            ms: StageMs {
                                p50: ms(0.5),
                                p90: ms(0.9),
                                p99: ms(0.99),
                                max: d
                                    .map(|d| (d.hist.max() as f64 / 1e3).round() / 1e3)
                                    .unwrap_or(0.0),
                            },
                            failures: d.map(|d| d.failures.clone()).unwrap_or_default(),
                        },
                    )
                })
                .collect::<Vec<_>>()
        });
        HubSummary {
            mode: "hub".into(),
            users: users as u64,
            users_completed: completed,
            duration_s: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
            stages: g.unwrap_or_default().into_iter().collect(),
            proxy,
            machine,
            ..HubSummary::default()
        }
    }
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Live {
    pub started: AtomicUsize,
    pub logged_in: AtomicU64,
    pub running: AtomicU64,
    pub kernels: AtomicU64,
    pub idle_ws: AtomicU64,
    pub executes: AtomicU64,
    pub completed: AtomicU64,
    pub stop: AtomicBool,
}

/// One line a second on stderr: where the users are, and failures so far.
pub fn spawn_progress(
    live: Arc<Live>,
    stats: Arc<Stats>,
    users: usize,
    enabled: bool,
) -> Option<std::thread::JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(std::thread::spawn(move || {
        let start = Instant::now();
        let mut tick = 1u64;
        let mut last_exec = 0;
        loop {
            let due = start + Duration::from_secs(tick);
            while Instant::now() < due {
                if live.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let exec = g(&live.executes);
            let failed: u64 = STAGES.iter().map(|s| stats.snapshot(*s).1).sum();
            let (_, _, p50) = stats.snapshot(Stage::Execute);
            eprintln!(
                "hubgate-load hub: {tick:>4}s  users {}/{users}  logged in {}  running {}  \
                 kernels {}  idle ws {}  exec {}/s (p50 {p50:.1} ms)  done {}  failures {failed}",
                live.started.load(Ordering::Relaxed),
                g(&live.logged_in),
                g(&live.running),
                g(&live.kernels),
                g(&live.idle_ws),
                exec - last_exec,
                g(&live.completed),
            );
            last_exec = exec;
            tick += 1;
        }
    }))
}

#[derive(Serialize, Default)]
pub struct StageMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Serialize, Default)]
pub struct StageResult {
    /// Successful completions (executions for `execute`, sockets for `idle_ws`).
    pub ok: u64,
    pub failed: u64,
    /// Times of the successful ones, in milliseconds.
    pub ms: StageMs,
    /// Failures by reason ("status 503", "spawn timeout", …).
    pub failures: BTreeMap<String, u64>,
}

#[derive(Serialize, Default)]
pub struct HubSummary {
    pub mode: String,
    pub url: String,
    pub users: u64,
    /// Users whose every stage succeeded.
    pub users_completed: u64,
    pub duration_s: f64,
    pub settings: BTreeMap<String, serde_json::Value>,
    /// In order: login, spawn, lab, first_kernel_reply, execute, idle_ws, stop.
    pub stages: Vec<(String, StageResult)>,
    /// The proxy's process tree (--proxy-pid): CPU during the run, RSS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<WatchResult>,
    pub machine: MachineResult,
}

impl HubSummary {
    pub fn emit(&self, json: Option<&str>) -> Result<(), String> {
        let mut t = String::new();
        let _ = writeln!(t, "hubgate-load hub {}", self.url);
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(t, "  {}", settings.join(", "));
        let _ = writeln!(
            t,
            "  users {} completed {} in {:.1} s",
            self.users, self.users_completed, self.duration_s
        );
        let _ = writeln!(
            t,
            "  {:<19} {:>6} {:>6} {:>10} {:>10} {:>10}  failures",
            "stage", "ok", "failed", "p50 ms", "p99 ms", "max ms"
        );
        for (name, s) in &self.stages {
            let reasons: Vec<String> = s
                .failures
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            let line = format!(
                "  {:<19} {:>6} {:>6} {:>10.1} {:>10.1} {:>10.1}  {}",
                name,
                s.ok,
                s.failed,
                s.ms.p50,
                s.ms.p99,
                s.ms.max,
                reasons.join(", ")
            );
            let _ = writeln!(t, "{}", line.trim_end());
        }
        if let Some(p) = &self.proxy {
            let _ = writeln!(
                t,
                "  proxy (pid {}): cpu {:.2} s ({:.1}% of one core), rss start/peak/end {}/{}/{} KiB",
                p.pid,
                p.cpu_us as f64 / 1e6,
                100.0 * p.cpu_us as f64 / 1e6 / self.machine.window_s.max(1e-9),
                p.rss_start_kib,
                p.rss_peak_kib,
                p.rss_end_kib
            );
        }
        let m = &self.machine;
        let _ = writeln!(
            t,
            "  machine: {} cpus, this tool {:.2} s cpu, loadavg {} -> {}",
            m.ncpu,
            m.self_cpu_us as f64 / 1e6,
            m.loadavg_start,
            m.loadavg_end
        );
        print!("{t}");
        if let Some(path) = json {
            // Stages as an object keyed by name, in the table's order.
            let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
            let stages: serde_json::Map<String, serde_json::Value> = self
                .stages
                .iter()
                .map(|(k, s)| (k.clone(), serde_json::to_value(s).unwrap_or_default()))
                .collect();
            v["stages"] = serde_json::Value::Object(stages);
            let s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            std::fs::write(path, s + "\n").map_err(|e| format!("--json {path}: {e}"))?;
        }
        Ok(())
    }
}
