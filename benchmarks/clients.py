"""Kafka clients and JSON decoders side by side (issue 11, item 2): which is worth switching to?

One run, one embedded broker (tansu, :class:`worker.kafka.embedded.EmbeddedBroker`), one feed
of readings in :func:`worker.codec.encode_reading`'s format (ISO time stamps, 4 features):

* **consume**: kafka-python 3.x (a) without the ``crc32c`` package (its pure-Python CRC-32C
  check), (b) with ``crc32c`` (kafka-python imports it by itself when it is installed:
  ``kafka.record.util``), (c) for reference with ``check_crcs=False``, and (d) confluent-kafka
  (librdkafka) with batch ``consume(num_messages=...)`` and ``check.crcs=true`` like
  kafka-python.  Each bare, decoding each message with ``json.loads``, and with ``orjson``.
  Every consumer runs in its own process (so "without crc32c" really is without it) and is
  timed from its first record to the last one.
* **produce**: the same readings sent by each client (``linger 20 ms``, 256 KiB batches, acks=1).
* **decode**: per-message ``json.loads`` vs ``orjson`` vs ``msgspec``, and whole-poll decoding
  into columns (sensor ids, ts in epoch ms, an (n, F) float array) including today's
  :class:`worker.codec.ReadingCodec`, for ISO and epoch-ms time stamps.

Ratios are against kafka-python without ``crc32c`` (consume, produce) and ``json.loads``
(decode) measured in the same run.  ``python -m benchmarks.clients [--quick]`` writes
``<results>/<machine>-<date>-clients.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Timer, add_results_option, finish, md_table

FEATURES = ["temp", "pressure", "vibration", "current"]
POLL = 5000  # records per poll / consume call
FETCH_WAIT_MS = 20  # the worker's default (SLOTWATCH_KAFKA__FETCH_MAX_WAIT_MS), for both clients
T0_MS = 1_795_000_000_000


def readings(n: int, sensors: int, iso: bool, seed: int = 0) -> list[bytes]:
    """``n`` readings of ``sensors`` sensors, one per second each, as producers send them."""
    from worker.codec import encode_reading
    from worker.core.readings import format_ts

    rng = np.random.default_rng(seed)
    vals = np.round(rng.normal(50.0, 10.0, size=(n, len(FEATURES))), 3).tolist()
    ids = [f"pump-{i:05d}" for i in range(sensors)]
    out = []
    for i in range(n):
        ts_ms = T0_MS + (i // sensors) * 1000
        out.append(encode_reading(ids[i % sensors], format_ts(ts_ms) if iso else ts_ms, dict(zip(FEATURES, vals[i]))))
    return out


# ---------------------------------------------------------------- the clients, one per process

def _block_crc32c() -> None:
    sys.modules["crc32c"] = None  # ``from crc32c import ...`` now raises ImportError


def _decoder(decode: str):
    if decode == "json":
        return json.loads
    if decode == "orjson":
        import orjson

        return orjson.loads
    return None


def _kp_consume(bootstrap: str, topic: str, n: int, decode: str, check_crcs: bool, fast_records: bool = False) -> dict:
    """``fast_records``: with the worker's batch-at-once record parsing (worker.kafka.fast_records):
    the poll then answers values, not ConsumerRecords."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.record import util

    loads = _decoder(decode)
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, check_crcs=check_crcs,
                      fetch_max_wait_ms=FETCH_WAIT_MS, fetch_max_bytes=52428800, max_partition_fetch_bytes=4 * 1048576)
    if fast_records:
        from worker.kafka.fast_records import install

        if not install(c):
            raise RuntimeError("worker.kafka.fast_records did not install")
    value = (lambda r: r) if fast_records else (lambda r: r.value)
    c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
    c.seek_to_beginning()
    got, t, deadline = 0, None, time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500, max_records=POLL).values():
            if t is None:
                t, cpu = time.perf_counter(), time.process_time()
            if loads is not None:
                for r in recs:
                    loads(value(r))
            got += len(recs)
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    c.close()
    return {"records": got, "seconds": dt, "per_s": got / dt, "cpu_us": cpu / got * 1e6, "crc32c_loaded": util.crc32c_c is not None}


