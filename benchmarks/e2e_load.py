"""The e2e benchmark's other processes: the load generator and the bare consumers.

* :func:`produce_at_rate` -- the load generator of a latency run, in its own process (as
  real producers are): ``rate`` readings per second in 1 ms slots, each reading stamped with
  the wall clock when it is handed to the producer (its ``ts`` and the record's time stamp),
  in ``encode_reading``'s format (epoch-ms ``ts``).  Client ``confluent`` (librdkafka, the
  default when installed: a C producer leaves the two cores to the broker and the worker) or
  ``kafka-python``; ``linger_ms`` is the producer's linger.
* :func:`bare_latency` -- the baseline of a latency run: a bare consumer of the same feed
  with the worker's client and the worker's fetch/poll settings that only decodes the JSON
  (``json.loads``) and takes ``now - ts`` per reading, in its own process.
* :func:`cpu_of` / :class:`CpuMeter` -- CPU seconds of processes (``/proc/<pid>/stat``) and of
  the whole machine, so a run says who used the two cores.

Each entry point runs in a child (``spawn``) and answers a JSON dict through a file.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np


def have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- CPU accounting
def cpu_of(pid: int) -> float:
    """CPU seconds (user + system, children waited for included) of a live process; 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(float(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [float(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


class CpuMeter:
    """CPU used by named processes and by the machine between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)

    def start(self) -> "CpuMeter":
        self.wall = time.monotonic()
        self.t0 = {k: cpu_of(p) for k, p in self.pids.items()}
        self.last = dict(self.t0)
        self.m0 = machine_cpu()
        return self

    def add(self, name: str, pid: int) -> None:
        """A process started after :meth:`start` (counted from its start)."""
        self.pids[name] = pid
        self.t0[name] = self.last[name] = 0.0

    def sample(self) -> None:
        """Remember each process's CPU time (a child that exits takes its count with it)."""
        for k, p in self.pids.items():
            v = cpu_of(p)
            if v:
                self.last[k] = v

    def stop(self) -> dict:
        self.sample()
        busy1, total1 = machine_cpu()
        wall = time.monotonic() - self.wall
        out = {f"{k}_cores": max(0.0, self.last.get(k, 0.0) - self.t0.get(k, 0.0)) / wall for k in self.pids}
        out["machine_busy"] = (busy1 - self.m0[0]) / max(total1 - self.m0[1], 1.0)
        out["cores"] = os.cpu_count()
        return out


# ---------------------------------------------------------------- the load generator
def produce_at_rate(bootstrap: str, topic: str, rate: float, n: int, sensors: int, out: str,
                    client: str = "confluent", linger_ms: float = 1.0) -> None:
    """Send ``n`` readings stamped at send time, ``rate`` per second; write what it did to ``out``."""
    ids = [f"lat-{i:05d}" for i in range(sensors)]
    keys = [s.encode() for s in ids]
    heads = [('{"sensor_id":"%s","ts":' % s) for s in ids]
    vals = np.random.default_rng(1).normal(size=n).tolist()
    if client == "confluent":
        from confluent_kafka import Producer

        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": 1,
                         "queue.buffering.max.messages": 1_000_000})

        def send(key, value, ts):
            prod.produce(topic, value, key, timestamp=ts)

        def serve():
            prod.poll(0)

        def finish():
            return prod.flush(30)
    else:
        from kafka import KafkaProducer

        prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=int(linger_ms), acks=1)

        def send(key, value, ts):
            prod.send(topic, key=key, value=value, timestamp_ms=ts)

        def serve():
            pass

        def finish():
            prod.flush()
            prod.close()
            return 0
    cpu0, t0 = time.process_time(), time.monotonic()
    sent, late = 0, []
    while sent < n:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        late.append(max(0.0, (time.monotonic() - t0) - sent / rate))  # how far the sender is behind its schedule
        now_ms = int(time.time() * 1000)
        while sent < due:
            k = sent % sensors
            send(keys[k], (heads[k] + f'{now_ms},"values":{{"value":{vals[sent]!r}}}}}').encode(), now_ms)
            sent += 1
        serve()
        nxt = t0 + sent / rate
        pause = nxt - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, 0.001))
    dt = time.monotonic() - t0
    left = finish()
    lat = np.asarray(late) * 1000
    with open(out, "w") as f:
        json.dump({"client": client, "linger_ms": linger_ms, "sent": n, "seconds": dt, "rate": n / dt,
                   "behind_p99_ms": float(np.percentile(lat, 99)), "behind_max_ms": float(lat.max()),
                   "cpu_cores": (time.process_time() - cpu0) / dt, "undelivered": left}, f)


