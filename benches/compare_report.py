#!/usr/bin/env python3
"""Aggregate the raw results of benches/compare.sh into a markdown table.

Usage: compare_report.py WORKDIR OUT.md

WORKDIR holds records.jsonl (one line per measure and rep, pointing at hubgate-load JSON files)
and machine.env. Writes OUT.md and, next to it, OUT.json with every per-rep value.
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

TARGETS = ["direct", "hubgate", "hubgate-auth", "hubgate-2t", "nginx", "nginx-tuned", "chp"]
NAMES = {"direct": "direct", "hubgate": "hubgate", "hubgate-auth": "hubgate auth on",
         "hubgate-2t": "hubgate 2 threads", "nginx": "nginx", "nginx-tuned": "nginx tuned buffers",
         "chp": "CHP"}
present = [t for t in TARGETS if any(r["target"] == t for r in records)]
reps = sorted({r["rep"] for r in records})

# values[(metric, target)] = {rep: value}
values = {}


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


background = {}  # target -> list of background busy % of its measures
compilers_seen = 0
measures_total = 0
for r in records:
    if "data" in r:
        background.setdefault(r["target"], []).append(r["data"]["machine"]["background_busy_pct"])
        measures_total += 1
        if r.get("compilers", 0):
            compilers_seen += 1

for t in present:
    for rep in reps:
        small, big, c1, ws, c1same = (get(t, m, rep) for m in ("small", "big", "c1", "ws", "c1same"))
        peaks = []
        for name, rec in (("small", small), ("big", big)):
            if rec:
                d = rec["data"]
                put(f"{name}_rps", t, rep, d["rps"])
                put(f"{name}_p50", t, rep, d["latency_us"]["p50"])
                put(f"{name}_p99", t, rep, d["latency_us"]["p99"])
                put(f"{name}_cpu", t, rep, proxy_cpu_per_op(d))
                put(f"{name}_errors", t, rep, d["errors"])
        for rec in (small, big, ws):
            if rec and "proxy" in rec["data"].get("watch", {}):
                peaks.append(rec["data"]["watch"]["proxy"]["rss_peak_kib"])
        if peaks:
            put("rss_load", t, rep, max(peaks) / 1024)
        if c1:
            put("c1_p50", t, rep, c1["data"]["latency_us"]["p50"])
            put("c1_p99", t, rep, c1["data"]["latency_us"]["p99"])
            d1 = get("direct", "c1", rep)
            if t != "direct" and d1:
                put("c1_over", t, rep, c1["data"]["latency_us"]["p50"] - d1["data"]["latency_us"]["p50"])
        if c1same:
            put("c1same_p50", t, rep, c1same["data"]["latency_us"]["p50"])
            d1 = get("direct", "c1", rep)
            if d1:
                put("c1same_over", t, rep, c1same["data"]["latency_us"]["p50"] - d1["data"]["latency_us"]["p50"])
        if ws:
            d = ws["data"]
            put("ws_rps", t, rep, d["rps"])
            put("ws_p50", t, rep, d["latency_us"]["p50"])
            put("ws_p99", t, rep, d["latency_us"]["p99"])
            put("ws_cpu", t, rep, proxy_cpu_per_op(d))
            put("ws_errors", t, rep, d["errors"])
        idle = get(t, "rss_idle", rep)
        if idle:
            put("rss_idle", t, rep, idle["value_kib"] / 1024)
        for m in ("hold", "hold_tls", "hold_tls_up"):
            h = get(t, m, rep)
            if h:
                e = h["data"]["extra"]
                opened = max(1, e["opened"])
                put(f"{m}_per_ws", t, rep, (h["rss_with_kib"] - h["rss_idle_kib"]) / opened)
                put(f"{m}_with", t, rep, h["rss_with_kib"] / 1024)
                put(f"{m}_idle", t, rep, h["rss_idle_kib"] / 1024)
                put(f"{m}_failed", t, rep, e["failed"] + e["dropped_while_held"])
                put(f"{m}_open_s", t, rep, e["open_time_s"])


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
    return f"{x:.1f}"


def cell(metric, target, kind):
    v = values.get((metric, target))
    if not v:
        return "-"
    m = statistics.median(v.values())
    s = fmt(m, kind)
    if len(v) > 1:
        s += f" ({fmt(min(v.values()), kind)}–{fmt(max(v.values()), kind)})"
    return s


def ratio(metric, a, b):
    x, y = med(metric, a), med(metric, b)
    if x is None or y is None or y == 0:
        return "-"
    return f"{x / y:.2f}×"


# Ratio columns: hubgate against the others, and auth on against off (same binary, same run).
RATIOS = [(a, b) for a, b in (("hubgate", "nginx"), ("hubgate", "nginx-tuned"), ("hubgate", "chp"),
                               ("hubgate-auth", "hubgate"), ("hubgate-2t", "hubgate"))
          if a in present and b in present]
RATIO_NAMES = {("hubgate", "nginx"): "hubgate/nginx", ("hubgate", "nginx-tuned"): "hubgate/nginx tuned",
               ("hubgate", "chp"): "hubgate/CHP", ("hubgate-auth", "hubgate"): "auth on/off",
               ("hubgate-2t", "hubgate"): "2 threads/1"}


ws_n = env.get("ws_hold_n", "5000")
tls_n = env.get("ws_tls_n", "1000")
tls_up_n = env.get("ws_tls_up_n", "5000")
rows = [
    ("small (100 B) requests/s, c64", "small_rps", "int"),
    ("small p50 / p99 µs, c64", ("small_p50", "small_p99"), "int"),
    ("**proxy CPU µs per small request**", "small_cpu", "f1"),
    ("64 KiB requests/s, c64", "big_rps", "int"),
    ("64 KiB p50 / p99 µs, c64", ("big_p50", "big_p99"), "int"),
    ("**proxy CPU µs per 64 KiB request**", "big_cpu", "f1"),
    ("c1 p50 µs", "c1_p50", "f1"),
    ("**c1 p50 added latency vs direct µs**", "c1_over", "f1"),
    ("c1 p99 µs (noisy)", "c1_p99", "int"),
    ("c1 p50 µs, proxy moved onto the load core", "c1same_p50", "f1"),
    ("c1 p50 added latency vs direct µs, proxy on the load core", "c1same_over", "f1"),
    ("ws echo msgs/s (64 conns × 128 B)", "ws_rps", "int"),
    ("ws echo p50 / p99 µs", ("ws_p50", "ws_p99"), "int"),
    ("**proxy CPU µs per ws message**", "ws_cpu", "f1"),
    ("**RSS idle MiB**", "rss_idle", "f1"),
    ("**RSS peak under load MiB**", "rss_load", "f1"),
    (f"RSS with {ws_n} idle ws MiB (fresh process)", "hold_with", "f1"),
    (f"**RSS per idle websocket KiB ({ws_n}, plain)**", "hold_per_ws", "f1"),
    (f"time to open {ws_n} ws s ({env.get('hold_in_flight', '256')} in flight)", "hold_open_s", "f2"),
    (f"ws failed or dropped of {ws_n}", "hold_failed", "int"),
    (f"RSS with {tls_n} idle wss MiB (fresh process)", "hold_tls_with", "f1"),
    (f"**RSS per idle websocket KiB ({tls_n}, TLS)**", "hold_tls_per_ws", "f1"),
    (f"wss failed or dropped of {tls_n}", "hold_tls_failed", "int"),
    (f"RSS with {tls_up_n} idle ws to an https target MiB (fresh process)", "hold_tls_up_with", "f1"),
    (f"**RSS per idle websocket KiB ({tls_up_n}, https target)**", "hold_tls_up_per_ws", "f1"),
    (f"ws to an https target failed or dropped of {tls_up_n}", "hold_tls_up_failed", "int"),
]

lines = []
lines.append(f"# hubgate vs nginx vs CHP — {env.get('date', '')}")
lines.append("")
lines.append(
    f"Machine: {env.get('nproc')} CPUs ({env.get('cpu')}), {env.get('mem')}, kernel {env.get('kernel')}. "
    f"hubgate {env.get('hubgate')}; nginx {env.get('nginx')} (1 worker; nginx with its default proxy buffers, nginx tuned buffers with `proxy_buffer_size 16k; proxy_buffers 8 16k`); CHP {env.get('chp')} (node {env.get('node')})."
)
lines.append(
    f"Proxy pinned to core {env.get('proxy_cpu')}; load tool and echo backend (`hubgate-load`) on core {env.get('load_cpu')}. "
    f"REPS={env.get('reps')}, c64 runs {env.get('duration')} s, c1 {env.get('c1_duration')} s, ws echo {env.get('ws_duration')} s. "
    f"Cells: median (min–max over reps)."
)
bg_all = [x for v in background.values() for x in v]
if bg_all:
    lines.append(
        f"Quietness: load average {env.get('loadavg_start')} at start, {env.get('loadavg_end')} at end; "
        f"background CPU (machine busy minus proxy, load tool and backend) during the measures: "
        f"median {statistics.median(bg_all):.1f} %, max {max(bg_all):.1f} % of both cores; "
        f"compilers running at the start of {compilers_seen} of {measures_total} measures; "
        f"{env.get('quiet_wait_s', '0')} s spent waiting for quiet; run took {env.get('elapsed_s')} s."
    )
lines.append("")
hdr = "| metric | " + " | ".join([NAMES[t] for t in present] + [RATIO_NAMES[r] for r in RATIOS])
lines.append(hdr + " |")
lines.append("|---|" + "---:|" * (hdr.count("|") - 1))
for label, metric, kind in rows:
    cols = []
    if isinstance(metric, tuple):
        for t in present:
            a, b = (cell(m, t, kind) for m in metric)
            cols.append("-" if a == "-" else f"{fmt(med(metric[0], t), kind)} / {fmt(med(metric[1], t), kind)}")
        rat = [ratio(metric[0], a, b) for a, b in RATIOS]
    else:
        if all(cell(metric, t, kind) == "-" for t in present):
            continue
        cols = [cell(metric, t, kind) for t in present]
        rat = [ratio(metric, a, b) for a, b in RATIOS]
    lines.append(f"| {label} | " + " | ".join(cols + rat) + " |")

# targets
lines.append("")
lines.append('Targets (docs/performance.md, "Targets"; medians of this run):')
lines.append("")
lines.append("| target | goal | hubgate | met? |")
lines.append("|---|---|---:|:---:|")


def target_row(name, goal, metric, limit=None, vs=None, unit=""):
    h = med(metric, "hubgate")
    if h is None:
        return
    if vs is not None:
        ref = med(metric, vs)
        if ref is None:
            return
        ok = h <= ref
        lines.append(f"| {name} | ≤ {NAMES[vs]} ({ref:.1f}{unit}) | {h:.1f}{unit} ({h / ref:.2f}×) | {'yes' if ok else '**no**'} |")
    else:
        ok = h <= limit
        lines.append(f"| {name} | ≤ {limit:g}{unit} | {h:.1f}{unit} | {'yes' if ok else '**no**'} |")


target_row("proxy CPU per small request", "", "small_cpu", vs="nginx", unit=" µs")
target_row("proxy CPU per 64 KiB request", "", "big_cpu", vs="nginx", unit=" µs")
target_row("proxy CPU per 64 KiB request, nginx with tuned buffers", "", "big_cpu", vs="nginx-tuned", unit=" µs")
target_row("added latency c1 p50 vs direct", "", "c1_over", limit=25, unit=" µs")
target_row("(same, proxy on the load core: no cross-core wakeups)", "", "c1same_over", limit=25, unit=" µs")
target_row("proxy CPU per websocket message", "", "ws_cpu", vs="nginx", unit=" µs")
target_row("RSS idle", "", "rss_idle", limit=20, unit=" MiB")
target_row("RSS under load", "", "rss_load", limit=40, unit=" MiB")
target_row(f"RSS per idle websocket, plain ({ws_n})", "", "hold_per_ws", limit=6, unit=" KiB")
target_row(f"RSS per idle websocket, TLS ({tls_n})", "", "hold_tls_per_ws", limit=16, unit=" KiB")


def auth_row(name, metric, limit, unit):
    """hubgate-auth against hubgate (auth off) of the same run: ratio of the medians, and the
    spread of the per-rep ratios (the two run back to back in each rep)."""
    on, off = med(metric, "hubgate-auth"), med(metric, "hubgate")
    if on is None or off is None or off == 0:
        return
    r = on / off
    per_rep = values.get((metric, "hubgate-auth"), {})
    base = values.get((metric, "hubgate"), {})
    reps_r = [per_rep[k] / base[k] for k in per_rep if base.get(k)]
    spread = f"; per rep {min(reps_r):.2f}–{max(reps_r):.2f}×" if len(reps_r) > 1 else ""
    lines.append(
        f"| {name} | ≤ {limit:g}× auth off ({off:.1f}{unit}) | auth on {on:.1f}{unit} ({r:.2f}×{spread}) "
        f"| {'yes' if r <= limit else '**no**'} |"
    )


auth_row("auth on (cached token) vs auth off, CPU per small request", "small_cpu", 1.2, " µs")

# background per target
lines.append("")
lines.append(
    "Background CPU during each target's measures (median / max % of both cores): "
    + ", ".join(
        f"{NAMES[t]} {statistics.median(background[t]):.1f} / {max(background[t]):.1f}"
        for t in present
        if t in background
    )
    + "."
)
errs = []
for t in present:
    for m in ("small_errors", "big_errors", "ws_errors"):
        v = values.get((m, t))
        if v and any(v.values()):
            errs.append(f"{NAMES[t]} {m.split('_')[0]}: {sum(v.values())}")
if errs:
    lines.append("Errors during load runs: " + ", ".join(errs) + ".")
lines.append("")

with open(out, "w") as f:
    f.write("\n".join(lines))
raw = {
    "machine": env,
    "values": {f"{m}:{t}": v for (m, t), v in sorted(values.items())},
    "background_busy_pct": background,
}
with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(raw, f, indent=1, sort_keys=True)
    f.write("\n")