def _ck_consume(bootstrap: str, topic: str, n: int, decode: str, check_crcs: bool) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    loads = _decoder(decode)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-clients", "enable.auto.commit": False,
                  "check.crcs": check_crcs, "fetch.wait.max.ms": FETCH_WAIT_MS, "fetch.max.bytes": 52428800,
                  "max.partition.fetch.bytes": 4 * 1048576})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    got, t, deadline = 0, None, time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        msgs = c.consume(num_messages=POLL, timeout=0.5)
        if msgs and t is None:
            t, cpu = time.perf_counter(), time.process_time()
        if loads is not None:
            for m in msgs:
                if m.error() is None:
                    loads(m.value())
        got += len(msgs)
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    c.close()
    return {"records": got, "seconds": dt, "per_s": got / dt, "cpu_us": cpu / got * 1e6}


def _kp_produce(bootstrap: str, topic: str, n: int, sensors: int) -> dict:
    from kafka import KafkaProducer
    from kafka.record import util

    msgs = readings(n, sensors, iso=True)
    keys = [f"pump-{i:05d}".encode() for i in range(sensors)]
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    with Timer() as t:
        for i, v in enumerate(msgs):
            prod.send(topic, key=keys[i % sensors], value=v)
        prod.flush()
    prod.close()
    return {"records": n, "seconds": t.seconds, "per_s": n / t.seconds, "crc32c_loaded": util.crc32c_c is not None}


def _ck_produce(bootstrap: str, topic: str, n: int, sensors: int) -> dict:
    from confluent_kafka import Producer

    msgs = readings(n, sensors, iso=True)
    keys = [f"pump-{i:05d}".encode() for i in range(sensors)]
    failed = []
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 256 * 1024, "acks": 1,
                     "queue.buffering.max.messages": 1_000_000})
    with Timer() as t:
        for i, v in enumerate(msgs):
            while True:
                try:
                    prod.produce(topic, v, keys[i % sensors], on_delivery=lambda err, _m: err and failed.append(err))
                    break
                except BufferError:
                    prod.poll(0.05)
            if i % 1000 == 0:
                prod.poll(0)
        left = prod.flush(60)
    return {"records": n, "seconds": t.seconds, "per_s": n / t.seconds, "undelivered": left + len(failed)}


def _child(spec: dict) -> dict:
    if not spec.get("crc32c", True):
        _block_crc32c()
    client, role = spec["client"], spec["role"]
    if role == "produce":
        fn = _ck_produce if client == "confluent-kafka" else _kp_produce
        return fn(spec["bootstrap"], spec["topic"], spec["n"], spec["sensors"])
    fn = _ck_consume if client == "confluent-kafka" else _kp_consume
    if fn is _kp_consume:
        return fn(spec["bootstrap"], spec["topic"], spec["n"], spec["decode"], spec.get("check_crcs", True),
                  spec.get("fast_records", False))
    return fn(spec["bootstrap"], spec["topic"], spec["n"], spec["decode"], spec.get("check_crcs", True))


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.clients", "--child", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- JSON decoding, in process

def _columns_from_dicts(ds: list[dict], iso: bool):
    from worker.core.readings import parse_ts

    ids = [d["sensor_id"] for d in ds]
    ts = np.fromiter((parse_ts(d["ts"]) for d in ds), np.int64, len(ds)) if iso else np.array([d["ts"] for d in ds], np.int64)
    vals = np.array([[d["values"][f] for f in FEATURES] for d in ds], np.float64)
    return ids, ts, vals


def _iso_column(strings: list[str]) -> np.ndarray:
    """ISO ``...Z`` strings -> epoch ms in one numpy call (no per-reading Python)."""
    return np.char.rstrip(np.array(strings), "Z").astype("datetime64[ms]").astype(np.int64)


