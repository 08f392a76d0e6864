"""End-to-end benchmark through Kafka on the embedded local broker.

In one run, on one broker:

1. produce N readings (default 1,000,000 from 10,000 sensors) to a 4-partition topic;
2. **bare consumer**: kafka-python reads and ``json.loads`` every message, nothing else
   (the most a Python consumer of this broker can do);
3. **worker**: ``slotwatch run`` (a child process, default settings: anomalies only,
   checkpoints every 30 s / 100k readings) consumes the same topic from the start; its
   rate is read off its own /metrics (first to last reading consumed);
4. **latency**: a second worker (same settings) is fed at half the measured worker rate
   with readings stamped at produce time; latency = the worker's own histogram of reading
   time stamp to score (``slotwatch_event_time_lag_seconds``), p50/p99 interpolated
   within buckets — target p99 at most 50 ms.

Run: ``python -m benchmarks.e2e [--readings N] [--sensors S]``.
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


def _bare_consume(bootstrap: str, topic: str, n: int, progress: bool) -> float:
    from kafka import KafkaConsumer, TopicPartition
    from tqdm import tqdm

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      fetch_max_bytes=52428800, max_partition_fetch_bytes=4 * 1048576)
    parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(parts)
    c.seek_to_beginning()
    got = 0
    bar = tqdm(total=n, desc="bare consumer", unit="msg", unit_scale=True, disable=not progress, mininterval=1)
    t = None
    while got < n:
        for recs in c.poll(timeout_ms=500, max_records=5000).values():
            if t is None:
                t = time.perf_counter()
            for r in recs:
                json.loads(r.value)
            got += len(recs)
            bar.update(len(recs))
    dt = time.perf_counter() - t
    bar.close()
    c.close()
    return n / dt


def _scrape(port: int) -> dict:
    from worker.health import scrape

    return scrape(f"http://127.0.0.1:{port}/metrics")


def _start_worker(bootstrap: str, topics: dict, model: Path, ckpt: Path, port: int, publish_scores: bool, log: Path,
                  **extra_env: str):
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
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _stop(proc) -> int:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _worker_rate(proc, port: int, n: int, progress: bool, timeout: float = 1800) -> dict:
    from tqdm import tqdm

    bar = tqdm(total=n, desc="worker", unit="msg", unit_scale=True, disable=not progress, mininterval=1)
    t_first = c_first = None
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
        now = time.perf_counter()
        if c > 0 and t_first is None:
            t_first, c_first = now, c
        bar.update(c - last)
        last = c
        if c >= n:
            bar.close()
            return {"readings_per_s": (c - c_first) / (now - t_first), "consumed": c,
                    "scored": m.get("slotwatch_readings_scored_total", 0.0),
                    "rejected": m.get("slotwatch_readings_rejected_total", 0.0),
                    "rewinds": m.get("slotwatch_rewinds_total", 0.0),  # a core failure replays a poll one reading at a time
                    "tick_seconds_avg": m.get("slotwatch_tick_duration_seconds_sum", 0) / max(m.get("slotwatch_tick_duration_seconds_count", 1), 1),
                    "checkpoint_seconds_sum": m.get("slotwatch_checkpoint_duration_seconds_sum", 0.0)}
        time.sleep(0.2)
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
    with open("/proc/stat") as f:
        vals = [float(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def produce_at_rate(bootstrap: str, topic: str, rate: float, n: int, sensors: int) -> None:
    """Send ``n`` readings stamped at send time, ``rate`` per second (run in its own process)."""
    from kafka import KafkaProducer

    from worker.codec import encode_reading

    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    ids = [f"lat-{i:05d}" for i in range(sensors)]
    vals = np.random.default_rng(1).normal(size=n).tolist()
    t0 = time.monotonic()
    for i in range(n):
        now_ms = int(time.time() * 1000)
        sid = ids[i % sensors]
        prod.send(topic, key=sid.encode(), value=encode_reading(sid, now_ms, {"value": vals[i]}), timestamp_ms=now_ms)
        ahead = (i + 1) / rate - (time.monotonic() - t0)
        if ahead > 0.002:
            time.sleep(ahead)
    prod.flush()
    prod.close()


def _bare_latency(bootstrap: str, topic: str, rate: float, seconds: float, sensors: int) -> dict:
    """The same feed read by a bare consumer (same fetch settings as the worker): the broker's
    own produce-to-consume latency, the floor under the worker's."""
    import multiprocessing as mp
    import threading

    from kafka import KafkaConsumer, TopicPartition

    from worker.settings import KafkaSettings

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      fetch_max_wait_ms=KafkaSettings().fetch_max_wait_ms)
    c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
    c.seek_to_end()
    lat: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            for recs in c.poll(timeout_ms=100).values():
                now = time.time() * 1000
                lat.extend(now - r.timestamp for r in recs)

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    p = mp.get_context("spawn").Process(target=produce_at_rate, args=(bootstrap, topic, rate, int(rate * seconds), sensors))
    p.start()
    p.join()
    time.sleep(1.0)
    stop.set()
    th.join(5)
    c.close()
    a = np.array(lat)
    return {"rate": rate, "received": int(len(a)), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99))}


