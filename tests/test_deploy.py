"""Checks of the container and deployment files (Dockerfile, deploy/), offline, with the tools
operators use: promtool, kubernetes-validate, check-jsonschema, hadolint, yamllint, and a real
Prometheus server (Debian's package brings it with promtool) scraping the worker's HTTP endpoint.

The Python tools come with the ``dev`` extra; promtool comes from Debian's ``prometheus``
package (``.ci/run`` installs it).  Without promtool these tests are skipped locally, and
fail when ``SLOTWATCH_REQUIRE_DEPLOY_TOOLS=1`` (set by ``.ci/run``).

No Docker engine or Kubernetes cluster runs here: the Dockerfile is linted and checked for its
contract, the manifests are validated against the Kubernetes API schemas bundled with
kubernetes-validate; the Prometheus Operator's CRDs (PodMonitor, PrometheusRule) and KEDA's
(ScaledObject, TriggerAuthentication) are not in those schemas, so they are checked
separately (schemas of ours in tests/schemas/ for the fields we use, and promtool for the rules).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from worker.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "slotwatch.json"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

SETTINGS_VARS = {var for var, _, _ in settings_table()}
# metrics the alert rules may use that Prometheus itself makes, not the worker
PROMETHEUS_OWN = {"up"}


#: where the tools come from: promtool and the Prometheus server from Debian's `prometheus`
#: package (not from pip); the others from the `dev` extra
HOW_TO_GET = {
    "promtool": "it comes from Debian's `prometheus` package: sudo apt-get install prometheus; .ci/run installs it",
    "prometheus": "Debian's `prometheus` package: sudo apt-get install prometheus; .ci/run installs it",
}


def tool(name: str) -> str:
    """Path of a command-line tool: beside this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found:
        return found
    msg = f"{name} is not installed ({HOW_TO_GET.get(name, 'pip install -e .[dev]')})"
    if os.environ.get("SLOTWATCH_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(msg)
    pytest.skip(msg)


def run(*cmd: str, cwd: Path = ROOT, stdin: str | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict]:
    """kind/name -> manifest, for every Kubernetes file of deploy/kubernetes (recursively)."""
    out = {}
    for f in sorted(K8S.rglob("*.yaml")):
        for d in load_all(f):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d
    return out


# ---------------------------------------------------------------- the metrics the worker serves


@pytest.fixture(scope="module")
def worker_metrics_text() -> str:
    """The worker's real /metrics, scraped over HTTP from its health server (worker/health.py)
    serving a fresh worker.metrics.Metrics, as `slotwatch run` does."""
    from worker.health import HealthServer
    from worker.metrics import Metrics

    h = HealthServer(Metrics(), "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{h.port}/metrics", timeout=10) as r:
            return r.read().decode()
    finally:
        h.stop()


@pytest.fixture(scope="module")
def served_names(worker_metrics_text) -> set[str]:
    """Every series name the worker's /metrics declares: the samples, and the families that have
    no sample yet (per-partition gauges appear only once partitions are assigned)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"],
                "info": ["_info"], "gauge": [""], "unknown": [""]}
    names = set()
    for fam in text_string_to_metric_families(worker_metrics_text):
        names |= {s.name for s in fam.samples}
        names |= {fam.name + sfx for sfx in suffixes.get(fam.type, [""])}
    return names


def test_promtool_accepts_the_worker_metrics(worker_metrics_text):
    run(tool("promtool"), "check", "metrics", stdin=worker_metrics_text)


# ---------------------------------------------------------------------------------- PromQL

_METRIC = re.compile(r"\b(slotwatch_[a-zA-Z0-9_:]*)")
_SELECTED = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)")


def metrics_in(expr: str) -> set[str]:
    """Metric names an expression selects (every slotwatch_* name, and any name with {...} or [...])."""
    return set(_METRIC.findall(expr)) | set(_SELECTED.findall(expr))


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard, panels and variables."""
    out = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            out.append((f"variable {v['name']}", m.group(1) if m else q))
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables by what they become at query time."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_prometheus_config_and_rules_pass_promtool():
    run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM)
    out = run(tool("promtool"), "check", "rules", "alerts.yml", cwd=PROM)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_alert_unit_tests_pass():
    run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=PROM)


