"""End-to-end benchmark through Kafka on the embedded local broker.

In one run, on one broker, for each client of ``--client kafka-python|confluent|both``:

1. produce N readings (default 1,000,000 from 10,000 sensors) to a 4-partition topic;
2. **bare consumer**: the same client reads and ``json.loads`` every message, nothing else
   (the most a Python consumer of this broker with this client can do; own process);
3. **worker**: ``slotwatch run`` (a child process, default settings: anomalies only,
   checkpoints every 30 s / 100k readings, ``SLOTWATCH_KAFKA__CLIENT=<client>``) consumes
   the same topic from the start; its rate is read off its own /metrics;
4. **latency**: a second worker (same settings, timed from outside by
   :mod:`benchmarks.e2e_probe`) is fed by a load generator in another process
   (:func:`benchmarks.e2e_load.produce_at_rate`) at half the measured worker rate and at
   lower rates (``--rates``), readings stamped at produce time; latency = the worker's own
   histogram of reading time stamp to score (``slotwatch_event_time_lag_seconds``,
   bucket-interpolated) and, exactly, per reading from the probe's trace, split into queued /
   fetch / handle; with ``--publish-scores`` also from the scores topic (score record time
   stamp - reading ts).  The bare consumer of the same client reads the same feed at the same
   rates (its own p99 is the floor).  CPU of the worker, the broker, the generator and the
   whole machine is recorded for each latency run.

``--variant NAME:ENV=V[,ENV=V]`` adds workers with other settings (e.g.
``fetch5:SLOTWATCH_KAFKA__FETCH_MAX_WAIT_MS=5``; ``GEN_LINGER_MS`` / ``GEN_CLIENT`` set the
load generator's), each measured for throughput and latency next to the default one.

Run: ``python -m benchmarks.e2e [--readings N] [--sensors S] [--client both] [--rates half,1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import finish, md_table, targets_md

FAST_GROUP = {"SLOTWATCH_KAFKA__SESSION_TIMEOUT_MS": "6000", "SLOTWATCH_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
              "SLOTWATCH_KAFKA__MAX_POLL_INTERVAL_MS": "30000"}


def _model(d: Path, units: int = 64) -> Path:
    from worker.core import artifact as art

    m = art.Manifest("bench-e2e", ["value"], [units], art.Scaling([0.0], [1.0]), art.Calibration(residual_std=[1.0]))
    return art.save(d / "models" / m.model_version, art.build_network(1, [units], seed=0), m)


def _produce(bootstrap: str, topic: str, n: int, sensors: int, progress: bool, t0_ms: int = 1_795_000_000_000) -> float:
    from kafka import KafkaProducer
    from tqdm import tqdm

    from worker.codec import encode_reading

    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    rng = np.random.default_rng(0)
    vals = rng.normal(size=n)
    ids = [f"sensor-{i:05d}" for i in range(sensors)]
    keys = [s.encode() for s in ids]
    t = time.perf_counter()
    for i in tqdm(range(n), desc="produce", unit="msg", unit_scale=True, disable=not progress, mininterval=1):
        k = i % sensors
        prod.send(topic, key=keys[k], value=encode_reading(ids[k], t0_ms + (i // sensors) * 1000, {"value": float(vals[i])}))
    prod.flush()
    prod.close()
    return n / (time.perf_counter() - t)


def _bare_consume(bootstrap: str, topic: str, n: int, client: str = "kafka-python", fast_records: bool = False) -> dict:
    """The baseline: ``client`` reads and ``json.loads`` every message (benchmarks.clients' consumer, own process);
    ``fast_records``: kafka-python with the worker's record parsing (worker.kafka.fast_records)."""
    from benchmarks.clients import _run_child

    return _run_child({"client": "confluent-kafka" if client == "confluent" else "kafka-python", "role": "consume",
                       "bootstrap": bootstrap, "topic": topic, "n": n, "decode": "json", "fast_records": fast_records})


def _scrape(port: int) -> dict:
    from worker.health import scrape

    return scrape(f"http://127.0.0.1:{port}/metrics")


def _start_worker(bootstrap: str, topics: dict, model: Path, ckpt: Path, port: int, publish_scores: bool, log: Path,
                  argv: list[str] | None = None, **extra_env: str):
    env = dict(os.environ, **FAST_GROUP)
    env.update({
        "SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "SLOTWATCH_KAFKA__READINGS_TOPIC": topics["readings"],
        "SLOTWATCH_KAFKA__SCORES_TOPIC": topics["scores"],
        "SLOTWATCH_KAFKA__ANOMALIES_TOPIC": topics["anomalies"],
        "SLOTWATCH_KAFKA__DEAD_LETTER_TOPIC": topics["dead"],
        "SLOTWATCH_KAFKA__GROUP_ID": f"bench-{topics['readings']}",
        "SLOTWATCH_KAFKA__PUBLISH_SCORES": "true" if publish_scores else "false",
        "SLOTWATCH_MODEL__PATH": str(model),
        "SLOTWATCH_CHECKPOINT__DIR": str(ckpt),
        "SLOTWATCH_METRICS__HOST": "127.0.0.1",
        "SLOTWATCH_METRICS__PORT": str(port),
    })
    env.update(extra_env)
    return subprocess.Popen([sys.executable, "-m", *(argv or ["worker.cli", "run"])], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _stop(proc) -> int:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def rate_of(points: list[tuple[float, float]], n: int) -> float:
    """Readings/s from (time, consumed) scrapes: between the first that saw readings and the last
    before the worker reached ``n`` (the worker's steady rate: the scrape that sees the end comes
    up to one interval after it), or the end one when no scrape fell in between.

    >>> rate_of([(0.0, 0), (1.0, 100), (2.0, 1100), (3.0, 2100), (4.0, 2500)], 2500)
    1000.0
    >>> rate_of([(0.0, 100), (1.0, 2500)], 2500)
    2400.0
    """
    seen = [(t, c) for t, c in points if c > 0]
    (t0, c0), inside = seen[0], [(t, c) for t, c in seen[1:] if c < n]
    t1, c1 = inside[-1] if inside else seen[-1]
    return (c1 - c0) / (t1 - t0)


def _worker_rate(proc, port: int, n: int, progress: bool, timeout: float = 1800, every_s: float = 1.0) -> dict:
    """Run until the worker consumed ``n``; its rate off /metrics scraped every ``every_s`` (a scrape
    renders every metric holding the GIL: at 5 a second, as before, it took ~5% of the worker; a
    Prometheus server scrapes every 15-30 s)."""
    from tqdm import tqdm

    bar = tqdm(total=n, desc="worker", unit="msg", unit_scale=True, disable=not progress, mininterval=1)
    from benchmarks.e2e_load import cpu_of

    points: list[tuple[float, float]] = []
    cpus: list[float] = []  # the worker's CPU seconds at each scrape
    last = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            m = _scrape(port)
        except OSError:
            time.sleep(0.5)
            continue
        c = m.get("slotwatch_readings_consumed_total", 0.0)
        points.append((time.perf_counter(), c))
        cpus.append(cpu_of(proc.pid))
        bar.update(c - last)
        last = c
        if c >= n:
            bar.close()
            cpu = rate_of(list(zip(cpus, (c for _, c in points))), n)  # readings per worker CPU second, same points
            return {"readings_per_s": rate_of(points, n), "cpu_us_per_reading": 1e6 / cpu, "consumed": c, "scrapes": len(points),
                    "scored": m.get("slotwatch_readings_scored_total", 0.0),
                    "rejected": m.get("slotwatch_readings_rejected_total", 0.0),
                    "rewinds": m.get("slotwatch_rewinds_total", 0.0),  # a core failure replays a poll one reading at a time
                    "tick_seconds_avg": m.get("slotwatch_tick_duration_seconds_sum", 0) / max(m.get("slotwatch_tick_duration_seconds_count", 1), 1),
                    "checkpoint_seconds_sum": m.get("slotwatch_checkpoint_duration_seconds_sum", 0.0)}
        time.sleep(every_s if c > 0 else 0.05)  # fine until the first readings, then seldom
    raise TimeoutError("worker did not finish")


def _histogram(port: int, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram on the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == name:
            return sorted((float(sm.labels["le"]), sm.value) for sm in fam.samples if sm.name.endswith("_bucket"))
    raise KeyError(name)


def quantile_from_buckets(before: list, after: list, q: float) -> float:
    """Quantile of the observations between two scrapes, interpolated linearly inside a bucket.

    >>> quantile_from_buckets([(0.01, 0), (0.1, 0), (float("inf"), 0)], [(0.01, 50), (0.1, 100), (float("inf"), 100)], 0.5)
    0.01
    """
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    from benchmarks.e2e_load import machine_cpu

    return machine_cpu()


def produce_at_rate(bootstrap: str, topic: str, rate: float, n: int, sensors: int) -> None:
    """Kept for older callers: the load generator is :func:`benchmarks.e2e_load.produce_at_rate`."""
    from benchmarks.e2e_load import produce_at_rate as gen

    gen(bootstrap, topic, rate, n, sensors, os.devnull, client="kafka-python")


def _spawn(target, *args):
    import multiprocessing as mp

    p = mp.get_context("spawn").Process(target=target, args=args)
    p.start()
    return p


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _feed(bootstrap: str, topic: str, rate: float, n: int, sensors: int, gen: dict, out: Path, meter=None) -> dict:
    """The load generator in its own process; returns what it measured of itself."""
    from benchmarks.e2e_load import produce_at_rate as gen_fn

    p = _spawn(gen_fn, bootstrap, topic, rate, n, sensors, str(out), gen["client"], gen["linger_ms"])
    if meter is not None:
        meter.add("generator", p.pid)
    while p.is_alive():
        if meter is not None:
            meter.sample()
        p.join(0.5)
    return _read_json(out)


def _wait_ready(proc, port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # ready = joined the group and restored
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            if _scrape(port).get("slotwatch_ready", 0) >= 1:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("worker not ready")


def _latency_runs(ctx: dict, topics: dict, proc, port: int, rates: list[float], gen: dict, label: str) -> list[dict]:
    """Feed the worker at each rate (the generator in another process); the worker's histogram over each run."""
    from benchmarks.e2e_load import CpuMeter

    d, b, sensors, secs = ctx["dir"], ctx["bootstrap"], ctx["lat_sensors"], ctx["latency_s"]
    _feed(b, topics["readings"], min(rates[0], 5000.0), 5 * sensors, sensors, gen, d / "warm.json")  # every sensor a row and a slot
    time.sleep(1.5)
    out = []
    for rate in rates:
        n = int(rate * secs)
        print(f"latency [{label}]: {n:,} readings at {rate:,.0f}/s", flush=True)
        before = _histogram(port, "slotwatch_event_time_lag_seconds")
        c_before = _scrape(port)["slotwatch_readings_scored_total"]
        meter = CpuMeter({"worker": proc.pid, "broker": ctx["broker_pid"]}).start()
        since = time.time() * 1000
        g = _feed(b, topics["readings"], rate, n, sensors, gen, d / f"gen-{label.replace('/', '-')}-{rate:.0f}.json", meter)
        cpu = meter.stop()
        until = time.time() * 1000
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _scrape(port)["slotwatch_readings_scored_total"] - c_before < n:
            time.sleep(0.2)
        after = _histogram(port, "slotwatch_event_time_lag_seconds")
        out.append({"rate": rate, "seconds": secs, "sent": n, "measured": int(after[-1][1] - before[-1][1]),
                    "since_ms": since, "until_ms": until + 1, "generator": g, "cpu": cpu,
                    "histogram": {f"p{q}_ms": 1000 * quantile_from_buckets(before, after, q / 100) for q in (50, 90, 99)}})
        time.sleep(1.0)
    return out


def _bare_latencies(ctx: dict, client: str, rates: list[float], gen: dict) -> list[dict]:
    """The bare consumer of ``client`` on its own feed at the same rates (the floor under the worker's)."""
    from benchmarks.e2e_load import CpuMeter, bare_latency

    from worker.kafka.clients import ensure_topics
    from worker.settings import KafkaSettings

    d, b, sensors, secs = ctx["dir"], ctx["bootstrap"], ctx["lat_sensors"], ctx["latency_s"]
    out = []
    for i, rate in enumerate(rates):
        topic = f"bench-bare-{client}-{i}.readings"  # fresh per rate (see run)
        ensure_topics(KafkaSettings(bootstrap_servers=b), {topic: 4})
        n = int(rate * secs)
        print(f"bare latency [{client}]: {n:,} readings at {rate:,.0f}/s", flush=True)
        res, ready = d / f"bare-{client}-{rate:.0f}.json", d / f"bare-{client}-{rate:.0f}.ready"
        c = _spawn(bare_latency, b, topic, client, 5.0, n, str(res), str(ready))
        deadline = time.monotonic() + 60
        while not ready.exists() and c.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        meter = CpuMeter({"bare": c.pid, "broker": ctx["broker_pid"]}).start()
        g = _feed(b, topic, rate, n, sensors, gen, d / f"gen-bare-{client}-{rate:.0f}.json", meter)
        cpu = meter.stop()
        c.join(60)
        out.append({"rate": rate, **_read_json(res), "generator": g, "cpu": cpu})
    return out


def _variant_env(spec: dict, client: str) -> tuple[dict, dict]:
    """(worker env, generator settings) of a variant."""
    env = {k: v for k, v in spec.items() if not k.startswith("GEN_")}
    if client != "kafka-python":
        env["SLOTWATCH_KAFKA__CLIENT"] = client
    gen = {"client": spec.get("GEN_CLIENT", "confluent" if _have_confluent() else "kafka-python"),
           "linger_ms": float(spec.get("GEN_LINGER_MS", 1.0))}
    return env, gen


def _have_confluent() -> bool:
    from benchmarks.e2e_load import have_confluent

    return have_confluent()


def worker_has_client(client: str) -> bool:
    """Whether this checkout's worker has ``SLOTWATCH_KAFKA__CLIENT=<client>`` (settings ignore unknown names)."""
    from worker.settings import KafkaSettings

    if client == "kafka-python":
        return True
    f = KafkaSettings.model_fields.get("client")
    return f is not None and client in str(f.annotation) and _have_confluent()


def run(readings: int, sensors: int, latency_s: float, progress: bool = True, clients=("kafka-python",),
        rates=("half", 1000.0), variants: dict | None = None, publish_scores: bool = False,
        skip_throughput: bool = False) -> dict:
    from benchmarks.e2e_load import scores_latency
    from benchmarks.e2e_probe import analyse
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker, free_port
    from worker.settings import KafkaSettings

    variants = dict(variants or {})
    variants.setdefault("default", {})
    variants = {"default": variants.pop("default"), **variants}
    res: dict = {"settings": {"readings": readings, "sensors": sensors, "partitions": 4, "units": 64, "slots": 256,
                              "clients": list(clients), "rates": list(rates), "variants": variants,
                              "latency_seconds": latency_s, "publish_scores_in_latency_runs": publish_scores},
                 "load_average_start": os.getloadavg(), "bare": {}, "workers": {}, "latency": {}, "bare_latency": {}}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        d = Path(tmp)
        model = _model(d).parent
        kset = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ctx = {"dir": d, "bootstrap": broker.bootstrap, "broker_pid": broker.proc.pid, "lat_sensors": min(sensors, 2000),
               "latency_s": latency_s}

        def topics_of(name: str) -> dict:
            t = {k: f"bench-{name}.{k}" for k in ("readings", "scores", "anomalies", "dead")}
            ensure_topics(kset, {x: (4 if k == "readings" else 1) for k, x in t.items()})
            return t

        run_topics = topics_of("run")
        if not skip_throughput:
            res["produce_per_s"] = _produce(broker.bootstrap, run_topics["readings"], readings, sensors, progress)
        for client in clients:
            if not skip_throughput:
                print(f"bare consumer [{client}]", flush=True)
                res["bare"][client] = _bare_consume(broker.bootstrap, run_topics["readings"], readings, client)
                print(f"  {res['bare'][client].get('per_s', 0):,.0f} readings/s", flush=True)
                if client == "kafka-python":  # the same consumer with the worker's record parsing
                    res["bare"]["kafka-python+fast_records"] = b = _bare_consume(broker.bootstrap, run_topics["readings"],
                                                                                 readings, client, fast_records=True)
                    print(f"  with fast_records: {b.get('per_s', 0):,.0f} readings/s", flush=True)
            if not worker_has_client(client):
                res["workers"][f"{client}/default"] = {"error": f"this worker has no SLOTWATCH_KAFKA__CLIENT={client}"}
                continue
            for vname, spec in variants.items():
                key = f"{client}/{vname}"
                env, gen = _variant_env(spec, client)
                if not skip_throughput:
                    port = free_port()
                    t = {**run_topics, "readings": run_topics["readings"]}
                    proc = _start_worker(broker.bootstrap, {**t, "scores": f"bench-run-{client}-{vname}.scores"}, model,
                                         d / f"ck-{key.replace('/', '-')}", port, False, d / "worker-run.log",
                                         SLOTWATCH_KAFKA__GROUP_ID=f"bench-run-{client}-{vname}", **env)
                    try:
                        w = _worker_rate(proc, port, readings, progress)
                    finally:
                        code = _stop(proc)
                    bare = res["bare"][client].get("per_s")
                    fast = res["bare"].get(f"{client}+fast_records", {}).get("per_s")
                    res["workers"][key] = dict(w, exit_code=code, over_bare=w["readings_per_s"] / bare if bare else None,
                                               over_bare_fast_records=w["readings_per_s"] / fast if fast else None)
                    print(f"  worker [{key}]: {w['readings_per_s']:,.0f} readings/s", flush=True)
                half = res["workers"].get(f"{client}/default", {}).get("readings_per_s")
                rs = [half / 2 if r == "half" else float(r) for r in rates if r != "half" or half]
                if not rs:
                    continue
                runs = []
                for i, rate in enumerate(rs):  # a fresh worker on fresh topics per rate: the test broker's
                    # fetches cost more the more a partition holds, so a run must not inherit the last one's
                    lt = topics_of(f"lat-{client}-{vname}-{i}")
                    port = free_port()
                    trace = d / f"trace-{client}-{vname}-{i}.npz"
                    proc = _start_worker(broker.bootstrap, lt, model, d / f"ck-lat-{client}-{vname}-{i}", port,
                                         publish_scores, d / "worker-lat.log", argv=["benchmarks.e2e_probe"],
                                         SLOTWATCH_BENCH_TRACE=str(trace), **env)
                    try:
                        _wait_ready(proc, port)
                        r = _latency_runs(ctx, lt, proc, port, [rate], gen, key)[0]
                    finally:
                        _stop(proc)
                    try:
                        r["probe"] = analyse(str(trace), r["since_ms"], r["until_ms"])
                    except (OSError, KeyError, ValueError) as e:
                        r["probe"] = {"error": str(e)}
                    if publish_scores:
                        r["scores_topic"] = scores_latency(broker.bootstrap, lt["scores"], r["since_ms"], r["until_ms"])
                    runs.append(r)
                res["latency"][key] = runs
                if vname == "default":
                    res["bare_latency"][client] = _bare_latencies(ctx, client, rs, gen)
    res["load_average_end"] = os.getloadavg()
    res["ratios"] = _ratios(res)
    res["targets"] = _targets(res)
    return res


def _ratios(res: dict) -> dict:
    out = {}
    w, b = res["workers"], res["bare"]
    for key, v in w.items():
        if v.get("over_bare") is not None:
            out[f"worker/bare {key}"] = v["over_bare"]
        if v.get("over_bare_fast_records") is not None:
            out[f"worker/(bare+fast_records) {key}"] = v["over_bare_fast_records"]
    kp, ck = w.get("kafka-python/default", {}).get("readings_per_s"), w.get("confluent/default", {}).get("readings_per_s")
    if kp and ck:
        out["worker confluent/kafka-python"] = ck / kp
    kp, ck = b.get("kafka-python", {}).get("per_s"), b.get("confluent", {}).get("per_s")
    if kp and ck:
        out["bare confluent/kafka-python"] = ck / kp
    return out


def _targets(res: dict) -> dict:
    t = {}
    for key, v in res["workers"].items():
        if key.endswith("/default") and v.get("over_bare") is not None:
            t[f"worker_over_bare {key.split('/')[0]}"] = {"target": 0.8, "measured": v["over_bare"], "met": v["over_bare"] >= 0.8}
    for key, runs in res["latency"].items():
        if key.endswith("/default") and runs:
            p99 = runs[0]["histogram"]["p99_ms"]
            t[f"latency_p99_ms {key.split('/')[0]} at {runs[0]['rate']:,.0f}/s"] = {"target": 50, "measured": p99, "met": p99 <= 50}
    return t


def _f(x, fmt="{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def report(res: dict) -> str:
    from benchmarks.common import cpu_model

    s = res["settings"]
    la0, la1 = res["load_average_start"], res["load_average_end"]
    lines = [f"## End to end through Kafka: {s['readings']:,} readings from {s['sensors']:,} sensors, local broker (tansu)", "",
             f"Machine: {os.cpu_count()} cores, {cpu_model()}; load average (1/5/15 min) at the start "
             f"{la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, at the end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}.", ""]
    rows = []
    for client, b in res["bare"].items():
        rows.append({"what": f"bare {client} consumer + json.loads", "readings_per_s": _f(b.get("per_s")),
                     "ratio": "" if "+" in client else "1 (baseline)",
                     "cpu_us_per_reading": _f(b.get("cpu_us"), "{:.1f}")})
        for key, w in res["workers"].items():
            if key.startswith(client + "/"):
                fast = w.get("over_bare_fast_records")
                rows.append({"what": f"worker {key} (B=256, units 64, anomalies only)",
                             "readings_per_s": _f(w.get("readings_per_s")) if "error" not in w else w["error"],
                             "ratio": _f(w.get("over_bare"), "{:.2f}x") + (f" ({fast:.2f}x of +fast_records)" if fast else ""),
                             "cpu_us_per_reading": _f(w.get("cpu_us_per_reading"), "{:.1f}")})
    if "produce_per_s" in res:
        rows.append({"what": "producer filling the topic (kafka-python, for reference)", "readings_per_s": _f(res["produce_per_s"]), "ratio": ""})
    if rows:
        lines += [md_table(rows, ["what", "readings_per_s", "ratio", "cpu_us_per_reading"]), ""]
    for k, v in res["ratios"].items():
        lines.append(f"- {k}: {v:.2f}x")
    lines += ["", "### Latency, reading time stamp to score", "",
              "hist = the worker's histogram (bucket-interpolated); probe = per reading from the trace (exact); "
              "bare = a bare consumer of the same client on the same feed at the same rate; CPU in cores "
              "(worker / broker / load generator) and the machine's busy share.", ""]
    rows = []
    for key, runs in res["latency"].items():
        client = key.split("/")[0]
        bares = {round(b["rate"]): b for b in res["bare_latency"].get(client, [])}
        for r in runs:
            pr, c, b = r.get("probe", {}), r["cpu"], bares.get(round(r["rate"]), {})
            lat = pr.get("latency_ms", {})
            sc = r.get("scores_topic", {})
            rows.append({
                "worker": key, "rate": f"{r['rate']:,.0f}/s (sent {r['generator'].get('rate', 0):,.0f}/s)",
                "hist p50/p99": f"{_f(r['histogram']['p50_ms'], '{:.0f}')} / {_f(r['histogram']['p99_ms'], '{:.0f}')}",
                "probe p50/p99/max": f"{_f(lat.get('p50'), '{:.0f}')} / {_f(lat.get('p99'), '{:.0f}')} / {_f(lat.get('max'), '{:.0f}')}",
                "scores topic p99": _f(sc.get("p99_ms"), "{:.0f}"),
                "bare p50/p99": f"{_f(b.get('p50_ms'), '{:.0f}')} / {_f(b.get('p99_ms'), '{:.0f}')}",
                "bare CPU c/b, busy": f"{b.get('cpu', {}).get('bare_cores', 0):.2f} / {b.get('cpu', {}).get('broker_cores', 0):.2f}, "
                                      f"{100 * b.get('cpu', {}).get('machine_busy', 0):.0f}%" if b else "-",
                "CPU w/b/g, busy": f"{c.get('worker_cores', 0):.2f} / {c.get('broker_cores', 0):.2f} / "
                                   f"{c.get('generator_cores', 0):.2f}, {100 * c['machine_busy']:.0f}%"})
    if rows:
        lines += [md_table(rows, list(rows[0])), ""]
    rows = []
    for key, runs in res["latency"].items():
        for r in runs:
            pr = r.get("probe", {})
            if not pr.get("readings"):
                continue
            a, t = pr["parts_mean_ms"], pr["parts_mean_ms_slowest_1pct"]
            rows.append({
                "worker": key, "rate": f"{r['rate']:,.0f}/s",
                "mean queued/fetch/handle ms": f"{a['queued']:.1f} / {a['fetch']:.1f} / {a['handle']:.1f}",
                "slowest 1%: queued/fetch/handle": f"{t['queued']:.0f} / {t['fetch']:.0f} / {t['handle']:.0f}",
                "records/poll p50/p99": f"{pr['records_per_poll']['p50']:.0f} / {pr['records_per_poll']['p99']:.0f}",
                "handle ms p50/p99/max": "{:.1f} / {:.1f} / {:.0f}".format(*pr["handle_ms"].values()),
                "loop: poll/handle/rounds": "{:.0%} / {:.0%} / {:.1%}".format(*pr["loop_share"].values()),
                "rounds n, max ms": f"{pr['rounds']['count']}, {pr['rounds']['max_ms']:.0f}",
                "end-offset probes n, max ms": f"{pr.get('broker_probes', {}).get('count', 0)}, "
                                               f"{pr.get('broker_probes', {}).get('max_ms', 0):.0f}",
                "GC n, max ms": f"{pr['gc']['count']}, {pr['gc']['max_ms']:.1f}"})
    if rows:
        lines += ["Where the time goes (probe): queued = the worker's time outside poll calls between the stamp and the poll that took it (busy handling, checkpointing); "
                  "fetch = the rest until that poll returned (producer linger, broker, fetch wait, client parsing); "
                  "handle = its poll's decode, score, send, metrics.", "", md_table(rows, list(rows[0])), ""]
    lines += targets_md(res.get("targets", {}))
    return "\n".join(lines) + "\n"


def _variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in body.split(",") if kv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--readings", type=int, default=1_000_000, help="readings to send (default 1,000,000)")
    p.add_argument("--sensors", type=int, default=10_000, help="distinct sensors (default 10,000)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of each latency run (default 20 s)")
    p.add_argument("--client", choices=["kafka-python", "confluent", "both"], default="kafka-python",
                   help="the worker's client (SLOTWATCH_KAFKA__CLIENT) and the bare consumer's; both = side by side")
    p.add_argument("--rates", default="half,1000",
                   help="latency runs, readings/s, comma-separated; 'half' = half the worker's measured rate (default half,1000)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=V[,ENV=V]",
                   help="another worker next to the default one (GEN_LINGER_MS/GEN_CLIENT: the load generator's)")
    p.add_argument("--publish-scores", action="store_true",
                   help="latency workers publish every score; latency also read off the scores topic")
    p.add_argument("--skip-throughput", action="store_true", help="latency runs only (then --rates needs numbers)")
    args = p.parse_args(argv)
    clients = ["kafka-python", "confluent"] if args.client == "both" else [args.client]
    rates = [r if r == "half" else float(r) for r in args.rates.split(",") if r]
    res = run(args.readings, args.sensors, args.latency_seconds, clients=clients, rates=rates,
              variants=dict(_variant(v) for v in args.variant), publish_scores=args.publish_scores,
              skip_throughput=args.skip_throughput)
    finish("e2e", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