# ---------------------------------------------------------------- the bare consumer's latency
def bare_latency(bootstrap: str, topic: str, client: str, seconds_quiet: float, expect: int, out: str,
                 ready: str, group: bool = False) -> None:
    """Read the feed from its end, ``json.loads`` each reading, latency = now - ts; stop after
    ``expect`` readings or ``seconds_quiet`` without any.  Touches ``ready`` once positioned.
    ``group``: a consumer-group member (subscribe, as the worker) instead of an assigned consumer.
    ``$BARE_BUSY_MS``: after each poll with readings, that long of pure-Python work holding the
    GIL (the worker's ~4 ms handling, without the worker), after the latency is taken."""
    from worker.settings import KafkaSettings

    busy_s = float(os.environ.get("BARE_BUSY_MS") or 0) / 1000

    k = KafkaSettings()
    lat: list[np.ndarray] = []
    got, t_last = 0, time.monotonic()
    loads = json.loads
    if client == "confluent":
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{os.getpid()}", "enable.auto.commit": False,
                      "fetch.wait.max.ms": k.fetch_max_wait_ms})
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])

        def poll():  # as the worker's ConfluentSource.poll: what is queued, else wait for one and take what came
            n = k.max_poll_records
            msgs = c.consume(num_messages=n, timeout=0)
            if not msgs:
                msgs = c.consume(num_messages=1, timeout=k.poll_timeout_ms / 1000)
                if msgs and n > 1:
                    msgs += c.consume(num_messages=n - 1, timeout=0)
            return [m.value() for m in msgs if m.error() is None]
    else:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bare-{os.getpid()}" if group else None,
                          enable_auto_commit=False, auto_offset_reset="latest",
                          fetch_max_wait_ms=k.fetch_max_wait_ms, max_poll_records=k.max_poll_records)
        if group:
            c.subscribe([topic])
            deadline = time.monotonic() + 60
            while not c.assignment() and time.monotonic() < deadline:
                c.poll(timeout_ms=100)
        else:
            c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
            c.seek_to_end()
        for tp in c.assignment():
            c.position(tp)  # resolve the end now, not at the first poll

        def poll():
            return [r.value for recs in c.poll(timeout_ms=k.poll_timeout_ms, max_records=k.max_poll_records).values()
                    for r in recs]
    poll()
    open(ready, "w").close()
    cpu0, t_last = time.process_time(), time.monotonic()  # quiet is counted from ready (a group join takes seconds)
    while got < expect and time.monotonic() - t_last < seconds_quiet:
        vals = poll()
        if not vals:
            continue
        ts = np.fromiter((loads(v)["ts"] for v in vals), np.float64, len(vals))
        lat.append(time.time() * 1000 - ts)
        got += len(vals)
        t_last = time.monotonic()
        while time.monotonic() - t_last < busy_s:
            pass
    cpu = time.process_time() - cpu0
    c.close()
    a = np.concatenate(lat) if lat else np.zeros(0)
    with open(out, "w") as f:
        json.dump({"client": client, "received": int(len(a)), "cpu_s": cpu, **percentiles(a)}, f)


def percentiles(ms: np.ndarray) -> dict:
    if not len(ms):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(ms.max())}


# ---------------------------------------------------------------- the scores topic
def scores_latency(bootstrap: str, topic: str, since_ms: int, until_ms: int) -> dict:
    """Score messages of readings stamped in [since_ms, until_ms): score record time stamp (the
    worker's producer stamps it at send) minus the reading's ``ts_ms``; read after the run."""
    import re

    from kafka import KafkaConsumer, TopicPartition

    pat = re.compile(rb'"ts_ms":(\d+)')
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=20)
    c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
    c.seek_to_beginning()
    lat, quiet = [], time.monotonic()
    while time.monotonic() - quiet < 2.0:
        polled = c.poll(timeout_ms=200, max_records=20000)
        for recs in polled.values():
            quiet = time.monotonic()
            for r in recs:
                m = pat.search(r.value)
                if m is not None:
                    ts = int(m.group(1))
                    if since_ms <= ts < until_ms:
                        lat.append(r.timestamp - ts)
    c.close()
    a = np.asarray(lat, np.float64)
    return {"scores": int(len(a)), **percentiles(a),
            "source": "scores topic: score record time stamp (worker's send) - reading ts_ms"}