def test_the_alerts_the_issue_asks_for_exist_and_each_has_a_firing_unit_test():
    names = {r["alert"] for r in alert_rules()}
    for wanted in ("WorkerDown", "ConsumerLagGrowing", "CheckpointTooOld", "DeadLetterRate", "AnomalyRateSpike", "TickLatency"):
        assert any(wanted in n for n in names), f"no alert for {wanted}"
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    quiet = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if not a.get("exp_alerts")}
    assert names - fired == set(), "alerts without a unit test that makes them fire"
    assert names - quiet == set(), "alerts without a unit test where they stay quiet"
    for r in alert_rules():
        assert r["labels"]["severity"] in {"critical", "warning"} and r["annotations"]["summary"], r["alert"]


def test_dashboard_promql_passes_promtool(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"slotwatch_dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)
    ]}]}
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump(rules))
    out = run(tool("promtool"), "check", "rules", str(f))
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout


def test_a_broken_query_would_be_caught(tmp_path):
    """The check above can fail: promtool refuses an expression with a syntax error."""
    f = tmp_path / "bad.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(slotwatch_anomalies_total[5m])"}]}]}))
    out = subprocess.run([tool("promtool"), "check", "rules", str(f)], capture_output=True, text=True)
    assert out.returncode != 0


def test_every_metric_of_the_dashboard_and_the_alerts_is_served_by_the_worker(served_names):
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_exprs():
        for m in metrics_in(expr):
            used.setdefault(m, set()).add(where)
    for r in alert_rules():
        for m in metrics_in(r["expr"]):
            used.setdefault(m, set()).add(f"alert {r['alert']}")
    assert len([m for m in used if m.startswith("slotwatch_")]) >= 20
    missing = {m: sorted(w) for m, w in used.items() if m not in served_names | PROMETHEUS_OWN}
    assert not missing, f"not in the worker's /metrics: {missing}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_a_real_prometheus_scrapes_the_worker_evaluates_the_rules_and_answers_the_dashboard(tmp_path):
    """Debian's prometheus package brings the server too: run it against the worker's real
    health server (metrics moved a little, as a few ticks would), with alerts.yml loaded, and
    ask it every dashboard query."""
    import time
    import urllib.parse

    from worker.health import HealthServer
    from worker.metrics import Metrics

    server = tool("prometheus")
    m = Metrics()
    m.consumed.inc(120)
    m.scored.inc(110)
    m.rejected.labels("not_json").inc(10)
    m.anomalies.inc(3)
    m.published.labels("anomaly").inc(3)
    for d in (0.0004, 0.0009, 0.002):
        m.tick_seconds.observe(d)
        m.batch_fill.observe(0.4)
        m.latency.observe(0.05)
        m.event_lag.observe(0.05)
        m.processing.observe(0.01)
    m.checkpoint_seconds.observe(0.02)
    m.checkpoint_last.set(time.time())
    m.slots_capacity.set(256)
    m.slots_in_use.set(40)
    m.lag.labels("0").set(12)
    m.committed_offset.labels("0").set(1000)
    m.model.info({"model_version": "test-1", "features": "temp,rpm,vib"})
    h = HealthServer(m, "127.0.0.1", 0).start()
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [{"job_name": "slotwatch", "static_configs": [{"targets": [f"127.0.0.1:{h.port}"]}]}],
    }))
    proc = subprocess.Popen([server, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(q: str) -> list:
        r = _get(f"{api}/query?query={urllib.parse.quote(q)}")
        assert r["status"] == "success", (q, r)
        return r["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if query('count_over_time(up{job="slotwatch"}[1m]) >= 3'):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not scrape the worker 3 times in 60 s"
            time.sleep(0.5)
        m.consumed.inc(50)  # movement between scrapes, so that rates are not all zero
        empty = [where for where, e in dashboard_exprs() if not query(grafana_to_promql(e))]
        assert not empty, f"dashboard queries without data from a live worker: {empty}"
        assert query('slotwatch_model_info{model_version="test-1"}')

        while True:  # until every rule has been evaluated at least once
            rules = {r["name"]: r for g in _get(f"{api}/rules")["data"]["groups"] for r in g["rules"]}
            if all(r["health"] != "unknown" for r in rules.values()):
                break
            assert time.monotonic() < deadline, "rules not evaluated in time"
            time.sleep(0.5)
        assert set(rules) == {r["alert"] for r in alert_rules()}
        assert {n: r["health"] for n, r in rules.items() if r["health"] != "ok"} == {}
        # the fresh worker is not ready and has not reached the broker: those two alerts are
        # pending (they wait for their `for:`); the worker is up, so WorkerDown is not
        states = {a["labels"]["alertname"]: a["state"] for a in _get(f"{api}/alerts")["data"]["alerts"]}
        assert states.get("SlotwatchWorkerNotReady") == "pending"
        assert states.get("SlotwatchBrokerUnreachable") == "pending"
        assert "SlotwatchWorkerDown" not in states
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        h.stop()


def test_metric_extraction_finds_what_a_query_selects():
    assert metrics_in('sum by (le) (rate(slotwatch_tick_duration_seconds_bucket{instance=~".*"}[5m]))') == {
        "slotwatch_tick_duration_seconds_bucket"
    }
    assert metrics_in('up{job="slotwatch"} == 0 or absent(up{job="slotwatch"})') == {"up"}
    assert metrics_in("slotwatch_ready == 0") == {"slotwatch_ready"}


def test_dashboard_has_the_panels_the_issue_asks_for():
    d = dashboard()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("throughput", "lag", "tick duration", "end-to-end latency", "batch fill", "slots",
                   "anomalies per minute", "dead letters by reason", "checkpoint age", "checkpoint duration", "model version"):
        assert wanted in titles, wanted
    for p in panels:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "instance"}
    assert "p99" in json.dumps(d) and "histogram_quantile(0.99" in json.dumps(d)


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((prov / "dashboards" / "slotwatch.yml").read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------------------ Kubernetes

CORE_FILES = sorted(K8S.glob("*.yaml")) + sorted((K8S / "secrets-example").glob("*.yaml"))


def test_kubernetes_manifests_validate_strictly():
    out = run(tool("kubernetes-validate"), "--strict", *map(str, CORE_FILES))
    assert "Couldn't find schema" not in out.stdout + out.stderr, "a core manifest was not validated"
    assert out.stdout.count("passed for resource") == sum(len(load_all(f)) for f in CORE_FILES)


def test_strict_validation_refuses_an_unknown_field(tmp_path):
    dep = yaml.safe_load((K8S / "50-deployment.yaml").read_text())
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(dep))
    out = subprocess.run([tool("kubernetes-validate"), "--strict", str(f)], capture_output=True, text=True)
    assert out.returncode != 0 and "httpGett" in out.stdout + out.stderr


def test_operator_crds_checked_separately():
    """kubernetes-validate has no schema for monitoring.coreos.com: the PodMonitor is checked
    against tests/schemas/podmonitor.schema.json (the fields of the CRD that we use, no others
    allowed), and the PrometheusRule must hold exactly deploy/prometheus/alerts.yml."""
    run(tool("check-jsonschema"), "--schemafile", str(SCHEMAS / "podmonitor.schema.json"), str(K8S / "monitoring" / "podmonitor.yaml"))
    rule = manifests()["PrometheusRule/slotwatch"]
    assert rule["spec"] == yaml.safe_load((PROM / "alerts.yml").read_text())


KEDA = {"scaledobject": K8S / "autoscaling" / "scaledobject.yaml",
        "triggerauthentication": K8S / "autoscaling" / "triggerauthentication.yaml"}


def test_keda_crds_checked_separately():
    """kubernetes-validate has no schema for keda.sh either: the ScaledObject (with the kafka
    trigger's metadata) and the TriggerAuthentication against tests/schemas/ (the fields of the
    CRDs that we use, no others allowed)."""
    for name, f in KEDA.items():
        assert len(load_all(f)) == 1, f"{f.name}: one resource per file (check-jsonschema reads the first)"
        run(tool("check-jsonschema"), "--schemafile", str(SCHEMAS / f"{name}.schema.json"), str(f))


@pytest.mark.parametrize("path, value", [
    (("spec", "maxReplicaCounts"), 6),                       # a typo of a field
    (("spec", "triggers", 0, "metadata", "lagTreshold"), "5"),  # a typo of the kafka trigger's metadata
    (("spec", "triggers", 0, "metadata", "lagThreshold"), 5),   # KEDA reads metadata as strings
    (("spec", "triggers", 0, "metadata", "sasl"), "SCRAM-SHA-512"),  # Kafka's spelling, not KEDA's
])
def test_keda_schema_refuses_a_mistake(tmp_path, path, value):
    so = yaml.safe_load(KEDA["scaledobject"].read_text())
    node = so
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(so))
    out = subprocess.run([tool("check-jsonschema"), "--schemafile", str(SCHEMAS / "scaledobject.schema.json"), str(f)],
                         capture_output=True, text=True)
    assert out.returncode != 0, out.stdout


def test_worker_deployment_contract():
    """The worker scales to N replicas with no per-pod state: a Deployment (no volume claim of its
    own), state in the Kafka changelog, readiness on /readyz, a grace period longer than the
    worker's own, a disruption budget that lets one pod go at a time."""
    m = manifests()
    assert "StatefulSet/slotwatch" not in m
    dep = m["Deployment/slotwatch"]
    cfg = m["ConfigMap/slotwatch-config"]["data"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert dep["spec"]["replicas"] >= 1
    assert cfg["SLOTWATCH_CHECKPOINT__STATE_STORE"] == "kafka" and cfg["SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC"]
    roll = dep["spec"]["strategy"]
    assert roll["type"] == "RollingUpdate" and roll["rollingUpdate"]["maxUnavailable"] == 0  # capacity never dips
    assert c["args"] == ["run"]
    assert spec["terminationGracePeriodSeconds"] > float(cfg["SLOTWATCH_SHUTDOWN_GRACE_S"]) + 10
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = c["ports"]
    assert port["containerPort"] == int(cfg["SLOTWATCH_METRICS__PORT"]) and port["name"] == "metrics"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    assert cfg["SLOTWATCH_CHECKPOINT__DIR"] in mounts and cfg["SLOTWATCH_MODEL__PATH"] in mounts
    assert mounts[cfg["SLOTWATCH_MODEL__PATH"]]["readOnly"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[cfg["SLOTWATCH_CHECKPOINT__DIR"]]["name"]]  # nothing per pod to keep
    assert "volumeClaimTemplates" not in dep["spec"]
    models = volumes[mounts[cfg["SLOTWATCH_MODEL__PATH"]]["name"]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in m[f"PersistentVolumeClaim/{models}"]["spec"]["accessModes"]  # N pods, any nodes
    env = {e["name"]: e for e in c["env"]}
    assert env["SLOTWATCH_KAFKA__SECURITY__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "slotwatch-kafka"
    assert "TF_NUM_INTRAOP_THREADS" in env and "TF_NUM_INTEROP_THREADS" in env
    labels = pod["metadata"]["labels"]
    pdb = m["PodDisruptionBudget/slotwatch"]["spec"]
    for sel in (m["Service/slotwatch"]["spec"]["selector"], pdb["selector"]["matchLabels"],
                m["PodMonitor/slotwatch"]["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"]):
        assert sel.items() <= labels.items(), sel
    # one pod at a time, whatever N: with 1 replica a drain is a short pause, never blocked
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert m["PodMonitor/slotwatch"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert labels[m["PodMonitor/slotwatch"]["spec"]["jobLabel"]] == "slotwatch"  # job="slotwatch" as the alerts expect


def test_autoscaler_fits_the_deployment_the_group_and_the_topic():
    m = manifests()
    cfg = m["ConfigMap/slotwatch-config"]["data"]
    so = m["ScaledObject/slotwatch"]
    spec = so["spec"]
    dep = m["Deployment/slotwatch"]
    ref = spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref.get("kind"), ref["name"]) == ("apps/v1", dep["kind"], dep["metadata"]["name"])
    assert so["metadata"]["namespace"] == dep["metadata"]["namespace"]
    partitions = int(so["metadata"]["annotations"]["slotwatch/readings-partitions"])
    assert 1 <= spec["minReplicaCount"] <= dep["spec"]["replicas"] <= spec["maxReplicaCount"] <= partitions
    (trig,) = spec["triggers"]
    md = trig["metadata"]
    assert trig["type"] == "kafka"
    assert md["bootstrapServers"] == cfg["SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS"]
    assert md["consumerGroup"] == cfg["SLOTWATCH_KAFKA__GROUP_ID"]
    assert md["topic"] == cfg["SLOTWATCH_KAFKA__READINGS_TOPIC"]
    assert md["allowIdleConsumers"] == "false"  # never more workers than partitions
    # lag is measured from committed offsets, committed once per checkpoint round: a worker at
    # 10k readings/s carries interval_s x 10k of it while healthy, which must not add a replica
    assert int(md["lagThreshold"]) >= 10_000 * float(cfg["SLOTWATCH_CHECKPOINT__INTERVAL_S"])
    # KEDA connects as the worker does
    assert cfg["SLOTWATCH_KAFKA__SECURITY__PROTOCOL"] == "SASL_SSL" and md["tls"] == "enable"
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert md["sasl"] == keda_sasl[cfg["SLOTWATCH_KAFKA__SECURITY__SASL_MECHANISM"]]
    auth = m[f"TriggerAuthentication/{trig['authenticationRef']['name']}"]["spec"]["secretTargetRef"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
           if "secretKeyRef" in e.get("valueFrom", {})}
    refs = {a["parameter"]: (a["name"], a["key"]) for a in auth}
    for param, var in (("username", "SLOTWATCH_KAFKA__SECURITY__SASL_USERNAME"), ("password", "SLOTWATCH_KAFKA__SECURITY__SASL_PASSWORD")):
        assert refs[param] == (env[var]["name"], env[var]["key"]), param
    tls = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}["kafka-tls"]["secret"]["secretName"]
    assert refs["ca"] == (tls, cfg["SLOTWATCH_KAFKA__SECURITY__SSL_CAFILE"].rsplit("/", 1)[1])
    # one pod per step, and a long wait before scaling down: each step is a rebalance
    beh = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert all(p["type"] == "Pods" and p["value"] == 1 for d in ("scaleUp", "scaleDown") for p in beh[d]["policies"])
    assert beh["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_retraining_cronjob_writes_where_the_worker_reads():
    m = manifests()
    cfg = m["ConfigMap/slotwatch-config"]["data"]
    job = m["CronJob/slotwatch-retrain"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    spec = job["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    cmd = " ".join(c["command"] + c["args"])
    assert "slotwatch train --from-kafka" in cmd and f"--out {cfg['SLOTWATCH_MODEL__PATH']}" in cmd
    assert cfg["SLOTWATCH_MODEL__FEATURES"]  # `train --from-kafka` needs them
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    claim = {v["name"]: v for v in spec["volumes"]}[mounts[cfg["SLOTWATCH_MODEL__PATH"]]["name"]]
    assert claim["persistentVolumeClaim"]["claimName"] == "slotwatch-models"
    assert "ReadWriteMany" in m["PersistentVolumeClaim/slotwatch-models"]["spec"]["accessModes"]


def _slotwatch_vars(text: str) -> set[str]:
    return set(re.findall(r"\b(SLOTWATCH_[A-Z0-9_]*[A-Z0-9])\b(?!_)", text)) - {"SLOTWATCH_IMAGE", "SLOTWATCH_UID", "SLOTWATCH_REQUIRE_DEPLOY_TOOLS"}


def test_every_slotwatch_variable_in_the_deployment_is_a_real_setting():
    files = [ROOT / "Dockerfile", COMPOSE, *K8S.rglob("*.yaml")]
    unknown = {f.name: v for f in files if (v := _slotwatch_vars(f.read_text()) - SETTINGS_VARS - {"SLOTWATCH_SECRETS_DIR"})}
    assert not unknown, f"not settings of worker/settings.py: {unknown}"


# -------------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_spec():
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))


def test_compose_wiring():
    c = yaml.safe_load(COMPOSE.read_text())
    s = c["services"]
    assert {"kafka", "kafka-init", "worker", "worker-2", "retrain", "prometheus", "grafana"} <= set(s)
    assert "broker,controller" in s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    workers = [s["worker"], s["worker-2"]]
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "slotwatch"]
    targets = job["static_configs"][0]["targets"]
    topics = s["kafka-init"]["command"][0]
    for name, w in zip(("worker", "worker-2"), workers):
        env = w["environment"]
        assert w["command"] == ["run"]
        assert w["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert float(w["stop_grace_period"].rstrip("s")) > float(env["SLOTWATCH_SHUTDOWN_GRACE_S"])
        assert f"{name}:{env['SLOTWATCH_METRICS__PORT']}" in targets
        # two workers of one group, state in Kafka, no checkpoint volume shared between them
        assert env["SLOTWATCH_CHECKPOINT__STATE_STORE"] == "kafka"
        assert env["SLOTWATCH_KAFKA__GROUP_ID"] == workers[0]["environment"]["SLOTWATCH_KAFKA__GROUP_ID"]
        assert not any(v.split(":")[1] == env["SLOTWATCH_CHECKPOINT__DIR"] for v in w.get("volumes", []))
        assert f"create {env['SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC']} \"$${{PARTITIONS}}\" cleanup.policy=compact" in topics
    assert workers[0]["environment"]["SLOTWATCH_KAFKA__CLIENT_ID"] != workers[1]["environment"]["SLOTWATCH_KAFKA__CLIENT_ID"]
    assert {p.split(":")[0] for p in workers[0]["ports"]} != {p.split(":")[0] for p in workers[1]["ports"]}
    assert s["retrain"]["profiles"] == ["retrain"] and "train --from-kafka" in " ".join(s["retrain"]["command"])
    assert "../prometheus:/etc/prometheus:ro" in s["prometheus"]["volumes"]
    for t in ("slotwatch.readings", "slotwatch.scores", "slotwatch.anomalies", "slotwatch.dead-letter"):
        assert f"create {t} " in topics


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_hadolint_accepts_the_dockerfile():
    run(tool("hadolint"), "Dockerfile")


def test_dockerfile_contract():
    d = dockerfile()
    assert len(re.findall(r"^FROM python:|^FROM \$\{PYTHON_IMAGE\}", d, re.M)) == 2 and "python:3.11-slim" in d
    env = dict(re.findall(r"^\s+(SLOTWATCH_[A-Z_]+|TF_NUM_\w+)=(\S+)", d, re.M))
    assert {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"} <= set(env)
    (volume,) = re.findall(r'^VOLUME \["([^"]+)"\]', d, re.M)
    assert volume == env["SLOTWATCH_CHECKPOINT__DIR"]
    (user,) = re.findall(r"^USER (\S+)", d, re.M)
    assert not user.startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["slotwatch"\]\s*^CMD \["run"\]', d, re.M)
    assert re.search(r'HEALTHCHECK .*\\\n\s+CMD \["python", "-m", "worker.healthcheck", "/healthz"\]', d)
    assert "tensorflow" in d and "COPY --from=build /opt/slotwatch /opt/slotwatch" in d
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!README.md", "!worker", "!training"]


def test_healthcheck_probe_against_the_real_health_server():
    from worker.health import HealthServer
    from worker.metrics import Metrics

    h = HealthServer(Metrics(), "127.0.0.1", 0).start()
    env = {**os.environ, "SLOTWATCH_METRICS__HOST": "0.0.0.0", "SLOTWATCH_METRICS__PORT": str(h.port)}

    def probe(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "worker.healthcheck", *args], env=env, capture_output=True, timeout=30).returncode

    try:
        assert probe() == 0
        assert probe("/readyz") == 1  # no readiness check has passed yet
        h.set_check("model_loaded", True)
        assert probe("/readyz") == 0
    finally:
        h.stop()
    assert probe() == 1  # nothing listens any more


# ---------------------------------------------------------------------------------- YAML


def test_yamllint_on_every_yaml_file():
    run(tool("yamllint"), "--strict", ".")
