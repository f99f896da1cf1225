#!/usr/bin/env python3
"""Aggregate the raw results of benches/route_table.sh into a markdown table.

Usage: route_table_report.py WORKDIR OUT.md

WORKDIR holds records.jsonl (one line per measure and rep; most point at hubgate-load JSON
files) and machine.env. Writes OUT.md and, next to it, OUT.json with every per-rep value.
Stdlib only.
"""
import json
import os
import statistics
import sys

work, out = sys.argv[1], sys.argv[2]

env = {}
for line in open(os.path.join(work, "machine.env")):
    if "=" in line:
        k, v = line.rstrip("\n").split("=", 1)
        env[k] = v

records = [json.loads(l) for l in open(os.path.join(work, "records.jsonl")) if l.strip()]
for r in records:
    if "json" in r:
        r["data"] = json.load(open(r["json"]))

TARGETS = ["hubgate", "chp"]
NAMES = {"hubgate": "hubgate", "chp": "CHP"}
present = [t for t in TARGETS if any(r["target"] == t for r in records)]
reps = sorted({r["rep"] for r in records})
n = int(env.get("n", "10000"))
n_big = int(env.get("n_big", "0"))

values = {}  # (metric, target) -> {rep: value}


def put(metric, target, rep, v):
    if v is not None:
        values.setdefault((metric, target), {})[rep] = v


def get(target, measure, rep):
    for r in records:
        if r["target"] == target and r["measure"] == measure and r["rep"] == rep:
            return r
    return None


def proxy_cpu_per_op(d):
    w = d.get("watch", {}).get("proxy")
    if not w or not d["requests"]:
        return None
    return w["cpu_us"] / d["requests"]


background = {}
compilers_seen = 0
measures_total = 0
for r in records:
    if "data" in r:
        background.setdefault(r["target"], []).append(r["data"]["machine"]["background_busy_pct"])
        measures_total += 1
        if r.get("compilers", 0):
            compilers_seen += 1

errors = []  # (target, rep, measure, count)
for t in present:
    for rep in reps:
        for m, suffix, count in (("rss", "", n), ("rss_big", "_big", n_big)):
            r = get(t, m, rep)
            if r:
                put(f"rss_before{suffix}", t, rep, r["before_kib"] / 1024)
                put(f"rss_after{suffix}", t, rep, r["after_kib"] / 1024)
                put(f"rss_per_route{suffix}", t, rep, (r["after_kib"] - r["before_kib"]) / max(1, r["n"]))
        for m in ("fill", "fill_same", "fill_big"):
            r = get(t, m, rep)
            if r:
                d = r["data"]
                put(f"{m}_s", t, rep, d["extra"]["total_s"])
                put(f"{m}_p50", t, rep, d["latency_us"]["p50"])
                put(f"{m}_p99", t, rep, d["latency_us"]["p99"])
                put(f"{m}_cpu", t, rep, proxy_cpu_per_op(d))
                put(f"{m}_done", t, rep, d["requests"] - d["errors"])
        for m in ("get", "get_big"):
            r = get(t, m, rep)
            if r:
                d = r["data"]
                put(f"{m}_p50", t, rep, d["latency_us"]["p50"] / 1000)
                put(f"{m}_max", t, rep, d["latency_us"]["max"] / 1000)
                put(f"{m}_kib", t, rep, d["bytes_read"] / max(1, d["requests"]) / 1024)
                cpu = proxy_cpu_per_op(d)
                put(f"{m}_cpu", t, rep, cpu / 1000 if cpu is not None else None)
        r = get(t, "fixed_rate", rep)
        if r:
            put("fixed_rate", t, rep, r["value"])
        # the closed loop once per rep; the fixed rate in PAIRS pairs per rep (values keyed
        # "rep.pair", so medians and spreads are over every pair of every rep)
        runs = [("closed", "closed", rep)] + [
            ("fixed", f"fixed_p{p}", f"{rep}.{p}") for p in range(1, int(env.get("pairs", "1")) + 1)
        ]
        for m, measure, key in runs:
            a, b = get(t, measure, rep), get(t, f"{measure}_churn", rep)
            for name, r in ((m, a), (f"{m}_churn", b)):
                if r:
                    d = r["data"]
                    put(f"{name}_rps", t, key, d["rps"])
                    put(f"{name}_p50", t, key, d["latency_us"]["p50"])
                    put(f"{name}_p99", t, key, d["latency_us"]["p99"])
                    put(f"{name}_cpu", t, key, proxy_cpu_per_op(d))
                    put(f"{name}_bg", t, key, d["machine"]["background_busy_pct"])
                    lag = d.get("extra", {}).get("send_lag_us")
                    if lag:
                        put(f"{name}_lag_p99", t, key, lag["p99"])
            if a and b:
                # paired on the same process, one right after the other: the ratio cancels drift
                put(f"{m}_p99_ratio", t, key, b["data"]["latency_us"]["p99"] / max(1e-9, a["data"]["latency_us"]["p99"]))
                put(f"{m}_p50_ratio", t, key, b["data"]["latency_us"]["p50"] / max(1e-9, a["data"]["latency_us"]["p50"]))
                put(f"{m}_rps_ratio", t, key, b["data"]["rps"] / max(1e-9, a["data"]["rps"]))
            c = get(t, f"churn_{measure}", rep)
            if c:
                d = c["data"]
                put(f"churn_{m}_rate", t, key, d["rps"])
                put(f"churn_{m}_p50", t, key, d["latency_us"]["p50"])
                put(f"churn_{m}_p99", t, key, d["latency_us"]["p99"])
                put(f"churn_{m}_cpu", t, key, proxy_cpu_per_op(d))
        for r in records:
            if r["target"] == t and r["rep"] == rep and "data" in r and r["data"]["errors"]:
                errors.append((t, rep, r["measure"], r["data"]["errors"]))