def decoders(iso: bool) -> dict:
    """name -> (kind, fn over a list of one poll's raw values)."""
    import msgspec
    import orjson

    from worker.codec import ReadingCodec

    Reading = msgspec.defstruct("Reading", [("sensor_id", str), ("ts", str if iso else int), ("values", dict[str, float])])

    one = msgspec.json.Decoder(Reading)
    many = msgspec.json.Decoder(list[Reading])
    generic = msgspec.json.Decoder()
    codec = ReadingCodec(FEATURES, max_bytes=65536)

    def today(raws):
        rs = [codec.decode(r, 0, i) for i, r in enumerate(raws)]
        return [r.sensor_id for r in rs], np.array([r.ts_ms for r in rs]), np.stack([r.values for r in rs])

    def struct_columns(rs):
        ts = [r.ts for r in rs]
        vals = np.array([[r.values[f] for f in FEATURES] for r in rs], np.float64)
        return [r.sensor_id for r in rs], (_iso_column(ts) if iso else np.array(ts, np.int64)), vals

    def orjson_joined(raws):
        ds = orjson.loads(b"[" + b",".join(raws) + b"]")
        ts = [d["ts"] for d in ds]
        vals = np.array([[d["values"][f] for f in FEATURES] for d in ds], np.float64)
        return [d["sensor_id"] for d in ds], (_iso_column(ts) if iso else np.array(ts, np.int64)), vals

    return {
        "json.loads": ("message", lambda raws: [json.loads(r) for r in raws]),
        "orjson.loads": ("message", lambda raws: [orjson.loads(r) for r in raws]),
        "msgspec (untyped)": ("message", lambda raws: [generic.decode(r) for r in raws]),
        "msgspec (Struct)": ("message", lambda raws: [one.decode(r) for r in raws]),
        "ReadingCodec.decode (today)": ("columns", today),
        "json.loads + parse_ts": ("columns", lambda raws: _columns_from_dicts([json.loads(r) for r in raws], iso)),
        "orjson.loads + parse_ts": ("columns", lambda raws: _columns_from_dicts([orjson.loads(r) for r in raws], iso)),
        "orjson whole poll + numpy ts": ("columns", orjson_joined),
        "msgspec Struct per msg + numpy ts": ("columns", lambda raws: struct_columns([one.decode(r) for r in raws])),
        "msgspec list[Struct] whole poll + numpy ts": ("columns", lambda raws: struct_columns(many.decode(b"[" + b",".join(raws) + b"]"))),
    }


def bench_decode(n: int, repeats: int, progress: bool) -> dict:
    out: dict = {}
    for iso in (True, False):
        fmt = "iso" if iso else "epoch_ms"
        raws = readings(n, 1000, iso=iso)
        polls = [raws[i:i + POLL] for i in range(0, n, POLL)]
        ref = _columns_from_dicts([json.loads(r) for r in polls[0]], iso)
        rows = []
        for name, (kind, fn) in decoders(iso).items():
            if kind == "columns":  # every column decoder must agree with the plain one
                ids, ts, vals = fn(polls[0])
                assert ids == ref[0] and np.array_equal(ts, ref[1]) and np.allclose(vals, ref[2]), name
            best = float("inf")
            for _ in range(repeats):
                with Timer() as t:
                    for p in polls:
                        fn(p)
                best = min(best, t.seconds)
            rows.append({"decoder": name, "kind": kind, "us_per_reading": best / n * 1e6, "per_s": n / best})
            if progress:
                print(f"  decode {fmt:8s} {name:45s} {best / n * 1e6:6.2f} µs/reading", flush=True)
        base = next(r for r in rows if r["decoder"] == "json.loads")["per_s"]
        base_cols = next(r for r in rows if r["decoder"] == "json.loads + parse_ts")["per_s"]
        for r in rows:
            r["x_json_loads"] = r["per_s"] / base
            if r["kind"] == "columns":
                r["x_json_columns"] = r["per_s"] / base_cols
        out[fmt] = rows
    out["bytes_per_reading"] = {"iso": len(readings(1, 1, True)[0]), "epoch_ms": len(readings(1, 1, False)[0])}
    return out


# ---------------------------------------------------------------- the run

CONSUMERS = [  # (label, client, crc32c importable, check_crcs, decode modes)
    ("kafka-python, no crc32c", "kafka-python", False, True, ("bare", "json", "orjson")),
    ("kafka-python + crc32c", "kafka-python", True, True, ("bare", "json", "orjson")),
    ("kafka-python, check_crcs=False", "kafka-python", False, False, ("bare",)),
    ("confluent-kafka consume(5000)", "confluent-kafka", True, True, ("bare", "json", "orjson")),
]
PRODUCERS = [("kafka-python, no crc32c", "kafka-python", False), ("kafka-python + crc32c", "kafka-python", True),
             ("confluent-kafka", "confluent-kafka", True)]
