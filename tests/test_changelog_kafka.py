"""The state changelog on the real test broker: rounds written and acknowledged, restore by
assign()+seek bounded by a fence record, compared bit for bit with the live detector."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tests.test_changelog import assert_same
from tests.test_core import STEP_MS
from tests.conftest import sine_fleet
from worker.checkpointing import changelog as cl
from worker.core import artifact as art
from worker.core.detector import SlotDetector
from worker.core.handover import VERSION_COLUMN
from worker.core.readings import Reading, Score
from worker.kafka.changelog import (ChangelogWriter, ensure_changelog_topic, make_restore_consumer, read_partition,
                                    restore_partition)


@pytest.fixture()
def clients(kafka_broker):
    from kafka import KafkaAdminClient, KafkaProducer

    topic = f"changelog-{uuid.uuid4().hex[:8]}.state"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    assert ensure_changelog_topic(admin, topic, 2) is True
    assert ensure_changelog_topic(admin, topic, 2) is False  # idempotent
    admin.close()
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=5, batch_size=262144)
    cons = make_restore_consumer(kafka_broker.bootstrap)
    yield topic, prod, cons
    cons.close()
    prod.close()


def _export(det: SlotDetector, p: int) -> dict:
    cols = det.export_partition(p)
    cols[VERSION_COLUMN] = np.full(len(cols["sensor_id"]), det.model_version, dtype=object)
    return cols


def test_rounds_written_then_restored_equal_the_live_detector(clients, artifact_1f):
    topic, prod, cons = clients
    a = art.load(artifact_1f)
    det = SlotDetector(a, slots=8)  # fewer slots than sensors: the export syncs paged-out state
    ids = [f"s{i}" for i in range(24)]
    data = sine_fleet(len(ids), 40, 1, seed=5)
    writer = ChangelogWriter(prod, topic)
    written: dict[str, int] = {}
    snapshots, off, sizes = {}, 0, []
    for rnd in range(5):
        # round 0: every sensor; later rounds: a third of them (incremental rounds)
        who = range(len(ids)) if rnd == 0 else range(rnd % 3, len(ids), 3)
        batch = []
        for t in range(rnd * 8, rnd * 8 + 8):
            for i in who:
                batch.append(Reading(ids[i], t * STEP_MS, data[i, t].astype(np.float64), partition=0, offset=off))
                off += 1
        assert all(isinstance(r, Score) for r in det.process(batch))
        cols = _export(det, 0)
        rows = cl.select_changed(cols, written)
        assert len(rows) == len(who)
        recs = cl.encode_round(0, off, cols, rows, det.model_version)
        sizes.append(writer.write(0, recs))
        cl.note_written(written, cols, rows)
        snapshots[off] = cols
    assert sizes[1] < 0.5 * sizes[0]
    # another partition's changelog stays apart
    other = {k: v[:2].copy() for k, v in snapshots[off].items()}
    other["sensor_id"] = np.array(["elsewhere-1", "elsewhere-2"], dtype=object)
    writer.write(1, cl.encode_round(1, 7, other, np.arange(2), det.model_version))

    seen = []
    res = restore_partition(cons, prod, topic, 0, committed=off, progress=lambda pos, end: seen.append((pos, end)))
    assert res.n_sensors == len(ids) and res.marker_next == off and res.skipped_beyond == 0
    assert seen and seen[-1][0] == seen[-1][1]
    assert_same(res.columns, _export(det, 0))  # bit for bit with the live detector
    # a restore at an earlier committed offset: the later rows are beyond it and skipped
    earlier = sorted(snapshots)[2]
    res2 = restore_partition(cons, prod, topic, 0, committed=earlier)
    assert res2.skipped_beyond == 2 * 8 and res2.marker_next == earlier
    assert_same(res2.columns, snapshots[earlier])
    res1 = restore_partition(cons, prod, topic, 1, committed=7)
    assert sorted(res1.columns["sensor_id"].tolist()) == ["elsewhere-1", "elsewhere-2"]

    # a new detector restored from the changelog scores the next readings exactly as the live one
    fresh = SlotDetector(a, slots=8)
    assert fresh.import_partition(res.columns) == len(ids)
    nxt = [Reading(ids[i], 40 * STEP_MS + k * STEP_MS, data[i, k % 40].astype(np.float64), partition=0,
                   offset=off + k * len(ids) + i) for k in range(3) for i in range(len(ids))]
    live, restored = det.process(nxt), fresh.process(nxt)
    assert [(s.sensor_id, s.score, s.error) for s in live] == [(s.sensor_id, s.score, s.error) for s in restored]
    assert_same(_export(fresh, 0), _export(det, 0), restored=False)  # slots are each one's own


def test_restore_of_an_empty_partition_ends_at_the_fence(clients):
    topic, prod, cons = clients
    res = restore_partition(cons, prod, topic, 1, committed=100)
    assert res.n_sensors == 0 and res.records == 0 and res.marker_next is None
    # the fences themselves are in the log, and a second restore reads past the first fence
    recs = list(read_partition(cons, prod, topic, 1))
    assert [r.key for r in recs] == [cl.FENCE_KEY]


def test_create_changelog_topic_and_a_too_small_one_is_refused(kafka_broker):
    from kafka import KafkaAdminClient

    from worker.kafka.changelog import ChangelogError, create_changelog_topic
    from worker.settings import KafkaSettings

    k = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap)
    topic = f"changelog-{uuid.uuid4().hex[:8]}.created"
    assert create_changelog_topic(k, topic, 3) is True
    assert create_changelog_topic(k, topic, 3) is False
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        parts = [t for t in admin.describe_topics([topic]) if t.get("name", t.get("topic")) == topic][0]["partitions"]
        assert len(parts) == 3
        with pytest.raises(ChangelogError, match="3 partitions, the readings topic 4"):
            ensure_changelog_topic(admin, topic, 4)
    finally:
        admin.close()
