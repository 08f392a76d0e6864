"""Silent sensors through the real worker and broker: episodes on the anomalies topic equal
`slotwatch replay`'s (also across a restart from checkpoints), and a partition whose
producer stopped shows on /metrics (the wall-clock watchdog)."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import STEP_MS, T0, RunningWorker, worker_settings
from worker.codec import encode_reading, encode_silence
from worker.core import artifact as art
from worker.replay import kafka_partition, replay_detector, replay_frame

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

N, STEPS, PARTS = 12, 160, 2
STOP = {"s3": (50, 120), "s8": (100, STEPS)}  # s3 comes back, s8 never does


def _rows(start: int, stop: int):
    data = sine_fleet(N, STEPS, 1, seed=9)
    out = []
    for t in range(start, stop):
        for i in range(N):
            sid = f"s{i}"
            a, b = STOP.get(sid, (STEPS, STEPS))
            if not a <= t < b:
                out.append((sid, T0 + t * STEP_MS, float(data[i, t, 0])))
    return out


def _msgs(rows):
    return [(sid.encode(), encode_reading(sid, ts, {"temp": v})) for sid, ts, v in rows]


def _episodes(kafka_broker, topic, expect):
    recs = kafka_broker.read_all(topic, expect=expect, idle=3.0)
    return [r.value for r in recs if json.loads(r.value).get("kind") == "silent"]  # score episodes share the topic


def _stall(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "slotwatch_partition_stream_stall_seconds":
                out[s.labels["partition"]] = s.value
            elif s.name in ("slotwatch_silent_sensors", "slotwatch_silence_episodes_total"):
                out[s.name + s.labels.get("event", "")] = s.value
    return out


def test_silence_episodes_equal_replay_across_a_restart_and_a_stalled_partition_shows(kafka_broker, artifact_1f, tmp_path):
    a1 = art.load(artifact_1f)
    topics = kafka_broker.topics("silence", partitions=PARTS)
    by_part = lambda key: kafka_partition(key.decode(), PARTS)  # noqa: E731 - Kafka's default partitioner
    assert len({kafka_partition(f"s{i}", PARTS) for i in range(N)}) == PARTS
    first, second = _rows(0, 110), _rows(110, STEPS)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", silence={"watchdog_s": 1.0})

    # the reference: `slotwatch replay --partitions 2` of the same readings
    rows = first + second
    df = pd.DataFrame({"sensor_id": [r[0] for r in rows], "ts_ms": [r[1] for r in rows], "temp": [r[2] for r in rows]})
    events: list = []
    det = replay_detector(a1, s)
    replay_frame(det, df, ["temp"], chunk=97, silence_events=events, partitions=PARTS)
    assert [(e.event, e.sensor_id) for e in events] == [("open", "s3"), ("open", "s8"), ("close", "s3")]
    want = [encode_silence(e, a1.version) for e in events]

    # the stream, in two runs of the worker (the second restores the first's checkpoints)
    kafka_broker.produce(topics["readings"], _msgs(first), by_part)
    w = RunningWorker(s, artifact=a1)
    w.wait_consumed(len(first))
    assert w.stop() == 0
    kafka_broker.produce(topics["readings"], _msgs(second), by_part)
    w = RunningWorker(s, artifact=a1)
    w.wait_consumed(len(second))
    got = _episodes(kafka_broker, topics["anomalies"], expect=None)
    assert sorted(set(got)) == sorted(want), "the stream's silence episodes differ from the replay's"
    assert len(got) == len(want), "an episode was published twice across the restart"
    for raw in got:
        ev = json.loads(raw)
        assert ev["kind"] == "silent" and ev["episode_id"].startswith(ev["sensor_id"] + "@")

    # the producer stopped: both partitions' stream time stands still while the worker owns them
    port = w.port
    deadline = time.monotonic() + 30
    while True:
        m = _stall(port)
        if all(m.get(str(p), 0) > 2.0 for p in range(PARTS)):
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.3)
    assert m["slotwatch_silent_sensors"] == 1  # s8, never back
    # both opened in the first run (restored as open, not published again); this run closed s3
    assert m["slotwatch_silence_episodes_totalopen"] == 0 and m["slotwatch_silence_episodes_totalclose"] == 1
    # one partition gets new readings (later time stamps): its stall resets, the other's goes on
    p0 = kafka_partition("s0", PARTS)
    more = [r for r in _rows(STEPS - 1, STEPS) if kafka_partition(r[0], PARTS) == p0]
    more = [(sid, ts + 2 * STEP_MS, v) for sid, ts, v in more]
    kafka_broker.produce(topics["readings"], _msgs(more), by_part)
    w.wait_consumed(len(second) + len(more))
    time.sleep(0.5)
    m2 = _stall(port)
    other = str(1 - p0)
    assert m2[str(p0)] < m[str(p0)] and m2[other] > m[other], (m, m2)
    assert w.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_kill_9_replays_the_same_silence_episodes(kafka_broker, artifact_1f, tmp_path):
    """The worker as a subprocess, SIGKILLed three times while silences open and close: every
    episode of the uninterrupted replay is published, nothing else, duplicates byte-identical."""
    import os
    import random
    import signal
    import subprocess
    import sys

    from tests.broker import FAST_GROUP
    from tests.test_worker_crash import _scrape
    from worker.kafka.embedded import free_port

    rng = random.Random(16)
    n, steps, parts = 100, 150, 2
    stops = {f"s{i}": (15 + 10 * k, 15 + 10 * k + (30 if k % 2 else 1000)) for k, i in enumerate(range(5, 95, 9))}
    data = sine_fleet(n, steps, 1, seed=3)
    rows = [(f"s{i}", T0 + t * STEP_MS, float(data[i, t, 0])) for t in range(steps) for i in range(n)
            if not stops.get(f"s{i}", (steps, steps))[0] <= t < stops.get(f"s{i}", (steps, steps))[1]]
    topics = kafka_broker.topics("silkill", partitions=parts)
    kafka_broker.produce(topics["readings"], _msgs(rows), lambda key: kafka_partition(key.decode(), parts))

    a1 = art.load(artifact_1f)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    df = pd.DataFrame({"sensor_id": [r[0] for r in rows], "ts_ms": [r[1] for r in rows], "temp": [r[2] for r in rows]})
    events: list = []
    det = replay_detector(a1, s, slots=64)
    replay_frame(det, df, ["temp"], chunk=500, silence_events=events, partitions=parts)
    want = {encode_silence(e, a1.version) for e in events}
    assert sum(e.event == "open" for e in events) == len(stops) and sum(e.event == "close" for e in events) == 5

    port = free_port()
    env = dict(
        os.environ,
        SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
        SLOTWATCH_KAFKA__READINGS_TOPIC=topics["readings"], SLOTWATCH_KAFKA__SCORES_TOPIC=topics["scores"],
        SLOTWATCH_KAFKA__ANOMALIES_TOPIC=topics["anomalies"], SLOTWATCH_KAFKA__DEAD_LETTER_TOPIC=topics["dead"],
        SLOTWATCH_KAFKA__GROUP_ID=f"silkill-{topics['readings']}", SLOTWATCH_KAFKA__MAX_POLL_RECORDS="300",
        SLOTWATCH_KAFKA__POLL_TIMEOUT_MS="100",
        SLOTWATCH_KAFKA__SESSION_TIMEOUT_MS=str(FAST_GROUP["session_timeout_ms"]),
        SLOTWATCH_KAFKA__HEARTBEAT_INTERVAL_MS=str(FAST_GROUP["heartbeat_interval_ms"]),
        SLOTWATCH_KAFKA__MAX_POLL_INTERVAL_MS=str(FAST_GROUP["max_poll_interval_ms"]),
        SLOTWATCH_MODEL__PATH=str(artifact_1f), SLOTWATCH_MODEL__SLOTS="64",
        SLOTWATCH_CHECKPOINT__DIR=str(tmp_path / "ck"), SLOTWATCH_CHECKPOINT__INTERVAL_READINGS="1200",
        SLOTWATCH_CHECKPOINT__INTERVAL_S="0.5", SLOTWATCH_METRICS__HOST="127.0.0.1", SLOTWATCH_METRICS__PORT=str(port),
    )
    log = open(tmp_path / "worker.log", "ab")

    def start():
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=log, stderr=log)

    for target in sorted(rng.sample(range(1500, len(rows) - 3000), 3)):
        p = start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = _scrape(port)
            if sum(v for k, v in m.items() if k.startswith("slotwatch_committed_offset{")) >= target or p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert p.poll() is None, f"worker exited early; see {tmp_path / 'worker.log'}"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    p = start()
    deadline = time.monotonic() + 180
    while True:
        m = _scrape(port)
        if sum(v for k, v in m.items() if k.startswith("slotwatch_committed_offset{")) >= len(rows):
            break
        assert p.poll() is None and time.monotonic() < deadline, f"the last worker did not finish; see {tmp_path / 'worker.log'}"
        time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    got = _episodes(kafka_broker, topics["anomalies"], expect=None)
    assert set(got) == want, f"missing {len(want - set(got))}, unexpected {len(set(got) - want)}"