BASE = "kafka-python, no crc32c"


def run(quick: bool = False, progress: bool = True) -> dict:
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker
    from worker.settings import KafkaSettings

    import msgspec  # noqa: F401  - fail at once, not after the Kafka part: pip install -e '.[bench]'
    import orjson  # noqa: F401

    n = 50_000 if quick else 200_000
    sensors, rounds = 2_000, (1 if quick else 3)
    try:
        import confluent_kafka

        ck_version = f"{getattr(confluent_kafka, '__version__', confluent_kafka.version())} (librdkafka {confluent_kafka.libversion()[0]})"
    except ImportError:
        ck_version = None
    import kafka

    res: dict = {"settings": {"readings": n, "sensors": sensors, "partitions": 4, "features": len(FEATURES),
                              "records_per_poll": POLL, "rounds": rounds, "quick": quick},
                 "versions": {"kafka-python": kafka.__version__, "confluent-kafka": ck_version}}
    try:
        import crc32c  # noqa: F401

        have_crc = True
    except ImportError:
        have_crc = False
    def wanted(c):  # a variant whose package is missing is left out, not mislabelled
        return (ck_version or c[1] != "confluent-kafka") and (have_crc or c[1] != "kafka-python" or not c[2])

    consumers = [c for c in CONSUMERS if wanted(c)]
    producers = [c for c in PRODUCERS if wanted(c)]
    res["versions"]["crc32c"] = have_crc
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        topics = {f"bench-clients.p{i}": 4 for i in range(len(producers))}
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), topics)
        feed = "bench-clients.p0"  # what the first producer (the baseline) wrote: every consumer reads it
        prod_rows = []
        for (label, client, crc), topic in zip(producers, topics):
            r = _run_child({"role": "produce", "client": client, "crc32c": crc, "bootstrap": broker.bootstrap,
                            "topic": topic, "n": n, "sensors": sensors})
            prod_rows.append({"client": label, **r})
            if progress:
                print(f"  produce {label:32s} {r.get('per_s', float('nan')):>10,.0f} msg/s {r.get('error', '')}", flush=True)
        cons: dict = {}
        for rnd in range(rounds):  # rounds interleave the variants, so a busy moment hits all of them
            for label, client, crc, check, modes in consumers:
                for mode in modes:
                    r = _run_child({"role": "consume", "client": client, "crc32c": crc, "check_crcs": check,
                                    "decode": mode, "bootstrap": broker.bootstrap, "topic": feed, "n": n})
                    if client == "kafka-python" and "per_s" in r and r["crc32c_loaded"] != crc:
                        r = {"error": f"crc32c loaded={r['crc32c_loaded']}, expected {crc}"}
                    cons.setdefault((label, mode), []).append(r)
                    if progress:
                        print(f"  consume [{rnd + 1}/{rounds}] {label:32s} {mode:6s} {r.get('per_s', float('nan')):>10,.0f} msg/s "
                              f"{r.get('error', '')}", flush=True)
    rows = []
    for (label, mode), rs in cons.items():
        ok = [r for r in rs if "per_s" in r]
        best = max(ok, key=lambda r: r["per_s"]) if ok else {"error": rs[0].get("error")}
        if ok:
            best = dict(best, cpu_us=min(r["cpu_us"] for r in ok))  # least CPU per record of the rounds
        rows.append({"client": label, "decode": mode, **best, "all_per_s": [r.get("per_s") for r in rs]})
    for r in rows:
        base = next((b for b in rows if b["client"] == BASE and b["decode"] == r["decode"]), None)
        if base and "per_s" in r and "per_s" in base:
            r["x_baseline"] = r["per_s"] / base["per_s"]
            r["x_baseline_cpu"] = base["cpu_us"] / r["cpu_us"]
    pbase = next((p for p in prod_rows if p["client"] == BASE and "per_s" in p), None)
    for p in prod_rows:
        if pbase and "per_s" in p:
            p["x_baseline"] = p["per_s"] / pbase["per_s"]
    res["consume"], res["produce"] = rows, prod_rows
    res["decode"] = bench_decode(20_000 if quick else 100_000, 2 if quick else 3, progress)
    res["verdict"] = verdict(res)
    return res