def med(metric, target):
    v = values.get((metric, target))
    return statistics.median(v.values()) if v else None


def fmt(x, kind):
    if x is None:
        return "-"
    if kind == "int":
        return f"{x:,.0f}"
    if kind == "f2":
        return f"{x:.2f}"
    if kind == "f3":
        return f"{x:.3f}"
    if kind == "x":
        return f"{x:.2f}×"
    return f"{x:.1f}"


def cell(metric, target, kind):
    v = values.get((metric, target))
    if not v:
        return "-"
    s = fmt(statistics.median(v.values()), kind)
    if len(v) > 1:
        s += f" ({fmt(min(v.values()), kind)}–{fmt(max(v.values()), kind)})"
    return s


def ratio(metric, a="hubgate", b="chp"):
    x, y = med(metric, a), med(metric, b)
    if x is None or y is None or y == 0:
        return "-"
    return f"{x / y:.2f}×"


rows = [
    ("RSS idle, 1 route MiB", "rss_before", "f1", True),
    (f"RSS with {n:,} routes MiB", "rss_after", "f1", True),
    (f"**RSS per route KiB** ({n:,} routes)", "rss_per_route", "f2", True),
    (f"**GET /api/routes, {n + 1:,} routes: median ms**", "get_p50", "f2", True),
    (f"GET /api/routes, slowest of {env.get('gets', '20')} ms", "get_max", "f2", True),
    ("GET /api/routes body KiB", "get_kib", "int", True),
    ("proxy CPU ms per GET", "get_cpu", "f2", True),
    (f"**{n:,} POSTs over one connection s**", "fill_s", "f2", True),
    ("POST p50 / p99 µs", ("fill_p50", "fill_p99"), "int", True),
    ("proxy CPU µs per POST", "fill_cpu", "f1", True),
    (f"{n:,} POSTs, proxy on the load core s", "fill_same_s", "f2", True),
    ("POST p50 µs, proxy on the load core", "fill_same_p50", "int", True),
    (f"closed loop c{env.get('connections', '64')}: requests/s", "closed_rps", "int", True),
    ("closed loop p50 / p99 µs", ("closed_p50", "closed_p99"), "int", True),
    ("closed loop + churn: requests/s", "closed_churn_rps", "int", True),
    ("closed loop + churn p50 / p99 µs", ("closed_churn_p50", "closed_churn_p99"), "int", True),
    ("closed loop: p99 with churn ÷ without (paired per rep)", "closed_p99_ratio", "f2", False),
    ("closed loop: requests/s with churn ÷ without", "closed_rps_ratio", "f2", False),
    (f"fixed rate ({env.get('rate_fraction', '0.4')} × closed-loop rps, ≤ {env.get('rate_cap', '-')}) req/s", "fixed_rate", "int", True),
    ("fixed rate p50 / p99 µs (from intended send time)", ("fixed_p50", "fixed_p99"), "int", True),
    ("fixed rate + churn p50 / p99 µs", ("fixed_churn_p50", "fixed_churn_p99"), "int", True),
    (f"**fixed rate: p99 with churn ÷ without** ({env.get('pairs', '1')} pairs per rep)", "fixed_p99_ratio", "f2", False),
    ("fixed rate: p50 with churn ÷ without", "fixed_p50_ratio", "f2", False),
    ("fixed rate: load tool's send lag p99 µs, without / with churn", ("fixed_lag_p99", "fixed_churn_lag_p99"), "int", False),
    ("fixed rate: background CPU %, without / with churn", ("fixed_bg", "fixed_churn_bg"), "f1", False),
    (f"churn achieved writes/s (asked {env.get('churn_rate', '1000')}), during fixed rate", "churn_fixed_rate", "int", True),
    ("churn write p50 / p99 µs (from intended send), during fixed rate", ("churn_fixed_p50", "churn_fixed_p99"), "int", True),
    ("churn write p50 / p99 µs, during closed loop", ("churn_closed_p50", "churn_closed_p99"), "int", True),
]
if n_big:
    rows += [
        (f"RSS with {n_big:,} routes MiB (fresh process)", "rss_after_big", "f1", True),
        (f"**RSS per route KiB** ({n_big:,} routes)", "rss_per_route_big", "f2", True),
        (f"{n_big:,} POSTs over one connection s", "fill_big_s", "f2", True),
        (f"POST p50 / p99 µs (filling to {n_big:,})", ("fill_big_p50", "fill_big_p99"), "int", True),
        (f"GET /api/routes, {n_big + 1:,} routes: median ms", "get_big_p50", "f2", True),
        (f"GET /api/routes body KiB ({n_big + 1:,} routes)", "get_big_kib", "int", True),
    ]

