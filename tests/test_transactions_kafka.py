"""Exactly-once's Kafka edge (worker/kafka/transactions.py) on the real test broker: which
transaction calls kafka-python 3.0 gets served, what a read_committed reader sees of a
committed, an open and an aborted transaction, and fencing by a second producer with the
same transactional.id.

Measured on tansu 0.6 (the embedded test broker) and asserted below where marked "tansu":

- init_transactions, begin, send, send_offsets_to_transaction with a joined consumer's group
  metadata, commit and abort are all served; a committed round's records are visible to
  read_committed readers and its offsets are the group's committed offsets; an aborted
  round's offsets are not committed;
- an *open* transaction is invisible to read_committed readers (they stop at the last stable
  offset), visible to read_uncommitted ones;
- an *aborted* transaction's records ARE delivered to read_committed readers (tansu's fetch
  never lists aborted transactions); a real Kafka cluster hides them;
- offsets sent with a made-up member id and generation are accepted (no KIP-447 check);
- a transaction holding offsets but no record does not move the committed offset;
- a transaction left open past its transaction timeout is not aborted by the broker.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from tests.broker import FAST_GROUP
from tests.worker_helpers import on_tansu, read_values
from worker.exits import EXIT_FENCED
from worker.settings import KafkaSettings, Settings


def committed(bootstrap: str, group: str, tp) -> int | None:
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return c.committed(tp)
    finally:
        c.close()


@pytest.fixture(scope="module")
def group(kafka_broker):
    """Topics, and a consumer that has joined its group and read the input (real group metadata)."""
    from kafka import KafkaConsumer, TopicPartition

    t = kafka_broker.topics("txn", names=("readings", "scores", "changelog"))
    n = kafka_broker.produce(t["readings"], ((b"s%d" % i, b"r%d" % i) for i in range(50)))
    g = f"txn-{uuid.uuid4().hex[:6]}"
    cons = KafkaConsumer(t["readings"], bootstrap_servers=kafka_broker.bootstrap, group_id=g,
                         enable_auto_commit=False, auto_offset_reset="earliest", **FAST_GROUP)
    got, deadline = 0, time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        got += sum(len(r) for r in cons.poll(timeout_ms=300).values())
    assert got == n
    yield t, g, cons, TopicPartition(t["readings"], 0)
    cons.close()


def settings_for(broker, g: str, worker: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap, group_id=g, worker_id=worker)


def new_round(broker, g: str, worker: str, **kw):
    from worker.kafka.transactions import TransactionalRound, make_transactional_producer

    k = settings_for(broker, g, worker)
    return TransactionalRound(lambda: make_transactional_producer(k, max_block_ms=10_000), **kw)


def test_committed_round_then_aborted_round_as_read_committed_sees_them(kafka_broker, group):
    """Committed: visible, offsets committed.  Open: hidden from read_committed.  Aborted on purpose:
    offsets not committed; its records reach a read_committed reader ON TANSU (its fetch never
    lists aborted transactions) -- a real Kafka cluster hides them (asserted when not on tansu)."""
    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["scores"]
    rnd = new_round(kafka_broker, g, "w-commit")
    assert rnd.producer.config["transactional_id"] == f"slotwatch.{g}.w-commit"
    try:
        for i in range(3):
            rnd.send(out, key=b"s", value=b"c%d" % i)
        assert rnd.open and rnd.sent == 3
        rnd.commit({tp: 10}, cons.group_metadata())
        assert not rnd.open and rnd.committed == 1
        assert read_values(bs, out) == [b"c0", b"c1", b"c2"]
        assert committed(bs, g, tp) == 10

        for i in range(3):
            rnd.send(out, key=b"s", value=b"a%d" % i)
        rnd.send_offsets({tp: 20}, cons.group_metadata())
        rnd.flush()
        # open: read_committed stops at the last stable offset; read_uncommitted reads on
        assert read_values(bs, out) == [b"c0", b"c1", b"c2"]
        assert read_values(bs, out, "read_uncommitted") == [b"c0", b"c1", b"c2", b"a0", b"a1", b"a2"]
        rnd.abort()
        assert not rnd.open and rnd.aborted == 1
        assert committed(bs, g, tp) == 10  # the aborted round's offsets are dropped
        seen = read_values(bs, out)
        if on_tansu(kafka_broker):
            assert seen == [b"c0", b"c1", b"c2", b"a0", b"a1", b"a2"]  # measured: aborted records delivered
        else:
            assert seen == [b"c0", b"c1", b"c2"]

        rnd.send(out, key=b"s", value=b"c3")
        rnd.commit({tp: 20}, cons.group_metadata())
        assert read_values(bs, out)[-1] == b"c3" and committed(bs, g, tp) == 20
    finally:
        rnd.close()


def test_what_tansu_does_not_check(kafka_broker, group):
    """Measured on tansu: a made-up member/generation is accepted (Kafka >= 2.5 refuses a stale one,
    KIP-447); offsets alone in a transaction are not applied; an open transaction outlives its timeout."""
    from kafka.structs import ConsumerGroupMetadata

    if not on_tansu(kafka_broker):
        pytest.skip("measures the embedded test broker")
    t, g, cons, tp = group
    bs = kafka_broker.bootstrap
    rnd = new_round(kafka_broker, g, "w-checks")
    try:
        rnd.send(t["scores"], value=b"x")
        rnd.commit({tp: 30}, ConsumerGroupMetadata(g, 4242, "not-a-member", None))
        assert committed(bs, g, tp) == 30  # no KIP-447 fencing of stale consumers here

        rnd.commit({tp: 31}, cons.group_metadata())  # no record in this transaction
        assert committed(bs, g, tp) == 30  # ...and the offsets did not move
        rnd.send(t["scores"], value=b"y")
        rnd.commit({tp: 31}, cons.group_metadata())
        assert committed(bs, g, tp) == 31
    finally:
        rnd.close()

    from worker.kafka.transactions import TransactionalRound, make_transactional_producer

    k = settings_for(kafka_broker, g, "w-timeout")
    short = TransactionalRound(lambda: make_transactional_producer(k, transaction_timeout_ms=1000))
    try:
        short.send(t["scores"], value=b"late")
        short.flush()
        time.sleep(4)  # 4x its timeout
        short.send(t["scores"], value=b"later")
        short.commit()  # not aborted by the broker: a dead worker's transaction stays open until its id is reused
        assert read_values(bs, t["scores"])[-2:] == [b"late", b"later"]
    finally:
        short.close()


def test_second_producer_with_the_same_id_fences_the_first(kafka_broker, group):
    """The new producer's init aborts the old one's open transaction; the old one gets TransactionFenced
    (exit code 7) on its next call, and its records stay uncommitted (delivered anyway on tansu, see above)."""
    from worker.kafka.transactions import TransactionFenced

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["changelog"]
    before = committed(bs, g, tp)
    old = new_round(kafka_broker, g, "w-fence")
    old.send(out, value=b"zombie")
    old.flush()
    new = new_round(kafka_broker, g, "w-fence")  # same transactional.id: a restarted worker
    try:
        with pytest.raises(TransactionFenced) as e:
            old.send(out, value=b"zombie-2")
            old.commit({tp: 45}, cons.group_metadata())
        assert e.value.exit_code == EXIT_FENCED == 7
        assert "slotwatch." + g + ".w-fence" in str(e.value) and "SLOTWATCH_KAFKA__WORKER_ID" in str(e.value)
        assert committed(bs, g, tp) == before  # the zombie's offsets never land
        new.send(out, value=b"owner")
        new.commit({tp: 46}, cons.group_metadata())
        assert committed(bs, g, tp) == 46
        seen = read_values(bs, out)
        assert seen[-1] == b"owner" and b"zombie-2" not in seen
        assert (b"zombie" in seen) is on_tansu(kafka_broker)  # aborted by the new init; tansu still delivers it
    finally:
        old.close(timeout=0)
        new.close()


def test_fenced_between_the_last_send_and_the_commit_never_re_initialises_the_id(kafka_broker, group):
    """The race of the worker fencing test: the twin's init lands after the old producer's last record and
    before its EndTxn.  tansu does not answer that EndTxn (it logs ProducerFenced and closes the connection;
    kafka-python resends it for ever), so the commit is *in doubt*: the old round must not make a new
    producer (its init would take the id back and fence the twin); its next use stops it (exit code 7)."""
    from worker.kafka.transactions import TransactionFenced, TransactionInDoubt, TransactionalRound, make_transactional_producer

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["changelog"]
    before = committed(bs, g, tp)
    k = settings_for(kafka_broker, g, "w-race")
    made = []

    def factory():
        made.append(make_transactional_producer(k, max_block_ms=10_000))
        return made[-1]

    old = TransactionalRound(factory, timeout_s=3.0)
    old.send(out, value=b"race-old")
    old.send_offsets({tp: 44}, cons.group_metadata())  # the round's last requests before its EndTxn...
    old.flush()
    twin = new_round(kafka_broker, g, "w-race")  # ...then the twin initialises the id: epoch bumped
    try:
        if on_tansu(kafka_broker):  # measured: no answer to the fenced EndTxn
            with pytest.raises(TransactionInDoubt):
                old.commit()  # EndTxn is the first request with the stale epoch
            assert old.pending is not None and not old.open and old.consecutive_failures == 1
            with pytest.raises(TransactionFenced) as e:
                old.settle()  # the next round: still no answer -> fenced, stop
        else:  # a real Kafka answers PRODUCER_FENCED at once
            with pytest.raises(TransactionFenced) as e:
                old.commit()
        assert e.value.exit_code == EXIT_FENCED
        assert len(made) == 1  # never re-initialised
        twin.send(out, value=b"race-twin")
        twin.commit({tp: 48}, cons.group_metadata())  # the twin still owns the id
        assert committed(bs, g, tp) == 48 != before
        assert read_values(bs, out)[-1] == b"race-twin"
    finally:
        old.close(timeout=0)
        twin.close()


def test_a_failed_send_aborts_the_round_and_the_next_round_commits(kafka_broker, group):
    """Not fenced: the round is aborted, TransactionAborted says to replay, the object keeps working."""
    from worker.kafka.transactions import TransactionAborted

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["scores"]
    rnd = new_round(kafka_broker, g, "w-retry")
    try:
        rnd.send(out, value=b"before-failure")
        with pytest.raises(TransactionAborted) as e:
            rnd.send(out, value=b"x" * (2 * 1024 * 1024))  # above max_request_size: refused by the client
        assert "rewind to the committed offsets" in str(e.value)
        assert not rnd.open and rnd.aborted == 1 and rnd.consecutive_failures == 1
        rnd.send(out, value=b"replayed")
        rnd.commit({tp: 47}, cons.group_metadata())
        assert rnd.consecutive_failures == 0 and committed(bs, g, tp) == 47
        assert read_values(bs, out)[-1] == b"replayed"
    finally:
        rnd.close()


def test_changelog_rounds_in_transactions_restore_at_the_committed_offset(kafka_broker, artifact_1f):
    """A changelog round written through the transaction (ChangelogWriter unchanged), a second one
    aborted on purpose: the restore (read_committed, fence from a plain producer) folds the first.
    On tansu the aborted rows are read too and skipped as beyond the committed offset."""
    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

    from tests.test_changelog import assert_same
    from tests.test_changelog_kafka import _export
    from tests.test_core import STEP_MS
    from tests.conftest import sine_fleet
    from worker.checkpointing import changelog as cl
    from worker.core import artifact as art
    from worker.core.detector import SlotDetector
    from worker.core.readings import Reading
    from worker.kafka.changelog import ChangelogWriter, ensure_changelog_topic, make_restore_consumer, restore_partition

    bs = kafka_broker.bootstrap
    topic = f"txn-changelog-{uuid.uuid4().hex[:8]}.state"
    admin = KafkaAdminClient(bootstrap_servers=bs)
    ensure_changelog_topic(admin, topic, 1)
    admin.close()
    g = f"txn-cl-{uuid.uuid4().hex[:6]}"
    readings = kafka_broker.topics("txn-cl", names=("readings",))["readings"]
    det = SlotDetector(art.load(artifact_1f), slots=8)
    ids = [f"s{i}" for i in range(12)]
    data = sine_fleet(len(ids), 20, 1, seed=3)
    rnd = new_round(kafka_broker, g, "w-changelog")
    writer = ChangelogWriter(rnd, topic)
    off, written, exports = 0, {}, []
    try:
        for r in range(2):
            batch = []
            for t in range(r * 10, r * 10 + 10):
                for i, s in enumerate(ids):
                    batch.append(Reading(s, t * STEP_MS, data[i, t].astype(np.float64), partition=0, offset=off))
                    off += 1
            det.process(batch)
            cols = _export(det, 0)
            exports.append((off, cols))
            rows = cl.select_changed(cols, written)
            writer.wait(writer.send(0, cl.encode_round(0, off, cols, rows, det.model_version)), 30)
            if r == 0:
                rnd.commit({TopicPartition(readings, 0): off}, g)  # a bare group id works too (no KIP-447 fencing)
                cl.note_written(written, cols, rows)
            else:
                rnd.abort()
    finally:
        rnd.close()
    first_off, first_cols = exports[0]
    plain = KafkaProducer(bootstrap_servers=bs, acks="all")  # the restore fence is written outside any transaction
    cons = make_restore_consumer(bs, isolation_level="read_committed")
    try:
        res = restore_partition(cons, plain, topic, 0, committed=first_off, stall_s=10)
    finally:
        cons.close()
        plain.close()
    assert res.marker_next == first_off and res.n_sensors == len(ids)
    assert_same(res.columns, first_cols)
    assert res.skipped_beyond == (len(ids) if on_tansu(kafka_broker) else 0)


def test_exactly_once_settings():
    with pytest.raises(ValueError, match="STATE_STORE=kafka or both"):
        Settings(kafka={"exactly_once": True})
    with pytest.raises(ValueError, match="TRANSACTION_TIMEOUT_MS"):
        Settings(kafka={"exactly_once": True, "transaction_timeout_ms": 30000}, checkpoint={"state_store": "kafka"})
    s = Settings(kafka={"exactly_once": True}, checkpoint={"state_store": "both"})
    assert s.kafka.transaction_timeout_ms == 60000 and s.kafka.transactional_id_prefix == "slotwatch"
    from worker.kafka.transactions import transactional_id, worker_identity

    assert worker_identity(s.kafka)  # the host name when SLOTWATCH_KAFKA__WORKER_ID is unset
    assert transactional_id(s.kafka) == f"slotwatch.slotwatch.{worker_identity(s.kafka)}"
