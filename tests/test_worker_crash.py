"""DESIGN.md invariant 3 with real crashes: the worker runs as a subprocess (``python -m
worker.cli run``) and is killed with SIGKILL at random moments while it works through one
stream of 50,000 readings over 500 sensors; after the last restart every sensor's h and c
equal an uninterrupted run's, every reading was scored, and duplicates carry the same bytes.
Some sensors jump for a few readings, so episodes are open when the kills land: their open and
close messages are the uninterrupted run's, byte for byte, and some episode spans a kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import (
    scores_by_reading,
    fleet_messages, final_states, partition_by_index, reference_detector, scrape_labeled, worker_env, worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.kafka.embedded import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(480)]

N_SENSORS, STEPS, PARTITIONS, SLOTS, KILLS = 500, 100, 4, 128, 5


_scrape = scrape_labeled  # name{labels} -> value from the worker's /metrics (empty when it is not up)


def _committed_total(broker, env, topic: str, partitions: int) -> int:
    """The worker group's committed offsets of ``topic``, summed (OffsetFetch; the reader joins no group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=env["SLOTWATCH_KAFKA__GROUP_ID"], enable_auto_commit=False)
    try:
        return sum(max(0, c.committed(TopicPartition(topic, p)) or 0) for p in range(partitions))
    finally:
        c.close()


def test_kill_9_at_random_moments_loses_nothing_applies_nothing_twice(kafka_broker, kafka_client, artifact_1f, tmp_path):
    rng = random.Random(4)
    ids = [f"s{i}" for i in range(N_SENSORS)]
    data = sine_fleet(N_SENSORS, STEPS, 1, seed=21)
    for i in range(0, N_SENSORS, 10):  # episodes all through the stream
        t = 12 + (i * 7) % 50
        data[i, t : t + 3, 0] += 12.0
    msgs = fleet_messages(data, ids, ["temp"])
    assert len(msgs) == 50_000
    topics = kafka_broker.topics("crash", partitions=PARTITIONS)
    kafka_broker.produce(topics["readings"], msgs, partition_by_index(PARTITIONS))

    ck = tmp_path / "ck"
    port = free_port()
    env = worker_env(
        kafka_broker, topics, artifact_1f, ck, port,
        SLOTWATCH_KAFKA__GROUP_ID=f"crash-{topics['readings']}",
        SLOTWATCH_KAFKA__MAX_POLL_RECORDS="500",
        SLOTWATCH_MODEL__SLOTS=str(SLOTS),
        SLOTWATCH_CHECKPOINT__INTERVAL_READINGS="2500",
        SLOTWATCH_CHECKPOINT__INTERVAL_S="0.5",
    )
    log = open(tmp_path / "worker.log", "ab")

    def start():
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=log, stderr=log)

    # kill points spread over the whole stream (progress = offsets committed, all partitions),
    # each followed by a random delay so the kill lands anywhere in the work between checkpoints
    targets = sorted(rng.sample(range(1000, len(msgs) - 4000), KILLS))
    kills = []
    kill_ms = []
    for target in targets:
        p = start()
        deadline = time.monotonic() + 120
        progress = 0.0
        while time.monotonic() < deadline:
            m = _scrape(port)
            progress = sum(v for name, v in m.items() if name.startswith("slotwatch_committed_offset{"))
            if progress >= target or p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        assert p.poll() is None, f"worker exited early ({p.returncode}); see {tmp_path / 'worker.log'}"
        consumed = _scrape(port).get("slotwatch_readings_consumed_total", 0.0)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kill_ms.append(int(time.time() * 1000))
        kills.append((int(progress), int(consumed)))
    assert len(kills) == KILLS and all(c > 0 for _, c in kills), kills

    # the last life runs to the end of the stream, then SIGTERM
    p = start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        m = _scrape(port)
        lags = [v for name, v in m.items() if name.startswith("slotwatch_consumer_lag{")]
        if len(lags) == PARTITIONS and not any(lags):
            # caught up; or nothing was left for this life: the life before it consumed the whole
            # stream and committed it before its kill (a fast client can), so this one consumes nothing
            if m.get("slotwatch_readings_consumed_total", 0) > 0 or _committed_total(kafka_broker, env, topics["readings"], PARTITIONS) >= len(msgs):
                break
        assert p.poll() is None, f"worker exited ({p.returncode}); see {tmp_path / 'worker.log'}"
        time.sleep(0.5)
    else:
        pytest.fail("the final worker did not catch up")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert time.monotonic() - t0 < 20

    # every sensor's final h and c equal the uninterrupted run's
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v, partition_by_index(PARTITIONS)(k)) for k, v in msgs]
    settings = worker_settings(kafka_broker, topics, artifact_1f, ck, model={"slots": SLOTS})
    ref, ref_scores = reference_detector(art.load(artifact_1f), settings, readings)
    states = final_states(ck, topics["readings"])
    assert sorted(states) == sorted(ids)
    for sid in ids:
        state, count, total = states[sid]
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6, err_msg=sid)
        assert total == STEPS, (sid, total)

    # every reading scored (at least once), duplicates identical, values as the uninterrupted run
    recs = kafka_broker.read_all(topics["scores"], expect=None, timeout=120, idle=3.0)
    by_key = scores_by_reading(recs)
    assert len(by_key) == len(msgs), f"{len(msgs) - len(by_key)} readings never scored"
    assert all(len(v) == 1 for v in by_key.values()), "a duplicate carries different values"
    dups = len(recs) - len(by_key)
    ref_by = {(s.sensor_id, s.ts_ms): s for s in ref_scores}
    for vals in by_key.values():
        d = json.loads(next(iter(vals)))
        r = ref_by[(d["sensor_id"], d["ts_ms"])]
        assert abs(d["score"] - r.score) < 1e-5 and abs(d["error"] - r.error) < 1e-5 * max(1.0, r.error)

    # episode messages (the anomalies topic's default content): the uninterrupted run's, byte for byte
    from worker.codec import encode_episode

    version = art.load(artifact_1f).version
    want = {encode_episode(e, version) for r in ref_scores if getattr(r, "episodes", None) for e in r.episodes}
    eps = kafka_broker.read_all(topics["anomalies"], expect=None, timeout=60, idle=3.0)
    by_event: dict[tuple[str, str], set[bytes]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for r in eps:
        d = json.loads(r.value)
        k = (d["episode_id"], d["event"])
        by_event.setdefault(k, set()).add(r.value)
        first_seen[k] = min(first_seen.get(k, r.timestamp), r.timestamp)
    assert all(len(v) == 1 for v in by_event.values()), "a duplicate episode message carries different bytes"
    assert {next(iter(v)) for v in by_event.values()} == want and len(want) >= 2 * (N_SENSORS // 10)
    spans = [eid for (eid, ev) in by_event if ev == "close"
             and any(first_seen[(eid, "open")] < k < first_seen[(eid, "close")] for k in kill_ms)]
    assert spans, "no episode was open across a kill"
    print(f"kills at (committed progress, consumed in that life) {kills}; {dups} duplicate outputs; "
          f"{len(want)} episode messages, {len(eps) - len(by_event)} duplicates, {len(spans)} episodes across a kill")
