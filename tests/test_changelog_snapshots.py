"""Full snapshots in the changelog (issue 12): a round that writes every row of a partition is
named by later markers, and a restore at committed offset C seeks to the newest snapshot at or
below C instead of reading the log from its start.  On the real test broker: the seeking
restore equals the full read at every committed offset, sensors that left before a snapshot
(tombstoned) or after it stay gone, a sensor added later is there, and it reads fewer records."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tests.test_changelog import _export, _table, assert_same
from worker.kafka.changelog import ChangelogStore, ensure_changelog_topic, make_restore_consumer, restore_partition
from worker.settings import KafkaSettings

pytestmark = [pytest.mark.kafka]

P = 2  # the partition of tests.test_changelog's tables


def _subset(cols: dict, keep: list[str]) -> dict:
    ids = cols["sensor_id"].tolist()
    rows = np.array([ids.index(s) for s in keep])
    return {k: v[rows] for k, v in cols.items()}


def test_restore_from_the_newest_snapshot_equals_the_full_read(kafka_broker):
    from kafka import KafkaAdminClient, KafkaProducer

    topic = f"snap-{uuid.uuid4().hex[:8]}.state"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    ensure_changelog_topic(admin, topic, 3)
    admin.close()
    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=5)
    store = ChangelogStore(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), prod, topic)
    ids = [f"s{i}" for i in range(11)]
    t = _table(ids)
    present = ids[:10]  # s10 joins later
    states = {}  # committed offset -> the partition's columns written at it

    def round_(offset: int, changed=(), keep=None):
        nonlocal present
        if keep is not None:
            present = keep
        if changed:
            rows = [ids.index(s) for s in changed]
            t.cols["last_offset"][rows] = offset - 1
            t.cols["state"][rows] += 1.0
        cols = _subset(_export(t), present)
        rnd = store.prepare(P, cols, offset, "v1")
        store.write([rnd])
        states[offset] = cols
        return rnd

    assert round_(10)[6]  # first round: a full snapshot
    assert not round_(20, changed=["s2"], keep=[s for s in present if s != "s9"])[6]  # s9 left: a tombstone
    assert not round_(30, changed=["s3", "s10"], keep=present + ["s10"])[6]  # s10 joined
    full = round_(40, changed=["s0", "s1", "s4", "s5", "s6"])  # records since the snapshot now exceed the sensors
    assert full[6] and len(full[3]) == 10
    assert not round_(50, changed=["s7"], keep=[s for s in present if s != "s8"])[6]  # s8 left after the snapshot
    assert not round_(60, changed=["s2"])[6]
    assert store.snapshots[P][-1][1] == 40 and store.snapshots[P][0][1] == 10

    cons = make_restore_consumer(kafka_broker.bootstrap)
    try:
        for committed in (10, 20, 30, 40, 50, 55, 60):
            seek = restore_partition(cons, prod, topic, P, committed)
            whole = restore_partition(cons, prod, topic, P, committed, snapshots=False)
            want = states[max(o for o in states if o <= committed)]
            assert_same(whole.columns, want)
            assert_same(seek.columns, want)  # equal to the full read, tombstones and joins included
            assert seek.marker_next == whole.marker_next == max(o for o in states if o <= committed)
            if committed >= 50:  # the newest marker before the fence names the snapshot at 40
                assert seek.records < whole.records, (committed, seek.records, whole.records)
                assert seek.snapshots[-1][1] == 40
        # the newest round is a snapshot itself (a model swap): found from its own marker, read alone
        swap = store.prepare(P, _subset(_export(t, "v2"), present), 70, "v2")
        assert swap[6]
        store.write([swap])
        seek = restore_partition(cons, prod, topic, P, 70)
        whole = restore_partition(cons, prod, topic, P, 70, snapshots=False)
        assert_same(seek.columns, whole.columns)
        assert seek.records == len(swap[1]) < whole.records
        assert restore_partition(cons, prod, topic, P, 65).records < whole.records  # 70 is beyond: the one at 40
        # a restore continues the chain: the restored store's markers name the same snapshots
        store2 = ChangelogStore(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), prod, topic)
        store2.restore(P, 60)
        assert store2.snapshots[P][-1] == store.snapshots[P][0] and store2.snapshots[P][-1][1] == 40  # not the one at 70
        assert "s8" not in store2.written[P] and "s9" not in store2.written[P] and "s10" in store2.written[P]
    finally:
        cons.close()
        prod.close()
