//! Prometheus metrics, with CHP's names kept so dashboards built for CHP keep working.
//!
//! Each server owns its registry (tests build several servers in one process). Counters
//! labelled by status are resolved once per status code and cached, so the request path
//! does no label hashing.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::net::FailureKind;
use crate::routes::RouteTable;

/// Status codes get a cached counter each; anything outside 100..=599 shares label "other".
const STATUS_SLOTS: usize = 600;

/// A counter vector labelled by status code, with the per-code handles cached.
pub struct StatusCounters {
    vec: IntCounterVec,
    cache: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    fn new(name: &str, help: &str) -> prometheus::Result<StatusCounters> {
        let vec = IntCounterVec::new(Opts::new(name, help), &["status"])?;
        let cache = (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect();
        Ok(StatusCounters { vec, cache })
    }

    /// The counter for one status code.
    pub fn get(&self, code: u16) -> &IntCounter {
        let slot = usize::from(code).min(STATUS_SLOTS - 1);
        self.cache[slot].get_or_init(|| {
            let label = if (100..600).contains(&code) {
                code.to_string()
            } else {
                "other".to_string()
            };
            self.vec.with_label_values(&[label.as_str()])
        })
    }
}

/// All metrics of one hubgate server.
pub struct Metrics {
    registry: Registry,
    /// `GET /api/routes` (whole table) calls.
    pub api_route_get: IntCounter,
    /// Successful route POSTs.
    pub api_route_add: IntCounter,
    /// Route DELETEs (including 404s).
    pub api_route_delete: IntCounter,
    /// Route lookup time.
    pub find_target_for_req: Arc<Summary>,
    /// Activity recording time.
    pub last_activity_updating: Arc<Summary>,
    /// Websocket upgrade requests.
    pub requests_ws: IntCounter,
    /// Web requests (health checks excluded).
    pub requests_web: IntCounter,
    requests_proxy: StatusCounters,
    requests_api: StatusCounters,
    /// Websockets open right now.
    pub websockets_open: IntGauge,
    /// Connections refused or closed before a complete request head, by reason (the public
    /// listener's front door, `src/proxy/front_door.rs`).
    pub requests_refused: IntCounterVec,
    /// Connections that have not sent a complete request head yet.
    pub connections_pending_head: IntGauge,
    /// Upstream connect and response failures, one series per [`FailureKind`] (in its order).
    upstream_errors: Vec<IntCounter>,
    /// Authentication decisions by result and reason.
    pub auth_decisions: IntCounterVec,
    /// Request duration by route kind and status class, resolved once: `[kind][class]`.
    request_duration: Vec<[Histogram; 5]>,
    /// API call duration by method: GET, POST, DELETE, other.
    api_duration: [Histogram; 4],
    /// Websocket frames relayed: client→server, server→client.
    pub ws_frames: [IntCounter; 2],
    /// Websocket bytes relayed: client→server, server→client.
    pub ws_bytes: [IntCounter; 2],
}

impl Metrics {
    /// Creates and registers every metric; `table` is sampled at scrape time for its size.
    pub fn new(table: Arc<RouteTable>) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let api_route_get = counter("api_route_get", "Count of API requests to get all routes")?;
        let api_route_add = counter("api_route_add", "Count of API requests to add a route")?;
        let api_route_delete = counter(
            "api_route_delete",
            "Count of API requests to delete a route",
        )?;
        let requests_ws = counter("requests_ws", "Count of websocket requests")?;
        let requests_web = counter("requests_web", "Count of web requests")?;
        let find_target_for_req = Arc::new(Summary::new(
            "find_target_for_req",
            "Route lookup time in seconds",
        )?);
        registry.register(Box::new(SummaryCollector(find_target_for_req.clone())))?;
        let last_activity_updating = Arc::new(Summary::new(
            "last_activity_updating",
            "Time to record a route's activity, in seconds",
        )?);
        registry.register(Box::new(SummaryCollector(last_activity_updating.clone())))?;
        let requests_proxy =
            StatusCounters::new("requests_proxy", "Count of proxy responses by status")?;
        registry.register(Box::new(requests_proxy.vec.clone()))?;
        // CHP declares these before any traffic; a zero series makes them visible too.
        requests_proxy.get(200);
        let requests_api = StatusCounters::new("requests_api", "Count of API responses by status")?;
        requests_api.get(200);
        registry.register(Box::new(requests_api.vec.clone()))?;
        let websockets_open =
            IntGauge::new("hubgate_websockets_open", "Websockets currently open")?;
        registry.register(Box::new(websockets_open.clone()))?;
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "hubgate_requests_refused_total",
                "Connections refused or closed before a complete request head, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(requests_refused.clone()))?;
        let connections_pending_head = IntGauge::new(
            "hubgate_connections_pending_head",
            "Client connections that have not sent a complete request head yet",
        )?;
        registry.register(Box::new(connections_pending_head.clone()))?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("hubgate_upstream_errors_total", "Upstream failures by kind"),
            &["kind"],
        )?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let upstream_errors = FailureKind::ALL
            .iter()
            .map(|k| upstream_errors.with_label_values(&[k.label()]))
            .collect();
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "hubgate_auth_decisions_total",
                "Authentication decisions by result and reason",
            ),
            &["result", "reason"],
        )?;
        registry.register(Box::new(auth_decisions.clone()))?;
        registry.register(Box::new(RouteCount {
            table,
            desc: prometheus::core::Desc::new(
                "hubgate_routes".into(),
                "Routes in the table".into(),
                vec![],
                Default::default(),
            )?,
        }))?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "hubgate_request_duration_seconds",
                "Proxied request duration, first byte in to last byte out",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route_kind", "status_class"],
        )?;
        registry.register(Box::new(durations.clone()))?;
        let request_duration = ["hub", "user", "service", "other"]
            .iter()
            .map(|kind| {
                ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .map(|class| durations.with_label_values(&[kind, class]))
            })
            .collect();
        let api = HistogramVec::new(
            HistogramOpts::new(
                "hubgate_api_request_duration_seconds",
                "REST API call duration",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(api.clone()))?;
        let api_duration = ["GET", "POST", "DELETE", "other"].map(|m| api.with_label_values(&[m]));
        let frames = IntCounterVec::new(
            Opts::new("hubgate_websocket_frames_total", "Websocket frames relayed"),
            &["direction"],
        )?;
        registry.register(Box::new(frames.clone()))?;
        let bytes = IntCounterVec::new(
            Opts::new("hubgate_websocket_bytes_total", "Websocket bytes relayed"),
            &["direction"],
        )?;
        registry.register(Box::new(bytes.clone()))?;
        let dirs = ["client_to_server", "server_to_client"];
        let ws_frames = dirs.map(|d| frames.with_label_values(&[d]));
        let ws_bytes = dirs.map(|d| bytes.with_label_values(&[d]));
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(OpenSockets::new()?))?;
        let build = IntGauge::with_opts(
            Opts::new("hubgate_build_info", "hubgate version")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1);
        registry.register(Box::new(build))?;
        Ok(Metrics {
            registry,
            api_route_get,
            api_route_add,
            api_route_delete,
            find_target_for_req,
            last_activity_updating,
            requests_ws,
            requests_web,
            requests_proxy,
            requests_api,
            websockets_open,
            requests_refused,
            connections_pending_head,
            upstream_errors,
            auth_decisions,
            request_duration,
            api_duration,
            ws_frames,
            ws_bytes,
        })
    }

    /// Records a finished proxied request.
    pub fn observe_request(
        &self,
        kind: crate::routes::RouteKind,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.request_duration[kind.index()][class].observe(elapsed.as_secs_f64());
    }

    /// Records an API call.
    pub fn observe_api(&self, method: &http::Method, elapsed: std::time::Duration) {
        let i = match *method {
            http::Method::GET => 0,
            http::Method::POST => 1,
            http::Method::DELETE => 2,
            _ => 3,
        };
        self.api_duration[i].observe(elapsed.as_secs_f64());
    }

    /// Registers another collector (e.g. authentication's key-set gauges).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// `hubgate_upstream_errors_total{kind}`.
    pub fn upstream_error(&self, kind: FailureKind) -> &IntCounter {
        let i = FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        &self.upstream_errors[i]
    }

    /// `requests_proxy{status}`.
    pub fn requests_proxy(&self, code: u16) -> &IntCounter {
        self.requests_proxy.get(code)
    }

    /// `requests_api{status}`.
    pub fn requests_api(&self, code: u16) -> &IntCounter {
        self.requests_api.get(code)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Reports the route table's size when scraped (nothing to update on the write path).
struct RouteCount {
    table: Arc<RouteTable>,
    desc: prometheus::core::Desc,
}

impl prometheus::core::Collector for RouteCount {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let gauge = IntGauge::with_opts(Opts::new("hubgate_routes", "Routes in the table"));
        match gauge {
            Ok(g) => {
                g.set(self.table.len() as i64);
                g.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// The `/metrics` listener.
pub struct MetricsApp {
    metrics: Arc<Metrics>,
}

impl MetricsApp {
    /// Serves `metrics` at `/metrics`.
    pub fn new(metrics: Arc<Metrics>) -> MetricsApp {
        MetricsApp { metrics }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, ctype, body) = if session.req_header().raw_path() == b"/metrics" {
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            )
        } else {
            (404, "", b"Not Found".to_vec())
        };
        let mut builder = Response::builder().status(status);
        if !ctype.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, ctype);
        }
        builder
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// A summary with a count and a sum (CHP's `find_target_for_req` and
/// `last_activity_updating` are prom-client summaries). Two relaxed atomic adds per
/// observation; no quantiles, which would cost a sorted window per request.
pub struct Summary {
    desc: prometheus::core::Desc,
    count: std::sync::atomic::AtomicU64,
    sum_nanos: std::sync::atomic::AtomicU64,
}

impl Summary {
    fn new(name: &str, help: &str) -> prometheus::Result<Summary> {
        Ok(Summary {
            desc: prometheus::core::Desc::new(
                name.into(),
                help.into(),
                vec![],
                Default::default(),
            )?,
            count: Default::default(),
            sum_nanos: Default::default(),
        })
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }
}

struct SummaryCollector(Arc<Summary>);

impl prometheus::core::Collector for SummaryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut summary = prometheus::proto::Summary::default();
        summary.set_sample_count(self.0.count.load(Relaxed));
        summary.set_sample_sum(self.0.sum_nanos.load(Relaxed) as f64 / 1e9);
        let mut metric = prometheus::proto::Metric::default();
        metric.set_summary(summary);
        let mut family = prometheus::proto::MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(prometheus::proto::MetricType::SUMMARY);
        family.mut_metric().push(metric);
        vec![family]
    }
}

/// `hubgate_connections_open`: sockets the process holds (clients, targets, listeners),
/// counted from `/proc/self/fd` at scrape time so the request path pays nothing.
struct OpenSockets {
    desc: prometheus::core::Desc,
}

impl OpenSockets {
    fn new() -> prometheus::Result<OpenSockets> {
        Ok(OpenSockets {
            desc: prometheus::core::Desc::new(
                "hubgate_connections_open".into(),
                "Open sockets: client and target connections and listeners".into(),
                vec![],
                Default::default(),
            )?,
        })
    }
}

impl prometheus::core::Collector for OpenSockets {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let count = std::fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0);
        match IntGauge::with_opts(Opts::new(
            "hubgate_connections_open",
            "Open sockets: client and target connections and listeners",
        )) {
            Ok(g) => {
                g.set(count as i64);
                g.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}