lines = []
lines.append(f"# Route table and REST API: hubgate vs CHP — {env.get('date', '')}")
lines.append("")
lines.append(
    f"Machine: {env.get('nproc')} CPUs ({env.get('cpu')}), {env.get('mem')}, kernel {env.get('kernel')}. "
    f"hubgate {env.get('hubgate')} (MIMALLOC_ALLOW_THP={env.get('mimalloc_allow_thp')}); "
    f"CHP {env.get('chp')} (node {env.get('node')})."
)
lines.append(
    f"Proxy pinned to core {env.get('proxy_cpu')}; load tools and echo backend (`hubgate-load`) on core "
    f"{env.get('load_cpu')}. REPS={env.get('reps')}, N={n:,} routes, proxied runs {env.get('duration')} s "
    f"with {env.get('connections')} connections, churn {env.get('churn_rate')} route writes/s over "
    f"{env.get('churn_conns')} connections. Cells: median (min–max over reps)."
)
bg_all = [x for v in background.values() for x in v]
if bg_all:
    lines.append(
        f"Quietness: load average {env.get('loadavg_start')} at start, {env.get('loadavg_end')} at end; "
        f"background CPU (machine busy minus proxy, load tools and backend) during the measures: "
        f"median {statistics.median(bg_all):.1f} %, max {max(bg_all):.1f} % of both cores; "
        f"compilers running at the start of {compilers_seen} of {measures_total} measures; "
        f"{env.get('quiet_wait_s', '0')} s spent waiting for quiet; run took {env.get('elapsed_s')} s."
    )
