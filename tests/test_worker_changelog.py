"""The worker with its state in the Kafka changelog (SLOTWATCH_CHECKPOINT__STATE_STORE kafka/both):
a partition's state follows it to a worker with another (empty) checkpoint folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import RunningWorker, fleet_messages, partition_by_index, reference_detector, worker_settings
from worker.codec import ReadingCodec
from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

N_PART = 3


@pytest.fixture(scope="module")
def art1(artifact_1f):
    return art.load(artifact_1f)


def _setup(kafka_broker, name):
    from kafka import KafkaAdminClient

    from worker.kafka.changelog import ensure_changelog_topic

    topics = kafka_broker.topics(name, partitions=N_PART)
    topics["changelog"] = topics["readings"].replace(".readings", ".changelog")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    ensure_changelog_topic(admin, topics["changelog"], N_PART)
    admin.close()
    return topics


def _changelog_states(kafka_broker, topic: str, committed: dict[int, int]) -> dict:
    from kafka import KafkaProducer

    from worker.kafka.changelog import make_restore_consumer, restore_partition

    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    out = {}
    for p, off in committed.items():
        cons = make_restore_consumer(kafka_broker.bootstrap)
        res = restore_partition(cons, prod, topic, p, off)
        cons.close()
        c = res.columns
        for k, sid in enumerate(c.get("sensor_id", [])):
            out[str(sid)] = (c["state"][k], int(c["total"][k]), str(c["model_version"][k]))
    prod.close()
    return out


def _score_keys(kafka_broker, topic, expect):
    recs = kafka_broker.read_all(topic, expect=expect)
    by_key: dict = {}
    for r in recs:
        d = json.loads(r.value)
        by_key.setdefault((d["partition"], d["offset"]), set()).add(r.value)
    return by_key


def test_state_follows_the_partitions_to_a_worker_without_the_checkpoint_folder(kafka_broker, art1, artifact_1f, tmp_path,
                                                                               monkeypatch):
    import threading
    import urllib.request

    from worker.kafka.changelog import ChangelogStore

    seen = []  # (thread, /readyz answer) at each restore: a spy around the real method
    real_restore = ChangelogStore.restore

    def spy(self, partition, committed):
        try:
            code = urllib.request.urlopen(f"http://127.0.0.1:{b.port}/readyz", timeout=2).status
        except urllib.error.HTTPError as e:
            code = e.code
        seen.append((threading.current_thread(), code))
        return real_restore(self, partition, committed)

    monkeypatch.setattr(ChangelogStore, "restore", spy)

    data, ids = sine_fleet(12, 30, 1, seed=21), [f"s{i}" for i in range(12)]
    topics = _setup(kafka_broker, "changelog-move")
    part = partition_by_index(N_PART)
    first = fleet_messages(data[:, :18], ids, ["temp"])
    second = fleet_messages(data, ids, ["temp"], start=18)
    ck = {"state_store": "kafka", "changelog_topic": topics["changelog"], "interval_s": 1.0}
    s_a = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "a", model={"slots": 5}, checkpoint=ck)
    s_b = s_a.model_copy(update={"checkpoint": s_a.checkpoint.model_copy(update={"dir": tmp_path / "b"})})
    kafka_broker.produce(topics["readings"], first, part)
    a = RunningWorker(s_a, artifact=art1)
    a.wait_consumed(len(first))
    assert a.stop() == 0
    assert a.metrics.changelog_records._value.get() >= len(ids) + N_PART  # every sensor once, a marker per partition
    assert not list((tmp_path / "a").rglob("*.ckpt"))  # kafka only: no checkpoint files
    committed_a = dict(a.worker.committed)
    assert sum(committed_a.values()) == len(first)

    kafka_broker.produce(topics["readings"], second, part)
    b = RunningWorker(s_b, artifact=art1)  # another folder, as another pod would have
    b.wait_consumed(len(second))
    m = b.metrics
    assert m.consumed._value.get() == len(second)  # resumed at the committed offsets: nothing read again
    assert m.changelog_restored._value.get() == len(ids)
    assert m.changelog_restore_seconds._sum.get() > 0
    assert len(seen) == N_PART and all(t is b.thread and code == 503 for t, code in seen)  # the loop, not ready
    assert b.stop() == 0
    committed_b = dict(b.worker.committed)
    assert sum(committed_b.values()) == len(first) + len(second)

    by_key = _score_keys(kafka_broker, topics["scores"], len(first) + len(second))
    assert len(by_key) == len(first) + len(second) and all(len(v) == 1 for v in by_key.values())
    codec = ReadingCodec(["temp"])
    ref, _ = reference_detector(art1, s_a, [codec.decode(v) for _, v in first + second])
    states = _changelog_states(kafka_broker, topics["changelog"], committed_b)
    assert sorted(states) == sorted(ids)
    for sid, (state, total, version) in states.items():
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6)
        assert total == 30 and version == art1.manifest.model_version
    # the state after the first run is still in the (uncompacted) log, stamped at a's offsets
    ref_a, _ = reference_detector(art1, s_a, [codec.decode(v) for _, v in first])
    for sid, (state, total, _) in _changelog_states(kafka_broker, topics["changelog"], committed_a).items():
        np.testing.assert_allclose(state, ref_a.sensor_state(sid), atol=1e-6)
        assert total == 18


def test_both_uses_a_current_local_checkpoint_and_the_changelog_otherwise(kafka_broker, art1, artifact_1f, tmp_path):
    data, ids = sine_fleet(9, 24, 1, seed=22), [f"s{i}" for i in range(9)]
    topics = _setup(kafka_broker, "changelog-both")
    part = partition_by_index(N_PART)
    chunks = [fleet_messages(data[:, :8], ids, ["temp"]), fleet_messages(data[:, :16], ids, ["temp"], start=8),
              fleet_messages(data, ids, ["temp"], start=16)]
    ck = {"state_store": "both", "changelog_topic": topics["changelog"]}
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", checkpoint=ck)
    kafka_broker.produce(topics["readings"], chunks[0], part)
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(chunks[0]))
    assert w.stop() == 0
    assert list((tmp_path / "ck").rglob("*.ckpt"))  # both: files too
    kafka_broker.produce(topics["readings"], chunks[1], part)
    w = RunningWorker(s, artifact=art1)  # same folder: the local checkpoints are current
    w.wait_consumed(len(chunks[1]))
    assert w.metrics.consumed._value.get() == len(chunks[1])
    assert w.metrics.changelog_restored._value.get() == 0
    assert w.stop() == 0
    kafka_broker.produce(topics["readings"], chunks[2], part)
    s2 = s.model_copy(update={"checkpoint": s.checkpoint.model_copy(update={"dir": tmp_path / "other"})})
    w = RunningWorker(s2, artifact=art1)  # no local checkpoint: from the changelog
    w.wait_consumed(len(chunks[2]))
    assert w.metrics.consumed._value.get() == len(chunks[2])
    assert w.metrics.changelog_restored._value.get() == len(ids)
    assert w.stop() == 0
    every = chunks[0] + chunks[1] + chunks[2]
    by_key = _score_keys(kafka_broker, topics["scores"], len(every))
    assert len(by_key) == len(every) and all(len(v) == 1 for v in by_key.values())
    codec = ReadingCodec(["temp"])
    ref, _ = reference_detector(art1, s, [codec.decode(v) for _, v in every])
    states = _changelog_states(kafka_broker, topics["changelog"], dict(w.worker.committed))
    assert sorted(states) == sorted(ids)
    for sid, (state, total, _) in states.items():
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6)
        assert total == 24


def test_run_create_topics_creates_the_changelog_topic(kafka_broker, tmp_path):
    import os
    import subprocess
    import sys
    import uuid

    from kafka import KafkaAdminClient

    tag = f"cl-create-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
               SLOTWATCH_KAFKA__READINGS_TOPIC=f"{tag}.readings", SLOTWATCH_CHECKPOINT__STATE_STORE="kafka",
               SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC=f"{tag}.changelog")
    # no model there: the topics are created, then the worker stops with its configuration exit code
    res = subprocess.run([sys.executable, "-m", "worker.cli", "run", "--create-topics", "3", "--model",
                          str(tmp_path / "no-model")], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode != 0 and f"{tag}.changelog" in res.stderr + res.stdout  # "created topics [...]"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        meta = [t for t in admin.describe_topics([f"{tag}.changelog", f"{tag}.readings"])]
        assert [len(t["partitions"]) for t in meta] == [3, 3]
    finally:
        admin.close()
