"""Helpers of the worker tests: settings for a test worker, a worker running in a thread,
readings as Kafka messages, the reference (uninterrupted, in-process) run."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np

from tests.broker import FAST_GROUP
from worker.codec import encode_reading
from worker.settings import Settings

STEP_MS = 60_000
T0 = 1_795_168_800_000


def worker_settings(broker, topics: dict, model_path: Path, ckpt: Path, **over) -> Settings:
    kafka = dict(
        bootstrap_servers=broker.bootstrap,
        readings_topic=topics["readings"],
        scores_topic=topics["scores"],
        anomalies_topic=topics["anomalies"],
        dead_letter_topic=topics["dead"],
        publish_scores=True,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        poll_timeout_ms=100,
        retry_backoff_ms=200,
        **FAST_GROUP,
    )
    kafka.update(over.pop("kafka", {}))
    model_s = dict(path=str(model_path), slots=8)
    model_s.update(over.pop("model", {}))
    ck = dict(dir=str(ckpt), interval_s=30.0)
    ck.update(over.pop("checkpoint", {}))
    over.setdefault("shutdown_grace_s", 20.0)
    return Settings(kafka=kafka, model=model_s, checkpoint=ck, metrics={"host": "127.0.0.1", "port": 0}, **over)


def fleet_messages(data: np.ndarray, ids: list[str], features: list[str], t0: int = T0, start: int = 0):
    """(key, value) of readings in time order: every sensor at step t, then t+1."""
    out = []
    n, steps, _ = data.shape
    for t in range(start, steps):
        for i in range(n):
            vals = {f: float(data[i, t, k]) for k, f in enumerate(features)}
            out.append((ids[i].encode(), encode_reading(ids[i], t0 + t * STEP_MS, vals)))
    return out


def partition_by_index(n_partitions: int):
    return lambda key: int(key.decode().lstrip("s").split("-")[-1]) % n_partitions


class RunningWorker:
    """A :class:`worker.app.Worker` in a thread (``stop()`` returns its exit code)."""

    def __init__(self, settings: Settings, artifact=None) -> None:
        from worker.app import Worker

        self.worker = Worker(settings, artifact=artifact)
        self.code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.worker.run()

    @property
    def port(self) -> int:
        """Port of the worker's /metrics endpoint (waits until it listens)."""
        for _ in range(200):
            if self.worker.health is not None:
                return self.worker.health.port
            time.sleep(0.05)
        raise AssertionError("the worker's HTTP server did not start")

    @property
    def metrics(self):
        return self.worker.metrics

    def wait_consumed(self, n: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics.consumed._value.get() >= n:  # noqa: SLF001
                return
            if not self.thread.is_alive():
                raise AssertionError(f"worker exited with {self.code}")
            time.sleep(0.05)
        raise AssertionError(f"worker consumed {self.metrics.consumed._value.get()} of {n} in {timeout} s")

    def stop(self, timeout: float = 30.0) -> int:
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        return self.code


def reference_detector(artifact, settings: Settings, readings):
    """The uninterrupted run: one in-process detector over all readings."""
    from worker.core.factory import detector_from_settings

    det = detector_from_settings(artifact, settings)  # as the worker builds it
    results = []
    for start in range(0, len(readings), 500):
        results += det.process(readings[start : start + 500])
    return det, results


def final_states(ckpt_dir: Path, topic: str) -> dict:
    """sensor id -> (state row, count, total) from the newest checkpoint of every partition."""
    from worker.checkpointing.store import CheckpointStore

    store = CheckpointStore(ckpt_dir, topic)
    out = {}
    for p in store.partitions():
        ck = store.load(p)
        cols = ck.columns
        for k, sid in enumerate(cols["sensor_id"]):
            out[str(sid)] = (cols["state"][k], int(cols["count"][k]), int(cols["total"][k]))
    return out


def scrape_labeled(port: int) -> dict[str, float]:
    """Sample ``name{k=v,...}`` -> value from a worker's /metrics (empty when it is not up)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lab = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{lab}}}" if lab else s.name] = s.value
    return out


def worker_env(broker, topics: dict, model_path: Path, ckpt: Path, port: int, **extra: str) -> dict:
    """Environment of a worker subprocess (``python -m worker.cli run``) for a test."""
    import os

    env = dict(
        os.environ,
        SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        SLOTWATCH_KAFKA__READINGS_TOPIC=topics["readings"],
        SLOTWATCH_KAFKA__SCORES_TOPIC=topics["scores"],
        SLOTWATCH_KAFKA__ANOMALIES_TOPIC=topics["anomalies"],
        SLOTWATCH_KAFKA__DEAD_LETTER_TOPIC=topics["dead"],
        SLOTWATCH_KAFKA__PUBLISH_SCORES="true",
        SLOTWATCH_KAFKA__GROUP_ID=f"g-{topics['readings']}",
        SLOTWATCH_KAFKA__POLL_TIMEOUT_MS="100",
        SLOTWATCH_KAFKA__SESSION_TIMEOUT_MS=str(FAST_GROUP["session_timeout_ms"]),
        SLOTWATCH_KAFKA__HEARTBEAT_INTERVAL_MS=str(FAST_GROUP["heartbeat_interval_ms"]),
        SLOTWATCH_KAFKA__MAX_POLL_INTERVAL_MS=str(FAST_GROUP["max_poll_interval_ms"]),
        SLOTWATCH_MODEL__PATH=str(model_path),
        SLOTWATCH_CHECKPOINT__DIR=str(ckpt),
        SLOTWATCH_METRICS__HOST="127.0.0.1",
        SLOTWATCH_METRICS__PORT=str(port),
        SLOTWATCH_SHUTDOWN_GRACE_S="20",
    )
    env.update(extra)
    return env


def on_tansu(broker) -> bool:
    return broker.embedded is not None  # SLOTWATCH_TEST_BOOTSTRAP may name a real Kafka


def read_values(bootstrap: str, topic: str, isolation: str = "read_committed", idle: float = 1.5) -> list[bytes]:
    """Every value of partition 0 of ``topic`` as a consumer of that isolation level sees it (until quiet for ``idle`` s)."""
    import time

    from kafka import TopicPartition

    from worker.kafka.transactions import make_committed_reader

    c = make_committed_reader(bootstrap, isolation_level=isolation)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out, last = [], time.monotonic()
    while time.monotonic() - last < idle:
        got = c.poll(timeout_ms=200)
        for recs in got.values():
            out += [r.value for r in recs]
            last = time.monotonic()
    c.close()
    return out


def scores_by_reading(records) -> dict[tuple[int, int], set[bytes]]:
    """Score messages grouped by the reading they score, ``(partition, offset)`` -> the distinct values."""
    import json

    by_key: dict[tuple[int, int], set[bytes]] = {}
    for r in records:
        d = json.loads(r.value)
        by_key.setdefault((d["partition"], d["offset"]), set()).add(r.value)
    return by_key