def verdict(res: dict) -> dict:
    """The issue-11 question: is confluent-kafka >= 2x kafka-python end to end (consume + decode)?

    Compared with the same decoder on both sides, against the best kafka-python (with crc32c),
    and as microseconds per reading, the budget a worker has at a given rate (100,000/s = 10 µs).
    """
    def rate(client, mode):
        return next((r.get("per_s") for r in res["consume"] if r["client"] == client and r["decode"] == mode), None)

    def cpu(client, mode):
        return next((r.get("cpu_us") for r in res["consume"] if r["client"] == client and r["decode"] == mode), None)

    out: dict = {}
    for mode in ("bare", "json", "orjson"):
        ck = rate("confluent-kafka consume(5000)", mode)
        kp = max(filter(None, [rate("kafka-python + crc32c", mode), rate(BASE, mode)]), default=None)
        if ck and kp:
            ck_cpu, kp_cpu = cpu("confluent-kafka consume(5000)", mode), min(filter(None, [cpu("kafka-python + crc32c", mode), cpu(BASE, mode)]))
            out[mode] = {"confluent_per_s": ck, "best_kafka_python_per_s": kp, "ratio": ck / kp,
                         "confluent_cpu_us": ck_cpu, "kafka_python_cpu_us": kp_cpu, "ratio_cpu": kp_cpu / ck_cpu}
    if "orjson" in out:  # the batch codec will not use json.loads: compare with the fast decoder; CPU per
        out["confluent_at_least_2x"] = out["orjson"]["ratio_cpu"] >= 2.0  # record is what a busy worker pays
    return out


def report(res: dict) -> str:
    s = res["settings"]
    lines = [f"## Kafka clients and JSON decoders ({'quick' if s['quick'] else 'full'} run)", "",
             f"{s['readings']:,} readings ({s['sensors']:,} sensors, {s['features']} features, ISO ts), {s['partitions']} partitions, "
             f"embedded tansu broker, {s['records_per_poll']} records per poll; best of {s['rounds']} interleaved round(s). "
             f"kafka-python {res['versions']['kafka-python']}, confluent-kafka {res['versions']['confluent-kafka']}. "
             f"x = ratio to kafka-python without crc32c, same decode, same run.", "",
             "### Consume (each client in its own process, first record to last)", "",
             "per_s: wall clock of the fastest round; cpu_us: CPU time of the consumer process (all its threads) per record, least of"
             " the rounds, the steadier figure on a shared machine.", "",
             md_table(res["consume"], ["client", "decode", "per_s", "cpu_us", "x_baseline", "x_baseline_cpu"]), "",
             "### Produce", "", md_table(res["produce"], ["client", "per_s", "x_baseline"]), ""]
    for fmt in ("iso", "epoch_ms"):
        lines += [f"### Decode, {fmt} time stamps ({res['decode']['bytes_per_reading'][fmt]} bytes a reading; x = ratio to json.loads"
                  " per message; columns = ids + int64 ts + (n, F) float64 per poll)", "",
                  md_table(res["decode"][fmt], ["decoder", "kind", "us_per_reading", "x_json_loads", "x_json_columns"]), ""]
    v = res["verdict"]
    if v:
        lines += ["### Verdict: confluent-kafka vs. the best kafka-python (with crc32c), same decoder", "",
                  md_table([{"decode": m, **v[m]} for m in ("bare", "json", "orjson") if m in v],
                           ["decode", "confluent_per_s", "best_kafka_python_per_s", "ratio", "confluent_cpu_us", "kafka_python_cpu_us",
                            "ratio_cpu"]), ""]
        if "confluent_at_least_2x" in v:
            lines += [f"By CPU per record, confluent-kafka is {'at least' if v['confluent_at_least_2x'] else 'less than'} 2x "
                      f"kafka-python + crc32c consuming and decoding with orjson ({v['orjson']['ratio_cpu']:.2f}x; wall clock "
                      f"{v['orjson']['ratio']:.2f}x).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="50k readings, one round (about a minute)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    add_results_option(p)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    res = run(quick=args.quick)
    finish("clients", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
