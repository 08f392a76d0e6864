"""Exactly-once's Kafka edge with confluent-kafka (worker/kafka/confluent_txn.py) on the real test broker:
the same rounds as tests/test_transactions_kafka.py asserts for kafka-python, over librdkafka's
transactional producer, with a librdkafka consumer's ``consumer_group_metadata()``.

Measured on tansu 0.6 with librdkafka 2.16 (the probe of the module doc, asserted below where marked):
init, produce, send_offsets_to_transaction, commit and abort are served; an open transaction is hidden from
read_committed readers, an aborted one is not (tansu lists no aborted transactions); once a second producer
initialised the id, the first one's EndTxn is not answered (librdkafka: ``_TIMED_OUT``, retriable) and a
transaction it begins afterwards fails with the fatal ``_FENCED``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.worker_helpers import on_tansu, read_values
from worker.exits import EXIT_FENCED
from worker.settings import KafkaSettings

ck = pytest.importorskip("confluent_kafka")

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="module")
def group(kafka_broker):
    """Topics, and a librdkafka consumer that has joined its group and read the input (real group metadata)."""
    t = kafka_broker.topics("ctxn", names=("readings", "scores", "changelog"))
    n = kafka_broker.produce(t["readings"], ((b"s%d" % i, b"r%d" % i) for i in range(50)))
    g = f"ctxn-{uuid.uuid4().hex[:6]}"
    cons = ck.Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": g, "enable.auto.commit": False,
                        "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    cons.subscribe([t["readings"]])
    got, deadline = 0, time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        got += sum(m.error() is None for m in cons.consume(50, 0.5))
    assert got == n
    from kafka import TopicPartition

    yield t, g, cons, TopicPartition(t["readings"], 0)
    cons.close()


def committed(cons, tp) -> int:
    return cons.committed([ck.TopicPartition(tp.topic, tp.partition)], 10)[0].offset


def new_round(broker, g: str, worker: str, made=None, **kw):
    from worker.kafka.confluent_txn import ConfluentTransactionalRound, make_confluent_transactional_producer
    from worker.kafka.txn_producer import transactional_id

    k = KafkaSettings(bootstrap_servers=broker.bootstrap, group_id=g, worker_id=worker, client="confluent")

    def factory():
        p = make_confluent_transactional_producer(k, 10.0)
        if made is not None:
            made.append(p)
        return p

    return ConfluentTransactionalRound(factory, transactional_id=transactional_id(k), **kw)


def test_committed_open_and_aborted_rounds_as_read_committed_sees_them(kafka_broker, group):
    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["scores"]
    rnd = new_round(kafka_broker, g, "w-commit")
    try:
        for i in range(3):
            rnd.send(out, key=b"s", value=b"c%d" % i)
        assert rnd.open and rnd.sent == 3
        rnd.commit({tp: 10}, rnd.group_metadata(cons))
        assert not rnd.open and rnd.committed == 1
        assert read_values(bs, out) == [b"c0", b"c1", b"c2"]
        assert committed(cons, tp) == 10

        acked = []
        for i in range(3):
            rnd.produce(out, b"a%d" % i, b"s", on_delivery=lambda err, msg: acked.append(err))  # the sink's face
        rnd.send_offsets({tp: 20}, rnd.group_metadata(cons))
        assert rnd.flush() == 0 and acked == [None] * 3
        assert read_values(bs, out) == [b"c0", b"c1", b"c2"]  # open: hidden from read_committed
        assert read_values(bs, out, "read_uncommitted")[-3:] == [b"a0", b"a1", b"a2"]
        rnd.abort()
        assert not rnd.open and rnd.aborted == 1 and rnd.consecutive_failures == 1
        assert committed(cons, tp) == 10  # the aborted round's offsets are dropped
        seen = read_values(bs, out)
        assert seen == ([b"c0", b"c1", b"c2", b"a0", b"a1", b"a2"] if on_tansu(kafka_broker) else [b"c0", b"c1", b"c2"])

        f = rnd.send(out, key=b"s", value=b"c3")  # the changelog writer's face: a future with the offset
        rnd.commit({tp: 20}, rnd.group_metadata(cons))
        assert f.get(timeout=5).offset >= 6  # after the 6 records before it (and any transaction markers)
        assert read_values(bs, out)[-1] == b"c3" and committed(cons, tp) == 20 and rnd.consecutive_failures == 0
    finally:
        rnd.close()


def test_second_producer_with_the_same_id_fences_the_first(kafka_broker, group):
    """The twin's init aborts the old round's open transaction; the old round's next request is answered
    PRODUCER_FENCED (which librdkafka calls abortable): TransactionFenced, exit code 7, offsets never land."""
    from worker.kafka.transactions import TransactionFenced

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["changelog"]
    before = committed(cons, tp)
    made: list = []
    old = new_round(kafka_broker, g, "w-fence", made)
    old.send(out, value=b"zombie")
    old.flush()
    twin = new_round(kafka_broker, g, "w-fence")
    try:
        with pytest.raises(TransactionFenced) as e:
            old.send(out, value=b"zombie-2")
            old.commit({tp: 45}, old.group_metadata(cons))
        assert e.value.exit_code == EXIT_FENCED == 7
        assert f"slotwatch.{g}.w-fence" in str(e.value) and "SLOTWATCH_KAFKA__WORKER_ID" in str(e.value)
        assert len(made) == 1 and committed(cons, tp) == before  # never re-initialised; no zombie offsets
        twin.send(out, value=b"owner")
        twin.commit({tp: 46}, twin.group_metadata(cons))
        assert committed(cons, tp) == 46
        seen = read_values(bs, out)
        assert seen[-1] == b"owner" and b"zombie-2" not in seen
    finally:
        twin.close()


def test_fenced_between_the_last_send_and_the_commit_never_re_initialises_the_id(kafka_broker, group):
    """The worker fencing test's race, made deterministic: the twin initialises the id after the old round's
    last record and offsets, before its EndTxn.  On tansu that EndTxn is not answered (librdkafka: _TIMED_OUT,
    retriable): in doubt; the old round keeps its producer and its next use stops it (fenced, exit code 7)."""
    from worker.kafka.transactions import TransactionFenced, TransactionInDoubt

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["changelog"]
    made: list = []
    old = new_round(kafka_broker, g, "w-race", made, timeout_s=3.0)
    old.send(out, value=b"race-old")
    old.send_offsets({tp: 44}, old.group_metadata(cons))
    old.flush()
    twin = new_round(kafka_broker, g, "w-race")
    try:
        if on_tansu(kafka_broker):
            with pytest.raises(TransactionInDoubt):
                old.commit()
            assert old.pending == "commit" and not old.open and old.consecutive_failures == 1
            old.abort(RuntimeError("the round's rewind"))  # what the worker's rewind does: no new producer
            with pytest.raises(TransactionFenced) as e:
                old.begin()  # the next round: the pending commit still unanswered -> fenced, stop
        else:
            with pytest.raises(TransactionFenced) as e:
                old.commit()
        assert e.value.exit_code == EXIT_FENCED
        assert len(made) == 1  # never re-initialised
        twin.send(out, value=b"race-twin")
        twin.commit({tp: 48}, twin.group_metadata(cons))  # the twin still owns the id
        assert committed(cons, tp) == 48
        assert read_values(bs, out)[-1] == b"race-twin"
    finally:
        twin.close()


def test_a_refused_send_aborts_the_round_and_the_next_round_commits(kafka_broker, group):
    from worker.kafka.transactions import TransactionAborted

    t, g, cons, tp = group
    bs, out = kafka_broker.bootstrap, t["scores"]
    rnd = new_round(kafka_broker, g, "w-retry")
    try:
        rnd.send(out, value=b"before-failure")
        with pytest.raises(TransactionAborted) as e:
            rnd.send(out, value=b"x" * (3 * 1024 * 1024))  # above message.max.bytes: refused by librdkafka
        assert "rewind to the committed offsets" in str(e.value)
        assert not rnd.open and rnd.aborted == 1 and rnd.consecutive_failures == 1
        rnd.send(out, value=b"replayed")
        rnd.commit({tp: 47}, rnd.group_metadata(cons))
        assert rnd.consecutive_failures == 0 and committed(cons, tp) == 47
        assert read_values(bs, out)[-1] == b"replayed"
    finally:
        rnd.close()
