"""The worker survives a broker outage (readiness false meanwhile, nothing lost), and refuses
a checkpoint that does not fit the model; a checkpoint with another ring length restores."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from tests.broker import TestBroker
from tests.conftest import sine_fleet
from tests.worker_helpers import RunningWorker, fleet_messages, worker_settings
from worker.app import EXIT_CHECKPOINT
from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except urllib.error.HTTPError as e:
        assert e.code == 503
        return False


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(bool(os.environ.get("SLOTWATCH_TEST_BOOTSTRAP")), reason="pauses its own embedded broker")
def test_broker_outage_readiness_goes_false_and_nothing_is_lost(kafka_client, artifact_1f, tmp_path):
    from worker.kafka.embedded import EmbeddedBroker

    a = art.load(artifact_1f)
    data = sine_fleet(6, 30, 1, seed=8)
    ids = [f"s{i}" for i in range(6)]
    first, second = fleet_messages(data[:, :15], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=15)
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as eb:
        broker = TestBroker(eb.bootstrap, eb)
        topics = broker.topics("outage")
        s = worker_settings(broker, topics, artifact_1f, tmp_path / "ck", checkpoint={"interval_s": 0.5},
                            kafka={"request_timeout_ms": 5000})
        broker.produce(topics["readings"], first)
        w = RunningWorker(s, artifact=a)
        port = w.port
        w.wait_consumed(len(first))
        _wait(lambda: _ready(port), 30, "ready")
        eb.pause()  # the broker stops answering (SIGSTOP keeps its data)
        try:
            _wait(lambda: not _ready(port), 30, "readiness to go false during the outage")
            assert w.metrics.broker_up._value.get() == 0
            assert w.thread.is_alive()
        finally:
            eb.resume()
        broker.produce(topics["readings"], second)
        w.wait_consumed(len(first) + len(second), timeout=120)
        _wait(lambda: _ready(port), 60, "readiness to come back")
        assert w.stop() == 0
        scores = [json.loads(r.value) for r in broker.read_all(topics["scores"], expect=None, idle=3.0)]
        got = {(x["sensor_id"], x["ts_ms"]) for x in scores}
        assert got == {(k.decode(), json.loads(v)["ts"]) for k, v in first + second}


def test_checkpoint_of_a_model_with_other_features_is_refused(kafka_broker, artifact_1f, artifact_3f, tmp_path):
    a = art.load(artifact_1f)
    other = art.load(artifact_3f)  # another kind of model: its rows cannot be handed over
    msgs = fleet_messages(sine_fleet(4, 10, 1, seed=9), [f"s{i}" for i in range(4)], ["temp"])
    topics = kafka_broker.topics("features")
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    kafka_broker.produce(topics["readings"], msgs)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(msgs))
    assert w.stop() == 0
    w = RunningWorker(s, artifact=other)
    w.thread.join(60)
    assert w.code == EXIT_CHECKPOINT
    assert w.metrics.consumed._value.get() == 0


@pytest.mark.skipif(bool(os.environ.get("SLOTWATCH_TEST_BOOTSTRAP")), reason="pauses its own embedded broker")
def test_stop_during_an_outage_checkpoints_and_exits_within_the_grace_period(kafka_client, artifact_1f, tmp_path):
    from worker.checkpointing.store import CheckpointStore
    from worker.kafka.embedded import EmbeddedBroker

    a = art.load(artifact_1f)
    data = sine_fleet(4, 12, 1, seed=10)
    msgs = fleet_messages(data, [f"s{i}" for i in range(4)], ["temp"])
    with EmbeddedBroker() as eb:
        broker = TestBroker(eb.bootstrap, eb)
        topics = broker.topics("stop-outage")
        s = worker_settings(broker, topics, artifact_1f, tmp_path / "ck", shutdown_grace_s=8.0,
                            kafka={"request_timeout_ms": 3000})
        broker.produce(topics["readings"], msgs)
        w = RunningWorker(s, artifact=a)
        w.wait_consumed(len(msgs))
        time.sleep(0.5)  # let the producer send the outputs (they are flushed at the checkpoint)
        eb.pause()
        try:
            t0 = time.monotonic()
            w.worker.request_stop()
            w.thread.join(30)
            took = time.monotonic() - t0
        finally:
            eb.resume()
        assert not w.thread.is_alive() and w.code == 0
        assert took < s.shutdown_grace_s, took
        ck = CheckpointStore(tmp_path / "ck", topics["readings"]).load(0)
        assert ck is not None and ck.next_offset == len(msgs)


def test_checkpoint_with_another_ring_length_restores(kafka_broker, artifact_1f, tmp_path):
    a = art.load(artifact_1f)
    data = sine_fleet(3, 12, 1, seed=2)
    first, second = fleet_messages(data[:, :6], ["s0", "s1", "s2"], ["temp"]), fleet_messages(data, ["s0", "s1", "s2"], ["temp"], start=6)
    topics = kafka_broker.topics("recent")
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    kafka_broker.produce(topics["readings"], first)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(first))
    assert w.stop() == 0
    s.model.recent_readings = 4  # the checkpoint holds rings of 16 readings: the newest 4 are kept
    kafka_broker.produce(topics["readings"], second)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(second))
    det = w.worker.detector
    assert det.table.recent == 4 and int(det.table.cols["total"][det.table.index["s0"]]) == 12
    assert w.stop() == 0
