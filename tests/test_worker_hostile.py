"""Issue 10 against a real broker: the hostile messages of the issue in the readings topic.

The worker (a subprocess, as in production) passes them, is killed with SIGKILL and
restarted, passes them again, and each life's counters add up
(consumed = scored + rejected + skipped, scraped from /metrics); the final state equals an
uninterrupted run over the good readings only, so no hostile message changed anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import (
    STEP_MS, T0, fleet_messages, final_states, partition_by_index, reference_detector, scrape_labeled, worker_env,
    worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.kafka.embedded import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

P = 2
PART = partition_by_index(P)


def _hostile(t: int) -> list[tuple[bytes | None, bytes, int, str]]:
    """(key, value, partition, expected reason) of the issue's crashers, dated around step ``t``."""
    ts = T0 + t * STEP_MS
    future = int(time.time() * 1000) + 30 * 86_400_000
    return [
        (b"s0", b'{"sensor_id":"s0","ts":"\xc2\xb2","values":{"temp":1.0}}', 0, "bad_timestamp"),
        (b"s0", b'{"sensor_id":"s0","ts":1e300,"values":{"temp":1.0}}', 0, "bad_timestamp"),
        (b"s2", b'{"sensor_id":"s2","ts":18446744073709551616,"values":{"temp":1.0}}', 0, "bad_timestamp"),
        (b"s1", b'{"sensor_id":"s1","ts":1e17,"values":{"temp":1.0}}', 1, "bad_timestamp"),
        (b"\xed\xa0\x80", b'{"sensor_id":"\\ud800","ts":%d,"values":{"temp":1.0}}' % ts, 1, "bad_sensor_id"),
        (b"fresh-1", b'{"sensor_id":"fresh-1","ts":%d,"values":{"temp":1e308}}' % ts, 1, "non_finite"),
        (b"s0", b'{"sensor_id":"s0","ts":%d,"values":{"temp":1.0}}' % future, 0, "bad_timestamp"),
        (b"s4", b'{"sensor_id":"s4","ts":%d,"values":{"temp":1.0}}' % ts, 1, "wrong_partition"),  # s4 lives on 0
        (b"s3", b'{"sensor_id":"s3","ts":%d,"values":{"temp":' % ts + b"9" * 5000 + b"}}", 1, "not_json"),
        (b"s3", b"\x00\xff garbage", 1, "not_json"),
    ]


def _wait(port, proc, cond, timeout, what, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = scrape_labeled(port)
        if m and cond(m):
            return m
        assert proc.poll() is None, f"worker exited ({proc.returncode}) while waiting for {what}; see {log}"
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; see {log}")


def _counts(m):
    rejected = {k.split("reason=")[1][:-1]: v for k, v in m.items()
                if k.startswith("slotwatch_readings_rejected_total{") and v}
    return (m.get("slotwatch_readings_consumed_total", 0), m.get("slotwatch_readings_scored_total", 0),
            rejected, m.get("slotwatch_readings_skipped_total", 0))


def test_hostile_messages_survive_kill_9_and_change_nothing(kafka_broker, kafka_client, artifact_1f, tmp_path):
    ids = [f"s{i}" for i in range(6)] + ["fresh-1"]
    data = sine_fleet(len(ids), 30, 1, seed=31)
    phase1 = fleet_messages(data[:, :10], ids, ["temp"])
    good2 = fleet_messages(data, ids, ["temp"], start=10)
    hostile = _hostile(12)
    # phase 2: the hostile messages among the good ones (after step 12 of the fleet)
    cut = 3 * len(ids)
    phase2 = [(k, v, PART(k)) for k, v in good2[:cut]] + [(k, v, p) for k, v, p, _ in hostile] + \
             [(k, v, PART(k)) for k, v in good2[cut:]]
    topics = kafka_broker.topics("hostile", partitions=P)
    kafka_broker.produce(topics["readings"], phase1, PART)

    ck = tmp_path / "ck"
    port = free_port()
    log_path = tmp_path / "worker.log"
    log = open(log_path, "ab")

    def start(**extra):
        env = worker_env(kafka_broker, topics, artifact_1f, ck, port, SLOTWATCH_MODEL__SLOTS="4", **extra)
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=log, stderr=log)

    # life 1: phase 1, checkpointed and committed (every sensor restored on later lives), then kill -9
    p = start(SLOTWATCH_CHECKPOINT__INTERVAL_S="0.5")
    _wait(port, p, lambda m: sum(v for k, v in m.items() if k.startswith("slotwatch_committed_offset{")) >= len(phase1),
          120, "phase 1 checkpointed", log_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()

    # the hostile phase: produced with explicit partitions
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for k, v, part in phase2:
        prod.send(topics["readings"], key=k, value=v, partition=part)
    prod.flush(60)
    prod.close()

    want_rejected: dict[str, int] = {}
    for *_, reason in hostile:
        want_rejected[reason] = want_rejected.get(reason, 0) + 1
    lives = []
    for life in (2, 3):  # life 2 is killed with -9 before any checkpoint; life 3 passes them again
        p = start(SLOTWATCH_CHECKPOINT__INTERVAL_S="3600")
        m = _wait(port, p, lambda m: _counts(m)[0] >= len(phase2), 120, f"life {life} consumed phase 2", log_path)
        time.sleep(1.0)
        m = scrape_labeled(port)
        consumed, scored, rejected, skipped = _counts(m)
        lives.append((consumed, scored, rejected, skipped))
        assert consumed == scored + sum(rejected.values()) + skipped, (life, m)
        assert (consumed, scored, rejected, skipped) == (len(phase2), len(good2), want_rejected, 0), life
        assert m.get("slotwatch_rewinds_total", 0) == 0
        if life == 2:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0

    # the final state equals an uninterrupted run over the good readings only
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v, PART(k)) for k, v in phase1 + good2]
    settings = worker_settings(kafka_broker, topics, artifact_1f, ck, model={"slots": 4})
    ref, ref_scores = reference_detector(art.load(artifact_1f), settings, readings)
    states = final_states(ck, topics["readings"])
    assert sorted(states) == sorted(ids)
    for sid in ids:
        np.testing.assert_allclose(states[sid][0], ref.sensor_state(sid), atol=1e-6, err_msg=sid)
        assert states[sid][2] == 30, sid

    # every good reading scored, duplicates (life 2 and 3) byte-identical; every hostile one dead-lettered twice
    recs = kafka_broker.read_all(topics["scores"], expect=None, timeout=60, idle=3.0)
    by_key: dict[tuple[int, int], set[bytes]] = {}
    for r in recs:
        d = json.loads(r.value)
        by_key.setdefault((d["partition"], d["offset"]), set()).add(r.value)
    assert len(by_key) == len(phase1) + len(good2) and all(len(v) == 1 for v in by_key.values())
    dead = kafka_broker.read_all(topics["dead"], expect=2 * len(hostile), timeout=60)
    got = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert got == sorted([h[3] for h in hostile] * 2)
    assert all(dict(r.headers)["detail"] for r in dead)
