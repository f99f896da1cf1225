//! Route lookup and path canonicalisation: the per-request work of the route table.
//!
//! `cargo bench --bench route_lookup`. The lookup must cost the same with 100,000 routes
//! as with 10 (a hash probe per path segment, no scan).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hubgate::canonical::canonicalize;
use hubgate::routes::{Route, RouteTable};

fn table(n: usize) -> RouteTable {
    let t = RouteTable::new();
    let mut data = serde_json::Map::new();
    data.insert("target".into(), "http://127.0.0.1:8081".into());
    t.insert(Arc::new(Route::new(Arc::from("/"), data.clone())));
    for i in 0..n {
        let mut d = data.clone();
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
        d.insert("user".into(), format!("user{i}").into());
        t.insert(Arc::new(Route::new(
            Arc::from(format!("/user/user{i}").as_str()),
            d,
        )));
    }
    t
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 10_000, 100_000] {
        let t = table(n);
        let shallow = "/user/user7/lab".to_string();
        let deep =
            "/user/user7/api/kernels/5f8e3c1a-0000-4000-8000-000000000000/channels/extra/depth"
                .to_string();
        let miss = "/hub/spawn-pending/someone/with/a/long/path".to_string();
        group.bench_with_input(BenchmarkId::new("shallow", n), &shallow, |b, p| {
            b.iter(|| t.lookup(black_box(p)))
        });
        group.bench_with_input(BenchmarkId::new("deep", n), &deep, |b, p| {
            b.iter(|| t.lookup(black_box(p)))
        });
        group.bench_with_input(BenchmarkId::new("to_root", n), &miss, |b, p| {
            b.iter(|| t.lookup(black_box(p)))
        });
    }
    group.finish();
}

fn canonical(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonicalize");
    for (name, path) in [
        ("plain", "/user/alice/api/kernels/5f8e3c1a/channels"),
        (
            "escaped",
            "/user/%E7%A7%80%E6%A8%B9/lab/tree/My%20Notebook.ipynb",
        ),
        ("dot_segments", "/user/bob/../alice/./lab/tree"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| canonicalize(black_box(path.as_bytes())))
        });
    }
    group.finish();
}

/// A route write (what the API does per POST and DELETE): insert a route, then remove it.
/// It copies part of the table (the readers keep the snapshot they loaded), so it may grow
/// with the table a little; route_table.sh's churn measures its effect on requests.
fn write(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_write");
    for n in [10usize, 10_000, 100_000] {
        let t = table(n);
        let mut data = serde_json::Map::new();
        data.insert("target".into(), "http://127.0.0.1:8081".into());
        let route = Arc::new(Route::new(Arc::from("/user/churn"), data));
        group.bench_function(BenchmarkId::new("insert_remove", n), |b| {
            b.iter(|| {
                t.insert(route.clone());
                t.remove(black_box("/user/churn"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, write, canonical);
criterion_main!(benches);