def _latency(bootstrap: str, topics: dict, rate: float, seconds: float, sensors: int, port: int, progress: bool) -> dict:
    """Feed readings stamped now at ``rate`` from another process (as real producers are);
    latency = the worker's reading-time-to-score histogram over the measured part."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")

    def feed(n: int) -> None:
        p = ctx.Process(target=produce_at_rate, args=(bootstrap, topics["readings"], rate, n, sensors))
        p.start()
        p.join()

    feed(min(int(rate * 2), 5 * sensors))  # warm-up: every sensor gets a row and a slot
    time.sleep(1.0)
    before = _histogram(port, "slotwatch_event_time_lag_seconds")
    c_before = _scrape(port)["slotwatch_readings_scored_total"]
    n = int(rate * seconds)
    if progress:
        print(f"latency run: {n:,} readings at {rate:,.0f}/s", flush=True)
    busy0, total0 = _cpu_times()
    feed(n)
    busy1, total1 = _cpu_times()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _scrape(port)["slotwatch_readings_scored_total"] - c_before < n:
        time.sleep(0.2)
    after = _histogram(port, "slotwatch_event_time_lag_seconds")
    return {"rate": rate, "seconds": seconds, "sent": n, "measured": int(after[-1][1] - before[-1][1]),
            "p50_ms": 1000 * quantile_from_buckets(before, after, 0.50),
            "p90_ms": 1000 * quantile_from_buckets(before, after, 0.90),
            "p99_ms": 1000 * quantile_from_buckets(before, after, 0.99),
            "machine_cpu_busy": (busy1 - busy0) / max(total1 - total0, 1.0),
            "source": "worker histogram slotwatch_event_time_lag_seconds (reading time stamp -> score), bucket-interpolated"}


def run(readings: int, sensors: int, latency_s: float, progress: bool = True) -> dict:
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker, free_port
    from worker.settings import KafkaSettings

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        d = Path(tmp)
        model = _model(d).parent
        res: dict = {"settings": {"readings": readings, "sensors": sensors, "partitions": 4, "units": 64, "slots": 256}}
        out = {}
        for name in ("run", "lat"):
            out[name] = {k: f"bench-{name}.{k}" for k in ("readings", "scores", "anomalies", "dead")}
            ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap),
                          {t: (4 if k == "readings" else 1) for k, t in out[name].items()})
        res["produce_per_s"] = _produce(broker.bootstrap, out["run"]["readings"], readings, sensors, progress)
        res["bare_consumer_per_s"] = _bare_consume(broker.bootstrap, out["run"]["readings"], readings, progress)
        port = free_port()
        proc = _start_worker(broker.bootstrap, out["run"], model, d / "ck1", port, False, d / "worker1.log")
        try:
            res["worker"] = _worker_rate(proc, port, readings, progress)
        finally:
            res["worker"] = dict(res.get("worker", {}), exit_code=_stop(proc))
        res["worker_over_bare"] = res["worker"]["readings_per_s"] / res["bare_consumer_per_s"]
        port2 = free_port()
        proc = _start_worker(broker.bootstrap, out["lat"], model, d / "ck2", port2, False, d / "worker2.log")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # ready = joined the group and restored
                try:
                    if _scrape(port2).get("slotwatch_ready", 0) >= 1:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            rate = res["worker"]["readings_per_s"] / 2
            res["latency"] = _latency(broker.bootstrap, out["lat"], rate, latency_s, min(sensors, 2000), port2, progress)
            # and at a rate that leaves the 2-core machine room for the producer and the broker
            res["latency_low_rate"] = _latency(broker.bootstrap, out["lat"], 1000.0, latency_s, min(sensors, 2000), port2, progress)
        finally:
            _stop(proc)
        # the floor: a bare consumer of the same feed on the same broker, same rates
        out["bare"] = {"readings": "bench-bare.readings"}
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), {out["bare"]["readings"]: 4})
        res["bare_latency"] = _bare_latency(broker.bootstrap, out["bare"]["readings"], rate, latency_s, min(sensors, 2000))
        res["bare_latency_low_rate"] = _bare_latency(broker.bootstrap, out["bare"]["readings"], 1000.0, latency_s, min(sensors, 2000))
    res["targets"] = {
        "worker_over_bare": {"target": 0.5, "measured": res["worker_over_bare"], "met": res["worker_over_bare"] >= 0.5},
        "latency_p99_ms": {"target": 50, "measured": res["latency"]["p99_ms"],
                           "met": res["latency"]["p99_ms"] is not None and res["latency"]["p99_ms"] <= 50},
    }
    return res


def report(res: dict) -> str:
    s = res["settings"]
    rows = [
        {"what": "bare kafka-python consumer + json.loads", "readings_per_s": res["bare_consumer_per_s"]},
        {"what": "slotwatch worker (B=256, units 64, anomalies only)", "readings_per_s": res["worker"]["readings_per_s"]},
        {"what": "producer (for reference)", "readings_per_s": res["produce_per_s"]},
    ]
    lat = res["latency"]
    lines = [f"## End to end through Kafka: {s['readings']:,} readings from {s['sensors']:,} sensors, local broker", "",
             md_table(rows, ["what", "readings_per_s"]), "",
             f"Worker / bare consumer: {res['worker_over_bare']:.2f}x"
             f"{'' if not res['worker'].get('rewinds') else ' (%d rewinds: polls replayed one reading at a time)' % res['worker']['rewinds']}",
             f"Load average at the end: {os.getloadavg()[0]:.2f}", "",
             f"Latency at {lat['rate']:,.0f} readings/s (half the worker's rate), reading time stamp to score: "
             f"p50 {lat['p50_ms']:.1f} ms, p90 {lat['p90_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms ({lat['measured']:,} readings; "
             f"machine CPU busy {100 * lat['machine_cpu_busy']:.0f}% with producer, broker and worker on it)", ""]
    low = res.get("latency_low_rate")
    if low:
        lines += [f"Latency at {low['rate']:,.0f} readings/s: p50 {low['p50_ms']:.1f} ms, p90 {low['p90_ms']:.1f} ms, "
                  f"p99 {low['p99_ms']:.1f} ms (machine CPU busy {100 * low['machine_cpu_busy']:.0f}%)", "",
                  f"Latency source: {lat['source']}.", ""]
    for key, label in (("bare_latency", "half rate"), ("bare_latency_low_rate", "1,000/s")):
        b = res.get(key)
        if b:
            lines += [f"Baseline, bare consumer of the same feed at {label} ({b['rate']:,.0f}/s): p50 {b['p50_ms']:.1f} ms, "
                      f"p90 {b['p90_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms (produce time stamp to receipt)", ""]
    lines += targets_md(res.get("targets", {}))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--readings", type=int, default=1_000_000, help="readings to send (default 1,000,000)")
    p.add_argument("--sensors", type=int, default=10_000, help="distinct sensors (default 10,000)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency run (default 20 s)")
    args = p.parse_args(argv)
    res = run(args.readings, args.sensors, args.latency_seconds)
    finish("e2e", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