lines.append("")
two = "hubgate" in present and "chp" in present
hdr = "| measure | " + " | ".join(NAMES[t] for t in present) + (" | hubgate/CHP" if two else "") + " |"
lines.append(hdr)
lines.append("|---|" + "---:|" * (hdr.count("|") - 2))
for label, metric, kind, with_ratio in rows:
    if isinstance(metric, tuple):
        cols = []
        for t in present:
            a, b = med(metric[0], t), med(metric[1], t)
            cols.append("-" if a is None else f"{fmt(a, kind)} / {fmt(b, kind)}")
        if all(c == "-" for c in cols):
            continue
        rat = [ratio(metric[1]) if with_ratio else "-"] if two else []
    else:
        cols = [cell(metric, t, kind) for t in present]
        if all(c == "-" for c in cols):
            continue
        rat = [ratio(metric) if with_ratio else "-"] if two else []
    lines.append(f"| {label} | " + " | ".join(cols + rat) + " |")
if two:
    lines.append("")
    lines.append("(For a pair \"p50 / p99\" the ratio is of the p99.)")

# targets
lines.append("")
lines.append('Targets (docs/performance.md, "Targets"; medians of this run):')
lines.append("")
lines.append("| target | goal | hubgate | CHP | met? |")
lines.append("|---|---|---:|---:|:---:|")


def target_row(name, goal, metric, limit, kind, unit):
    h = med(metric, "hubgate")
    if h is None:
        return
    c = med(metric, "chp")
    ok = "yes" if h <= limit else "**no**"
    lines.append(f"| {name} | {goal} | {fmt(h, kind)}{unit} | {fmt(c, kind) + unit if c is not None else '-'} | {ok} |")


target_row("RSS per route", "≤ 0.5 KiB", "rss_per_route", 0.5, "f2", " KiB")
target_row(f"GET /api/routes with {n:,} routes (median)", "≤ 5 ms", "get_p50", 5.0, "f2", " ms")
target_row(f"GET /api/routes with {n:,} routes (slowest of {env.get('gets', '20')})", "≤ 5 ms", "get_max", 5.0, "f2", " ms")
target_row(f"{n:,} route POSTs over one keep-alive connection", "≤ 1 s", "fill_s", 1.0, "f2", " s")
target_row(f"(same, proxy on the load core: no cross-core wake-ups)", "≤ 1 s", "fill_same_s", 1.0, "f2", " s")
target_row(f"p99 at a fixed rate while {env.get('churn_rate')} route writes/s arrive", "≤ 1.10 × without",
           "fixed_p99_ratio", 1.10, "f2", "×")
target_row(f"p99 closed loop (saturated) while {env.get('churn_rate')} route writes/s arrive",
           "≤ 1.10 × without", "closed_p99_ratio", 1.10, "f2", "×")
lines.append("")
lines.append(
    "Background CPU during each proxy's measures (median / max % of both cores): "
    + ", ".join(
        f"{NAMES[t]} {statistics.median(background[t]):.1f} / {max(background[t]):.1f}"
        for t in present
        if t in background
    )
    + "."
)
if errors:
    lines.append(
        "Errors (failed requests or unexpected statuses): "
        + ", ".join(f"{NAMES[t]} rep {rep} {m}: {c}" for t, rep, m, c in errors)
        + "."
    )
else:
    lines.append("No errors in any measure.")
lines.append("")

with open(out, "w") as f:
    f.write("\n".join(lines))
raw = {
    "machine": env,
    "values": {f"{m}:{t}": v for (m, t), v in sorted(values.items())},
    "background_busy_pct": background,
    "errors": errors,
}
with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(raw, f, indent=1, sort_keys=True)
    f.write("\n")
