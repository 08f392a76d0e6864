"""Issue 10, rebalance safety (real broker, real consumer; the group callbacks called directly):
a lost partition does not wait longer than the revocation budget for an in-flight checkpoint
write, and offsets are committed only for partitions the worker still owns."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.worker_helpers import worker_settings
from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _worker(kafka_broker, artifact_1f, tmp_path):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata  # noqa: F401

    from worker.app import Worker
    from worker.kafka.clients import make_consumer

    topics = kafka_broker.topics("rebal", partitions=2)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    w = Worker(s, artifact=art.load(artifact_1f))
    w.source.consumer = make_consumer(s.kafka)
    tps = [TopicPartition(topics["readings"], p) for p in (0, 1)]
    w.source.consumer.assign(tps)
    w.partitions.assigned(tps)
    assert w.restored == {0, 1}
    return w, tps


def _pending(w, fut, offsets):
    """A background checkpoint round in flight whose write is ``fut`` and whose offsets are ``offsets``."""
    from worker.checkpointing.coordinator import Round

    r = Round(w.checkpoints, [], None, True)
    r.offsets = offsets
    w.checkpoints.pending = (fut, r)


def _committed(w, tp):
    return w.source.consumer.committed(tp)


def test_commits_cover_only_partitions_still_owned(kafka_broker, artifact_1f, tmp_path):
    from kafka.structs import OffsetAndMetadata

    w, (tp0, tp1) = _worker(kafka_broker, artifact_1f, tmp_path)
    # a background round taken while both partitions were ours finishes after partition 1 left
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(lambda: (0, 0.0))
    offsets = {tp0: OffsetAndMetadata(10, "", -1), tp1: OffsetAndMetadata(12, "", -1)}
    _pending(w, fut, offsets)
    w.restored.discard(1)
    w.checkpoints.reap(wait=True)
    assert _committed(w, tp0) == 10
    assert _committed(w, tp1) is None
    w.source.consumer.close()
    pool.shutdown()


def test_a_lost_partition_waits_for_an_inflight_write_only_within_the_budget(kafka_broker, artifact_1f, tmp_path):
    from kafka.structs import OffsetAndMetadata

    w, (tp0, tp1) = _worker(kafka_broker, artifact_1f, tmp_path)
    budget = w.settings.kafka.session_timeout_ms / 1000 * w.settings.limits.revoke_budget_fraction
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(lambda: (time.sleep(budget + 3.0), (0, 0.0))[1])  # a write stuck longer than the budget
    _pending(w, fut, {tp0: OffsetAndMetadata(7, "", -1), tp1: OffsetAndMetadata(9, "", -1)})
    failures = w.metrics.checkpoint_failures._value.get()  # noqa: SLF001
    t0 = time.monotonic()
    w.partitions.revoked([tp1], lost=True)
    took = time.monotonic() - t0
    assert budget - 0.5 <= took < budget + 1.5, took
    assert w.restored == {0} and w.checkpoints.pending is None
    assert w.metrics.checkpoint_failures._value.get() == failures + 1  # noqa: SLF001  (given up, counted)
    fut.result(timeout=10)  # the stuck write ends later: its offsets are never committed
    assert _committed(w, tp0) is None and _committed(w, tp1) is None
    # a lost partition with a write that does finish in time: the owned partition's offset is committed
    fut2 = pool.submit(lambda: (time.sleep(0.2), (0, 0.0))[1])
    w.restored.add(1)
    _pending(w, fut2, {tp0: OffsetAndMetadata(7, "", -1), tp1: OffsetAndMetadata(9, "", -1)})
    w.partitions.revoked([tp1], lost=True)
    time.sleep(0.5)  # commit_async inside a callback
    w.source.consumer.poll(timeout_ms=200)  # let the async commit's answer arrive
    assert _committed(w, tp0) == 7 and _committed(w, tp1) is None
    w.source.consumer.close()
    pool.shutdown()
