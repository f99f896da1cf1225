//! The body of `GET /api/routes` for a large table: what JupyterHub's `check_routes` (every
//! 300 s) and the activity poll cost the API.
//!
//! `cargo bench --bench api_json`. The target is the whole GET with 10,000 routes in ≤ 5 ms
//! (CHP takes ~26 ms); this is the rendering part of it, without HTTP.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hubgate::api::render_routes;
use hubgate::routes::{Route, RouteTable};

/// `n` user routes shaped like JupyterHub's (user, server_name, target, jupyterhub), plus `/`.
fn table(n: usize) -> RouteTable {
    let t = RouteTable::new();
    let mut hub = serde_json::Map::new();
    hub.insert("hub".into(), true.into());
    hub.insert("target".into(), "http://127.0.0.1:8081".into());
    hub.insert("jupyterhub".into(), true.into());
    t.replace_all(
        std::iter::once(Arc::new(Route::new(Arc::from("/"), hub))).chain((0..n).map(|i| {
            let mut d = serde_json::Map::new();
            d.insert("user".into(), format!("user{i}").into());
            d.insert("server_name".into(), "".into());
            d.insert(
                "target".into(),
                format!(
                    "http://10.0.{}.{}:{}",
                    i / 250 % 250,
                    i % 250,
                    40000 + i % 20000
                )
                .into(),
            );
            d.insert("jupyterhub".into(), true.into());
            Arc::new(Route::new(Arc::from(format!("/user/user{i}").as_str()), d))
        })),
    );
    t
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("api_json");
    group.sample_size(20);
    for n in [10_000usize, 100_000] {
        let t = table(n);
        let len = render_routes(&t, None).len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("all_routes", n), &t, |b, t| {
            b.iter(|| render_routes(black_box(t), None))
        });
        // `?inactive_since=` in the past: every route is skipped, so this is the sort and scan
        // without the JSON
        group.bench_with_input(
            BenchmarkId::new("inactive_since_none_match", n),
            &t,
            |b, t| b.iter(|| render_routes(black_box(t), Some(0))),
        );
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
