"""The worker against a real Kafka-protocol broker: end to end, dead letters, restarts,
checkpoint fallback, /metrics.  Each test uses its own topics and consumer group."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import (
    STEP_MS, T0, RunningWorker, fleet_messages, final_states, partition_by_index, reference_detector, worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.core.readings import Score

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def art1(artifact_1f):
    return art.load(artifact_1f)


def _scores(records):
    return [json.loads(r.value) for r in records]


def _fleet(n=8, steps=40, seed=5, spike=True):
    data = sine_fleet(n, steps, 1, seed=seed)
    if spike:
        data[3, 30, 0] += 12.0  # an anomaly to find
    return data, [f"s{i}" for i in range(n)]


def test_end_to_end_scores_equal_replay(kafka_broker, art1, artifact_1f, tmp_path):
    from worker.replay import replay_frame
    from worker.core.detector import SlotDetector

    data, ids = _fleet()
    topics = kafka_broker.topics("e2e", partitions=2)
    msgs = fleet_messages(data, ids, ["temp"])
    kafka_broker.produce(topics["readings"], msgs, partition_by_index(2))
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(msgs))
    assert w.stop() == 0
    got = _scores(kafka_broker.read_all(topics["scores"], expect=len(msgs)))
    assert len(got) == len(msgs)

    # the same data through `slotwatch replay`'s function
    n, steps, _ = data.shape
    df = pd.DataFrame({
        "sensor_id": [ids[i] for t in range(steps) for i in range(n)],
        "ts_ms": [T0 + t * STEP_MS for t in range(steps) for i in range(n)],
        "temp": [data[i, t, 0] for t in range(steps) for i in range(n)],
    })
    ref = replay_frame(SlotDetector(art1, slots=s.model.slots), df, ["temp"], chunk=64)
    ref_by = {(r.sensor_id, int(r.ts)): r for r in ref.itertuples()}
    for g in got:
        r = ref_by[(g["sensor_id"], g["ts_ms"])]
        assert g["score"] == pytest.approx(r.score, abs=1e-5)
        assert g["error"] == pytest.approx(r.error, rel=1e-5, abs=1e-6)
        assert g["expected"]["temp"] == pytest.approx(r.expected_temp, rel=1e-5, abs=1e-6)
        assert g["is_anomaly"] == bool(r.is_anomaly)
        assert g["warming_up"] == bool(r.warming_up)
        assert g["model_version"] == art1.version and g["values"]["temp"] == pytest.approx(r.temp)
    anomalies = _scores(kafka_broker.read_all(topics["anomalies"], expect=int(ref.is_anomaly.sum())))
    assert ref.is_anomaly.sum() >= 1, "the fixture should contain at least one anomaly"
    assert sorted((a["sensor_id"], a["ts_ms"]) for a in anomalies) == sorted(
        (r.sensor_id, int(r.ts)) for r in ref.itertuples() if r.is_anomaly)
    assert all(a["is_anomaly"] for a in anomalies)
