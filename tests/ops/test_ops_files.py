"""Static checks of the operator files: docker-compose.yml, Prometheus scrape config and alert
rules, the Grafana dashboard and provisioning, the systemd unit.

They parse, they agree with each other (ports, service names, mounted paths, the metrics
hubgate exports), and the alert rules fire on what they describe. Needs only PyYAML; the
checks that need `promtool` or `systemd-analyze` skip when those are not installed
(promtool is looked for in $PROMTOOL, on PATH, then in .tools/bin/). Nothing here starts
hubgate: that the metrics below really appear on /metrics is tested with the binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE = ROOT / "docker-compose.yml"
PROM_CONFIG = ROOT / "config/prometheus/prometheus.yml"
ALERTS = ROOT / "config/prometheus/alerts.yml"
ALERTS_TEST = HERE / "alerts_test.yml"
DASHBOARD = ROOT / "config/grafana/hubgate-dashboard.json"
GRAFANA_DATASOURCES = ROOT / "config/grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DASHBOARDS = ROOT / "config/grafana/provisioning/dashboards/hubgate.yml"
UNIT = ROOT / "config/systemd/hubgate.service"
ENV_EXAMPLE = ROOT / "config/systemd/hubgate.env.example"
OPS_README = ROOT / "README.md"  # the Operations section

# ---------------------------------------------------------------- the metrics hubgate exports
# CHP's names (kept) and hubgate's own; see src/metrics.rs, and src/routes/ for the route
# store's (hubgate_store_up from every store, the other hubgate_store_* from Redis only).
COUNTERS = {
    "api_route_get",
    "api_route_add",
    "api_route_delete",
    "requests_ws",
    "requests_web",
    "requests_proxy",
    "requests_api",
    "hubgate_upstream_errors_total",
    "hubgate_websocket_frames_total",
    "hubgate_websocket_bytes_total",
    "hubgate_auth_decisions_total",
    "hubgate_auth_key_refresh_failures_total",
    "hubgate_auth_revocations_total",
    "hubgate_auth_revocations_refused_total",
    "hubgate_auth_revocations_expired_total",
    "hubgate_auth_websockets_closed_revoked_total",
    "hubgate_auth_hub_grants_decisions_total",
    "hubgate_auth_hub_grants_fetch_failures_total",
    "hubgate_store_resyncs_total",
    "hubgate_store_changes_applied_total",
    "hubgate_store_write_errors_total",
    "hubgate_store_master_changes_total",
    "process_cpu_seconds_total",
}
GAUGES = {
    "hubgate_connections_open",
    "hubgate_websockets_open",
    "hubgate_routes",
    "hubgate_auth_key_set_age_seconds",
    "hubgate_auth_revocations",
    "hubgate_auth_hub_grants_age_seconds",
    "hubgate_auth_hub_grants_owners",
    "hubgate_build_info",
    "hubgate_store_up",
    "hubgate_store_lag_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
}
# Summaries without quantiles: only _sum and _count series exist.
SUMMARIES = {"find_target_for_req", "last_activity_updating"}
HISTOGRAMS = {
    "hubgate_request_duration_seconds",
    "hubgate_api_request_duration_seconds",
    "hubgate_store_propagation_seconds",
}
# Series that Prometheus itself makes.
SYNTHETIC = {"up"}

KNOWN_SERIES = (
    COUNTERS
    | GAUGES
    | SYNTHETIC
    | {f"{s}_{suffix}" for s in SUMMARIES for suffix in ("sum", "count")}
    | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)

# Labels each metric may carry besides job and instance (low cardinality: no user, no path).
LABELS = {
    "requests_proxy": {"status"},
    "requests_api": {"status"},
    "hubgate_request_duration_seconds": {"route_kind", "status_class", "le"},
    "hubgate_upstream_errors_total": {"kind"},
    "hubgate_websocket_frames_total": {"direction"},
    "hubgate_websocket_bytes_total": {"direction"},
    "hubgate_api_request_duration_seconds": {"method", "le"},
    "hubgate_auth_decisions_total": {"result", "reason"},
    "hubgate_auth_key_set_age_seconds": {"issuer"},
    "hubgate_auth_key_refresh_failures_total": {"issuer"},
    "hubgate_auth_revocations_total": {"kind", "source"},
    "hubgate_auth_hub_grants_decisions_total": {"grant"},
    "hubgate_auth_hub_grants_fetch_failures_total": {"what"},
    "hubgate_build_info": {"version"},
    "hubgate_store_up": {"backend"},
}
LABEL_VALUES = {
    "route_kind": {"hub", "user", "service", "other"},
    "status_class": {"1xx", "2xx", "3xx", "4xx", "5xx"},
    "kind": {"refused", "timeout", "reset", "tls", "dns", "other"},
    "direction": {"client_to_server", "server_to_client"},
    "result": {"allow", "deny"},
    "method": {"GET", "POST", "DELETE", "other"},
    "backend": {"memory", "redis"},
    "grant": {"share", "role", "none", "unavailable", "owner_cap"},
    "what": {"directory", "shares"},
    # allow reasons, then deny reasons (src/auth/mod.rs)
    "reason": {
        "public", "authenticated", "owner", "admin", "group", "shared", "role",
        "missing_credential", "multiple_credentials", "malformed", "too_large",
        "unknown_issuer", "unknown_key", "bad_signature", "bad_algorithm", "expired",
        "not_yet_valid", "issued_in_future", "wrong_audience", "wrong_issuer",
        "missing_claim", "mfa_required", "auth_too_old", "no_username", "keys_unavailable",
        "not_owner", "grants_unavailable", "not_in_group", "origin_mismatch", "bad_session",
        "revoked", "session_too_large", "bad_path",
    },
}  # fmt: skip

# ---------------------------------------------------------------- PromQL metric names

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def _strip_promql(expr: str) -> str:
    """The expression with strings, label matchers, ranges and grouping clauses removed."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", "", expr)
    expr = re.sub(r"\[[^\[\]]*\]", "", expr)
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", expr
    )
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers that are not functions,
    keywords, numbers, durations or Grafana variables)."""
    names = set()
    bare = _strip_promql(expr)
    for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare):
        word = m.group(1)
        if word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    # {__name__="x"} selectors
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) for every `metric{...}` selector with = matchers."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}", expr):
        matchers = dict(re.findall(r'([a-zA-Z_]\w*)\s*=~?\s*"([^"]*)"', m.group(2)))
        out.append((m.group(1), matchers))
    return out


def base_metric(series: str) -> str:
    for h in HISTOGRAMS | SUMMARIES:
        if series.startswith(h + "_"):
            return h
    return series


def test_every_denial_reason_hubgate_exports_is_a_known_label_value():
    # The deny reasons are the `reason` label of the auth metrics; a new one missing here would
    # let a dashboard or alert filter on a misspelt value pass the label check below.
    exported = set(re.findall(r'=> "([a-z_]+)"', (ROOT / "src/auth/reason.rs").read_text()))
    assert exported, "no reasons found in src/auth/reason.rs (has its form changed?)"
    missing = exported - LABEL_VALUES["reason"]
    assert not missing, f"reasons exported but not in LABEL_VALUES: {sorted(missing)}"


def test_metric_name_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (le, route_kind) (rate(hubgate_request_duration_seconds_bucket'
        '{job=~"$job",instance=~"$instance",status_class="5xx"}[$__rate_interval]))) '
        "/ on (job) group_left(version) hubgate_build_info offset 1h > 1e3 * 2 "
        'and up{job="hubgate"} == 0 unless absent(process_open_fds)'
    )
    assert metric_names(expr) == {
        "hubgate_request_duration_seconds_bucket",
        "hubgate_build_info",
        "up",
        "process_open_fds",
    }
    assert metric_names('label_values(hubgate_build_info{job=~"$job"}, instance)') == {
        "hubgate_build_info",
        "instance",
    }


# ---------------------------------------------------------------- loaders


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose():
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def prom():
    return load_yaml(PROM_CONFIG)


@pytest.fixture(scope="module")
def alerts():
    return load_yaml(ALERTS)


@pytest.fixture(scope="module")
def dashboard():
    with DASHBOARD.open() as f:
        return json.load(f)


def alert_rules(alerts_doc) -> list[dict]:
    return [r for g in alerts_doc["groups"] for r in g["rules"] if "alert" in r]


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_queries(dash) -> list[str]:
    out = []
    for p in walk_panels(dash["panels"]):
        out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append(q)
    return out


def promql_from_grafana(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", "hubgate")
        .replace("$instance", ".*")
    )


def compose_command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host source, container target) of the service's bind mounts."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
            continue
        parts = v.split(":")
        if parts[0].startswith((".", "/", "~")):
            out.append((parts[0], parts[1]))
    return out


def named_volumes(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "volume":
                out.append(v["source"])
        elif ":" in v and not v.split(":")[0].startswith((".", "/", "~")):
            out.append(v.split(":")[0])
    return out


def listen_ports(compose_doc) -> dict[str, set[int]]:
    """The ports each compose service listens on inside the compose network."""
    hubgate = compose_command(compose_doc["services"]["hubgate"])
    ports = {
        "hubgate": {
            int(flag_value(hubgate, f) or 0) for f in ("--port", "--api-port", "--metrics-port")
        }
        - {0},
        # JupyterHub's hub_port default; config/jupyterhub_compose_config.py does not change it.
        "jupyterhub": {8081},
        "prometheus": {9090},  # --web.listen-address default
        "grafana": {3000},  # [server] http_port default
    }
    prom_listen = flag_value(compose_command(compose_doc["services"]["prometheus"]), "--web.listen-address")
    if prom_listen:
        ports["prometheus"] = {int(prom_listen.rsplit(":", 1)[1])}
    return ports


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_parses_with_expected_services(compose):
    assert set(compose["services"]) >= {"hubgate", "jupyterhub", "prometheus", "grafana"}
    for name, svc in compose["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        for dep in svc.get("depends_on", []):
            assert dep in compose["services"], f"{name} depends on unknown service {dep}"


def test_compose_bind_mounts_exist_in_repo(compose):
    declared = set(compose.get("volumes") or {})
    seen = 0
    for name, svc in compose["services"].items():
        for source, target in bind_mounts(svc):
            seen += 1
            assert not source.startswith(("/", "~")), f"{name}: {source} is outside the repo"
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repo"
            assert path.exists(), f"{name}: bind mount {source} does not exist"
            assert target.startswith("/"), f"{name}: mount target {target} is not absolute"
        for vol in named_volumes(svc):
            assert vol in declared, f"{name}: volume {vol} not declared under top-level volumes"
    assert seen >= 6


def test_compose_build_contexts_exist(compose):
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (ROOT / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


HOST_PORT = re.compile(r"(?:^|[/=@\s\"'])([a-z][a-z0-9_.-]*):(\d{2,5})\b")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0"}


def _service_references(texts) -> set[tuple[str, int]]:
    refs = set()
    for text in texts:
        for host, port in HOST_PORT.findall(text):
            if host not in LOCAL_HOSTS:
                refs.add((host, int(port)))
    return refs


def test_compose_service_references_resolve(compose, prom):
    """host:port in commands, environment, healthchecks and in the files compose mounts name
    a compose service and a port it listens on."""
    texts = []
    for svc in compose["services"].values():
        for key in ("command", "environment", "healthcheck", "entrypoint"):
            texts.extend(_strings(svc.get(key)))
        for source, _ in bind_mounts(svc):
            path = ROOT / source
            if path.is_file():
                texts.extend(
                    line for line in path.read_text().splitlines()
                    if not line.lstrip().startswith("#")
                )  # fmt: skip
    refs = _service_references(texts)
    ports = listen_ports(compose)
    for host, port in refs:
        assert host in compose["services"], f"{host}:{port} is not a compose service"
        assert port in ports[host], f"{host}:{port}: {host} listens on {sorted(ports[host])}"
    # the references that wire the stack together are there
    assert ("jupyterhub", 8081) in refs
    assert ("hubgate", 8001) in refs  # the hub's api_url
    assert ("prometheus", 9090) in refs  # Grafana's datasource
    assert any(h == "hubgate" for h, _ in _service_references(_strings(prom)))


def test_prometheus_scrapes_hubgate_metrics_port(compose, prom):
    args = compose_command(compose["services"]["hubgate"])
    metrics_port = flag_value(args, "--metrics-port")
    assert metrics_port, "hubgate's compose command has no --metrics-port"
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    targets = [t for sc in jobs["hubgate"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"hubgate:{metrics_port}"]
    assert jobs["hubgate"].get("metrics_path", "/metrics") == "/metrics"


def test_compose_binds_metrics_to_all_interfaces_only_with_a_reason(compose):
    args = compose_command(compose["services"]["hubgate"])
    assert flag_value(args, "--metrics-ip") == "0.0.0.0"
    text = COMPOSE.read_text()
    line = next(i for i, s in enumerate(text.splitlines()) if "--metrics-ip=0.0.0.0" in s)
    comment = " ".join(
        s for s in text.splitlines()[max(0, line - 6) : line] if s.strip().startswith("#")
    )
    assert "loopback" in comment and "default" in comment, "say why metrics bind 0.0.0.0 here"
    # Outside compose the default stays loopback: no other operator file widens it.
    for path in (UNIT, ENV_EXAMPLE):
        body = [s for s in path.read_text().splitlines() if not s.lstrip().startswith("#")]
        assert not any("--metrics-ip" in s or "0.0.0.0" in s for s in body), path
    example = tomllib.loads((ROOT / "config/hubgate.example.toml").read_text())
    assert example.get("metrics", {}).get("ip", "127.0.0.1") == "127.0.0.1"


def test_compose_publishes_monitoring_on_loopback_only(compose):
    public = {}
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            p = str(p)
            if not p.startswith("127.0.0.1:"):
                public.setdefault(name, []).append(p)
    assert public == {"hubgate": ["8000:8000"]}, public


def test_compose_mounts_match_prometheus_and_grafana_paths(compose, prom):
    prom_svc = compose["services"]["prometheus"]
    prom_mounts = {ROOT.joinpath(s).resolve(): t for s, t in bind_mounts(prom_svc)}
    config_file = flag_value(compose_command(prom_svc), "--config.file")
    assert prom_mounts[PROM_CONFIG.resolve()] == config_file
    for rule_file in prom["rule_files"]:
        assert rule_file in prom_mounts.values(), f"{rule_file} is not mounted into prometheus"
    assert prom_mounts[ALERTS.resolve()] in prom["rule_files"]

    graf_mounts = {
        ROOT.joinpath(s).resolve(): t for s, t in bind_mounts(compose["services"]["grafana"])
    }
    assert graf_mounts[GRAFANA_DATASOURCES.resolve()].startswith(
        "/etc/grafana/provisioning/datasources/"
    )
    assert graf_mounts[GRAFANA_DASHBOARDS.resolve()].startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    provider_paths = [p["options"]["path"] for p in load_yaml(GRAFANA_DASHBOARDS)["providers"]]
    dash_target = graf_mounts[DASHBOARD.resolve()]
    assert any(dash_target.startswith(p.rstrip("/") + "/") for p in provider_paths)
    home = compose["services"]["grafana"].get("environment", {}).get(
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    )
    assert home in (None, dash_target)


def test_grafana_provisioning_files(prom):
    ds = load_yaml(GRAFANA_DATASOURCES)
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    # $__rate_interval is derived from this: keep it equal to the scrape interval.
    assert source["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]
    prov = load_yaml(GRAFANA_DASHBOARDS)
    assert prov["apiVersion"] == 1
    assert all(p["type"] == "file" for p in prov["providers"])


# ---------------------------------------------------------------- Prometheus


def test_prometheus_config(prom):
    names = [j["job_name"] for j in prom["scrape_configs"]]
    assert len(names) == len(set(names))
    assert "hubgate" in names
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_are_complete(alerts):
    rules = alert_rules(alerts)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in rules:
        assert r.get("expr"), r["alert"]
        assert re.fullmatch(r"\d+[smh]", str(r.get("for", ""))), f"{r['alert']}: no `for`"
        assert r.get("labels", {}).get("severity") in {"critical", "warning", "info"}
        ann = r.get("annotations", {})
        assert len(ann.get("summary", "")) > 20, f"{r['alert']}: summary"
        assert len(ann.get("description", "")) > 80, f"{r['alert']}: description says what to do"
        assert 'job="hubgate"' in r["expr"], f"{r['alert']}: select the hubgate job"
    by_name = {r["alert"]: r for r in rules}

    down = by_name["HubgateDown"]
    assert re.sub(r"\s+", "", down["expr"]) == 'up{job="hubgate"}==0'
    assert down["for"] == "2m"
    stale = by_name["HubgateAuthKeySetStale"]
    assert "hubgate_auth_key_set_age_seconds" in stale["expr"] and "> 3600" in stale["expr"]
    assert stale["for"] == "10m"
    ratio = by_name["HubgateHigh5xxRatio"]
    assert 'status_class="5xx"' in ratio["expr"] and "> 0.05" in ratio["expr"]
    assert ratio["for"] == "10m"
    assert "hubgate_upstream_errors_total" in by_name["HubgateUpstreamErrors"]["expr"]
    assert "hubgate_auth_key_refresh_failures_total" in by_name["HubgateAuthKeyRefreshFailing"]["expr"]
    assert 'reason="keys_unavailable"' in by_name["HubgateAuthKeysUnavailable"]["expr"]
    assert 'reason="mfa_required"' in by_name["HubgateAuthMfaRequiredSpike"]["expr"]
    assert "process_resident_memory_bytes" in by_name["HubgateMemoryGrowth"]["expr"]
    store = by_name["HubgateStoreDown"]
    assert re.sub(r"\s+", "", store["expr"]) == 'hubgate_store_up{job="hubgate"}==0'
    assert store["for"] == "2m"


def test_alert_expressions_use_exported_metrics(alerts):
    for r in alert_rules(alerts):
        unknown = metric_names(r["expr"]) - KNOWN_SERIES
        assert not unknown, f"{r['alert']}: unknown metrics {unknown}"
        _check_labels(r["expr"], r["alert"])


def _check_labels(expr: str, where: str):
    for metric, matchers in selectors(expr):
        base = base_metric(metric)
        allowed = LABELS.get(base, set()) | {"job", "instance"}
        for label, value in matchers.items():
            assert label in allowed, f"{where}: {metric} has no label {label}"
            if label in LABEL_VALUES and not value.startswith("$"):
                for v in value.split("|"):
                    assert v in LABEL_VALUES[label], f"{where}: {label}={v} never exported"


def test_alerts_are_documented(alerts):
    text = OPS_README.read_text()
    for r in alert_rules(alerts):
        assert f"**{r['alert']}**" in text, f"{r['alert']} is not explained in {OPS_README.name}"


# ---------------------------------------------------------------- Grafana dashboard


def test_dashboard_structure(dashboard):
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "hubgate" and dashboard["title"] == "hubgate"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query"
    assert inst["datasource"]["uid"] == "${datasource}"
    # "All" must expand to the hubgate instances, not to ".*" (that would pull in the
    # process metrics of every other job).
    assert "allValue" not in inst or not inst["allValue"]

    panels = list(walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: filter by $instance"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_layout_has_no_overlaps(dashboard):
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_queries_use_exported_metrics(dashboard):
    used = set()
    for q in dashboard_queries(dashboard):
        if q.startswith("label_values("):
            q = q[len("label_values(") :].rsplit(",", 1)[0]
        names = metric_names(q)
        unknown = names - KNOWN_SERIES
        assert not unknown, f"unknown metrics {unknown} in {q}"
        _check_labels(q, q)
        used |= {base_metric(n) for n in names}
    # every metric hubgate exports is on the dashboard
    exported = COUNTERS | GAUGES | SUMMARIES | HISTOGRAMS
    assert exported - used == set()


def _panel(dashboard, title_start):
    matches = [p for p in walk_panels(dashboard["panels"]) if p["title"].startswith(title_start)]
    assert len(matches) == 1, title_start
    return matches[0]


def test_dashboard_key_age_panel_has_threshold_line(dashboard):
    p = _panel(dashboard, "Key-set age")
    defaults = p["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "line+area", "dashed")
    assert 3600 in [s["value"] for s in defaults["thresholds"]["steps"]]
    assert "by (issuer)" in p["targets"][0]["expr"]


def test_dashboard_deny_reasons_stacked(dashboard):
    p = _panel(dashboard, "Auth denials by reason")
    assert p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert 'result="deny"' in p["targets"][0]["expr"] and "by (reason)" in p["targets"][0]["expr"]


def test_dashboard_latency_quantiles(dashboard):
    p = _panel(dashboard, "Request latency")
    exprs = " ".join(t["expr"] for t in p["targets"])
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}," in exprs
    assert "hubgate_request_duration_seconds_bucket" in exprs


# ---------------------------------------------------------------- promtool (optional)


def _promtool() -> str | None:
    """$PROMTOOL, else promtool on PATH, else .tools/bin/promtool (where setup may put it)."""
    local = ROOT / ".tools/bin/promtool"
    return (
        os.environ.get("PROMTOOL")
        or shutil.which("promtool")
        or (str(local) if os.access(local, os.X_OK) else None)
    )


needs_promtool = pytest.mark.skipif(
    _promtool() is None,
    reason="promtool not installed (Debian package prometheus; or set PROMTOOL=/path/to/promtool)",
)


def _run(args, cwd=None):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config(tmp_path, prom):
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    local = dict(prom, rule_files=[str(tmp_path / "alerts.yml")])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    rc, out = _run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")])
    assert rc == 0, out


@needs_promtool
def test_promtool_check_rules():
    rc, out = _run([_promtool(), "check", "rules", str(ALERTS)])
    assert rc == 0, out


@needs_promtool
def test_promtool_parses_dashboard_queries(tmp_path, dashboard):
    rules = []
    for p in walk_panels(dashboard["panels"]):
        for t in p.get("targets", []):
            rules.append(
                {"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": promql_from_grafana(t["expr"])}
            )
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    rc, out = _run([_promtool(), "check", "rules", str(path)])
    assert rc == 0, out


@needs_promtool
def test_promtool_alert_unit_tests(tmp_path, alerts):
    # promtool compares annotation text exactly; the firing logic is what is tested here.
    stripped = json.loads(json.dumps(alerts))
    for g in stripped["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(stripped, sort_keys=False))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    tested = {
        case["alertname"]
        for group in load_yaml(ALERTS_TEST)["tests"]
        for case in group.get("alert_rule_test", [])
    }
    assert tested == {r["alert"] for r in alert_rules(alerts)}, "every alert has a unit test"
    rc, out = _run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert rc == 0, out


# ---------------------------------------------------------------- systemd


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists (keys may repeat, so not
    configparser)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"key outside a section: {raw}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {raw}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(sections, section, key) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def test_systemd_unit_keys():
    unit = parse_unit(UNIT)
    assert set(unit) == {"Unit", "Service", "Install"}

    def one(key):
        values = unit_values(unit, "Service", key)
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "simple"
    assert one("ExecStart") == "/usr/local/bin/hubgate --config /etc/hubgate/hubgate.toml"
    assert one("EnvironmentFile") == "/etc/hubgate/hubgate.env"
    reload_cmds = unit_values(unit, "Service", "ExecReload")
    assert reload_cmds[-1] == "/bin/kill -HUP $MAINPID"
    assert one("KillSignal") == "SIGTERM"
    # above the default drain period, server.shutdown-grace-seconds = 10
    assert int(one("TimeoutStopSec")) > 10
    assert one("Restart") == "on-failure"
    assert int(one("LimitNOFILE")) >= 65536
    if unit_values(unit, "Service", "DynamicUser"):
        assert one("DynamicUser") == "yes"
    else:
        assert one("User") not in ("", "root", "0")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert unit_values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_systemd_env_example():
    lines = [
        s for s in ENV_EXAMPLE.read_text().splitlines() if s.strip() and not s.startswith("#")
    ]
    keys = [s.split("=", 1)[0] for s in lines]
    assert keys == ["CONFIGPROXY_AUTH_TOKEN"]
    assert not any(s.startswith("export ") for s in lines)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's binary exists: point it at a stand-in.
    stub = tmp_path / "hubgate"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "hubgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hubgate", str(stub)))
    rc, out = _run(["systemd-analyze", "verify", "--man=no", str(unit)], cwd=tmp_path)
    assert rc == 0, out
    assert "Unknown" not in out and "ignoring" not in out, out
