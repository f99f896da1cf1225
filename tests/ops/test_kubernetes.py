"""Offline checks of config/kubernetes/ and of the container image's files.

No cluster here: the manifests are validated against the Kubernetes API schemas with
kubernetes-validate (strict: unknown fields fail), they are checked to agree with each
other (selectors, named ports, probes, the metrics annotation), and the hubgate container's
arguments are given to the real binary with `--check-config`. What only a cluster can show
is listed in docs/kubernetes.md. The Dockerfile is checked statically (no Docker daemon in
CI); its healthcheck script runs against the real binary.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "config/kubernetes"
MANIFESTS = [K8S / "hubgate.yaml", K8S / "redis.yaml"]
HUBGATE_BIN = Path(os.environ.get("HUBGATE_BIN", "target/debug/hubgate"))
if not HUBGATE_BIN.is_absolute():
    HUBGATE_BIN = ROOT / HUBGATE_BIN
# Oldest Kubernetes the manifests are meant for, and the newest schemas installed.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def docs():
    out = {}
    for path in MANIFESTS:
        for d in yaml.safe_load_all(path.read_text()):
            if d:
                out[(d["kind"], d["metadata"]["name"])] = d
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate(version):
    for (kind, name), d in docs().items():
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name} against {version}: {e.message} at {list(e.path)}")


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in MANIFESTS)


def container(d, name):
    return next(c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_manifests_agree():
    m = docs()
    dep = m[("Deployment", "hubgate")]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selects(dep["spec"]["selector"]["matchLabels"], pod_labels)
    c = container(dep, "hubgate")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = dict(a.split("=", 1) for a in c["args"])
    assert int(args["--port"]) == ports["http"]
    assert int(args["--api-port"]) == ports["api"]
    assert int(args["--metrics-port"]) == ports["metrics"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == ports["metrics"]
    assert ann["prometheus.io/path"] == "/metrics"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/_chp_healthz", "port": "http"}, probe
    # Liveness must not restart replicas that wait for Redis at start: >= 5 minutes.
    lp = c["livenessProbe"]
    assert lp["periodSeconds"] * lp["failureThreshold"] >= 300
    # z2jh's network policies admit the proxy by these labels.
    assert pod_labels["hub.jupyter.org/network-access-hub"] == "true"
    assert pod_labels["hub.jupyter.org/network-access-singleuser"] == "true"
    # Pod security: what z2jh's proxy pod has, plus a read-only root.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    psc = dep["spec"]["template"]["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65534
    # Drain: grace period covers preStop + hubgate's 10 s drain.
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= int(pre[-1]) + 10
    # Services and the PDB select the pods and name existing ports.
    for name in ("hubgate-public", "hubgate-api"):
        svc = m[("Service", name)]
        assert selects(svc["spec"]["selector"], pod_labels), name
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (name, p)
    assert m[("Service", "hubgate-api")]["spec"]["ports"][0]["port"] == 8001
    pdb = m[("PodDisruptionBudget", "hubgate")]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert dep["spec"]["replicas"] > pdb["spec"]["maxUnavailable"]
    # The storage backend names the Redis Service and the password env var.
    redis_svc = m[("Service", "hubgate-redis")]
    redis_ss = m[("StatefulSet", "hubgate-redis")]
    assert selects(redis_svc["spec"]["selector"], redis_ss["spec"]["template"]["metadata"]["labels"])
    backend = args["--storage-backend"]
    assert re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@hubgate-redis:6379/\d+", backend), backend
    env = {e["name"] for e in c["env"]}
    assert {"CONFIGPROXY_AUTH_TOKEN", "REDIS_PASSWORD"} <= env
    # The config file is where the ConfigMap is mounted.
    mount = next(v for v in c["volumeMounts"] if v["name"] == "config")
    cm_name = next(
        v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    )
    cm = m[("ConfigMap", cm_name)]
    assert args["--config"] == f"{mount['mountPath']}/{next(iter(cm['data']))}"


def test_container_args_are_valid_for_hubgate(tmp_path):
    """The Deployment's arguments, as the kubelet would expand them, pass hubgate's own
    configuration check (flags, values, the mounted config file)."""
    m = docs()
    dep = m[("Deployment", "hubgate")]
    c = container(dep, "hubgate")
    cm = m[("ConfigMap", "hubgate-config")]
    conf = tmp_path / "hubgate.toml"
    conf.write_text(cm["data"]["hubgate.toml"])
    env = {"REDIS_PASSWORD": "pw"}
    args = [re.sub(r"\$\((\w+)\)", lambda x: env[x.group(1)], a) for a in c["args"]]
    args = [f"--config={conf}" if a.startswith("--config=") else a for a in args]
    r = subprocess.run(
        [str(HUBGATE_BIN), *args, "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "CONFIGPROXY_AUTH_TOKEN": "t"},
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- the image


def dockerfile_lines():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_is_a_chp_drop_in():
    lines = dockerfile_lines()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM "))]
    assert final.startswith("FROM debian:") and "slim" in final
    assert any(re.search(r"ln -s hubgate /usr/local/bin/configurable-http-proxy", line) for line in lines)
    user = [line for line in lines if line.startswith("USER ")]
    assert user[-1] == "USER 65534:65534"  # numeric: runAsNonRoot can verify it
    assert any(line.startswith("HEALTHCHECK ") and "hubgate-healthcheck" in line for line in lines)
    assert 'ENTRYPOINT ["/usr/local/bin/hubgate"]' in lines
    # The whole workspace is copied (members' manifests are needed), minus what is built.
    assert "COPY . ." in lines
    ignored = (ROOT / ".dockerignore").read_text().split()
    for p in ("target", ".git", ".venv", ".tools", "**/node_modules"):
        assert p in ignored, p
    # The builder's Rust is at least what Cargo.toml asks for.
    rust = re.search(r"FROM rust:(\d+)\.(\d+)", "\n".join(lines))
    need = re.search(r'rust-version = "(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text())
    assert rust and need and tuple(map(int, rust.groups())) >= tuple(map(int, need.groups()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "docker/hubgate-healthcheck")],
        env={"PATH": "/usr/bin:/bin", "HUBGATE_HEALTHCHECK_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_image_healthcheck_script(tmp_path):
    """docker/hubgate-healthcheck: 0 on a healthy hubgate; 1 on a replica that has not loaded
    its table (Redis unreachable: 503) and on a closed port."""
    assert os.access(ROOT / "docker/hubgate-healthcheck", os.X_OK)
    closed = free_port()
    assert healthcheck(closed).returncode == 1
    procs = []
    try:
        ports = {}
        for name, extra in (
            ("memory", []),
            ("no-redis", ["--storage-backend", f"redis://127.0.0.1:{closed}/0"]),
        ):
            port, api = free_port(), free_port()
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [str(HUBGATE_BIN), "--ip", "127.0.0.1", "--port", str(port),
                     "--api-port", str(api), *extra],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={"PATH": os.environ["PATH"], "CONFIGPROXY_AUTH_TOKEN": "t"},
                )  # fmt: skip
            )
            ports[name] = port
        deadline = time.monotonic() + 20
        while healthcheck(ports["memory"]).returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "memory.log").read_text()
            time.sleep(0.2)
        # The replica without Redis listens but is not ready.
        deadline = time.monotonic() + 20
        while True:
            r = healthcheck(ports["no-redis"])
            if "unhealthy: HTTP/1.1 503" in r.stdout:
                break
            assert time.monotonic() < deadline, (r.stdout, (tmp_path / "no-redis.log").read_text())
            time.sleep(0.2)
        assert r.returncode == 1
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(15)
