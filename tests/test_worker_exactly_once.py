"""The worker with SLOTWATCH_KAFKA__EXACTLY_ONCE (issue 12 item 3), on the real broker: one Kafka
transaction per checkpoint round, as a read_committed reader of the scores topic sees it.

On the test broker (tansu 0.6) an aborted transaction's records still reach read_committed
readers (DESIGN.md: its fetch answers carry no aborted-transactions list); the crash test aborts
one transaction on purpose and asserts what a reader then sees: on tansu exactly the aborted
round's records twice (byte-identical to their replayed copies), on a real Kafka
(SLOTWATCH_TEST_BOOTSTRAP) every score exactly once.

Every test runs once per Kafka client of the worker (``kafka_client``: kafka-python, and confluent-kafka
when installed, whose round is worker.kafka.confluent_txn.ConfluentTransactionalRound).
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
from tests.test_worker_changelog import _changelog_states, _setup
from tests.worker_helpers import (
    RunningWorker, fleet_messages, on_tansu, partition_by_index, read_values, reference_detector, scrape_labeled, worker_env,
    worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.exits import EXIT_FENCED
from worker.kafka.embedded import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(360)]

N_PART = 3


@pytest.fixture(scope="module")
def art1(artifact_1f):
    return art.load(artifact_1f)


def read_scores(bootstrap: str, topic: str, isolation: str = "read_committed", idle: float = 2.0) -> list[bytes]:
    """Every value of ``topic`` (one partition) as a reader of that isolation level sees it, until quiet."""
    return read_values(bootstrap, topic, isolation, idle)


def _keys(values) -> dict:
    by_key: dict = {}
    for v in values:
        d = json.loads(v)
        by_key.setdefault((d["partition"], d["offset"]), []).append(v)
    return by_key


def _check_states(kafka_broker, art1, settings, topics, messages, committed, steps):
    codec = ReadingCodec(["temp"])
    part = partition_by_index(N_PART)
    ref, _ = reference_detector(art1, settings, [codec.decode(v, part(k)) for k, v in messages])
    states = _changelog_states(kafka_broker, topics["changelog"], committed)
    assert states and all(total == steps for _, total, _ in states.values())
    for sid, (state, _, _) in states.items():
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6, err_msg=sid)
    return states


def _eos(topics, **ck):
    return {"state_store": "kafka", "changelog_topic": topics["changelog"], "interval_s": 50.0, **ck}


def test_read_committed_sees_each_score_once_and_nothing_of_an_open_round(kafka_broker, art1, artifact_1f, tmp_path, kafka_client):
    data, ids = sine_fleet(12, 20, 1, seed=31), [f"s{i}" for i in range(12)]
    topics = _setup(kafka_broker, "eos-committed")
    part = partition_by_index(N_PART)
    first, second = fleet_messages(data[:, :12], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=12)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck",
                        kafka={"exactly_once": True, "worker_id": "eos-a"},
                        checkpoint=_eos(topics, interval_readings=len(first)))
    kafka_broker.produce(topics["readings"], first, part)
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(first))
    deadline = time.monotonic() + 30
    while sum(w.worker.committed.values()) < len(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(w.worker.committed.values()) == len(first)  # the round after `first` committed
    kafka_broker.produce(topics["readings"], second, part)
    w.wait_consumed(len(first) + len(second))
    time.sleep(1.0)  # the second part's scores are sent (in the open transaction), no round is due
    seen_open = read_scores(kafka_broker.bootstrap, topics["scores"])
    uncommitted = read_scores(kafka_broker.bootstrap, topics["scores"], isolation="read_uncommitted")
    assert len(uncommitted) == len(first) + len(second)  # sent...
    assert sorted(_keys(seen_open)) == sorted(_keys(uncommitted[: len(first)]))  # ...but the open round is hidden
    assert all(len(v) == 1 for v in _keys(seen_open).values())
    assert w.stop() == 0  # the final round commits the open transaction
    seen = _keys(read_scores(kafka_broker.bootstrap, topics["scores"]))
    assert len(seen) == len(first) + len(second) and all(len(v) == 1 for v in seen.values())
    assert w.worker.sink.producer.committed >= 2 and w.worker.sink.producer.aborted == 0
    _check_states(kafka_broker, art1, s, topics, first + second, dict(w.worker.committed), 20)


def test_kill_9_inside_a_round_aborts_it_and_the_restart_replays_it(kafka_broker, art1, artifact_1f, tmp_path, kafka_client):
    data, ids = sine_fleet(15, 24, 1, seed=32), [f"s{i}" for i in range(15)]
    topics = _setup(kafka_broker, "eos-crash")
    part = partition_by_index(N_PART)
    first, second = fleet_messages(data[:, :14], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=14)
    port = free_port()
    eos = dict(SLOTWATCH_KAFKA__EXACTLY_ONCE="true", SLOTWATCH_KAFKA__WORKER_ID="eos-crash-0",
               SLOTWATCH_CHECKPOINT__STATE_STORE="kafka", SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC=topics["changelog"],
               SLOTWATCH_CHECKPOINT__INTERVAL_S="50", SLOTWATCH_CHECKPOINT__INTERVAL_READINGS=str(len(first)))
    log = open(tmp_path / "worker.log", "ab")

    def start(ck_dir):
        env = worker_env(kafka_broker, topics, artifact_1f, ck_dir, port, **eos)
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=log, stderr=log)

    def wait(p, what, cond, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert p.poll() is None, f"worker exited ({p.returncode}) waiting for {what}; see {tmp_path / 'worker.log'}"
            if cond(scrape_labeled(port)):
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}")

    def committed(m):
        return sum(v for k, v in m.items() if k.startswith("slotwatch_committed_offset{"))

    kafka_broker.produce(topics["readings"], first, part)
    p = start(tmp_path / "ck-a")
    wait(p, "the first round", lambda m: committed(m) == len(first))
    m = scrape_labeled(port)  # the transaction metrics, as Prometheus scrapes them
    assert m['slotwatch_transaction_rounds_total{outcome=committed}'] >= 1
    assert m['slotwatch_transaction_rounds_total{outcome=aborted}'] == m['slotwatch_transaction_rounds_total{outcome=fenced}'] == 0
    assert m["slotwatch_transaction_commit_seconds_count"] == m['slotwatch_transaction_rounds_total{outcome=committed}']
    kafka_broker.produce(topics["readings"], second, part)
    wait(p, "the second part", lambda m: m.get("slotwatch_readings_consumed_total", 0) >= len(first) + len(second))
    deadline = time.monotonic() + 30  # every output of the open round sent (read_uncommitted sees them)...
    while len(read_scores(kafka_broker.bootstrap, topics["scores"], "read_uncommitted", idle=0.5)) < len(first) + len(second):
        assert time.monotonic() < deadline, "the open round's scores did not arrive"
    assert len(read_scores(kafka_broker.bootstrap, topics["scores"])) == len(first)  # ...none committed
    os.kill(p.pid, signal.SIGKILL)  # inside the round's transaction: after its outputs, before its commit
    p.wait()
    aborted = read_scores(kafka_broker.bootstrap, topics["scores"], "read_uncommitted")[len(first):]

    p = start(tmp_path / "ck-b")  # same worker id, an empty checkpoint folder: init aborts the open transaction
    wait(p, "the replay", lambda m: m.get("slotwatch_readings_consumed_total", 0) >= len(second)
         and m.get("slotwatch_changelog_restored_sensors_total", 0) > 0)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0

    seen = read_scores(kafka_broker.bootstrap, topics["scores"])
    by_key = _keys(seen)
    every = first + second
    assert len(by_key) == len(every)  # every reading scored
    dups = {k: v for k, v in by_key.items() if len(v) > 1}
    aborted_keys = _keys(aborted)
    print(f"read_committed after the aborted round: {len(seen)} scores for {len(every)} readings, "
          f"{len(dups)} duplicates, aborted round {len(aborted)} records ({'tansu' if on_tansu(kafka_broker) else 'Kafka'})")
    if on_tansu(kafka_broker):  # aborted records are not filtered: exactly the aborted round's, byte-identical
        assert set(dups) == set(aborted_keys) and len(aborted_keys) == len(second)
        assert all(len(v) == 2 and v[0] == v[1] for v in dups.values())
        assert all(by_key[k][0] == v[0] for k, v in aborted_keys.items())
    else:  # a real Kafka hides the aborted transaction: strictly once
        assert not dups
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "x", checkpoint=_eos(topics))
    _check_states(kafka_broker, art1, s, topics, every, _committed(kafka_broker, f"g-{topics['readings']}",
                                                                   topics["readings"]), 24)


def _committed(kafka_broker, group: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(N_PART)}
    finally:
        c.close()


def test_a_second_worker_with_the_same_id_fences_the_first(kafka_broker, art1, artifact_1f, tmp_path, kafka_client):
    data, ids = sine_fleet(9, 30, 1, seed=33), [f"s{i}" for i in range(9)]
    topics = _setup(kafka_broker, "eos-fence")
    part = partition_by_index(N_PART)
    first, second = fleet_messages(data[:, :10], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=10)
    s_a = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "a",
                          kafka={"exactly_once": True, "worker_id": "eos-twin"},
                          checkpoint=_eos(topics, interval_s=0.5))
    s_b = s_a.model_copy(update={"checkpoint": s_a.checkpoint.model_copy(update={"dir": tmp_path / "b"})})
    kafka_broker.produce(topics["readings"], first, part)
    a = RunningWorker(s_a, artifact=art1)
    a.wait_consumed(len(first))
    _wait(lambda: sum(a.worker.committed.values()) == len(first), "a's round of the first part")  # a is idle
    b = RunningWorker(s_b, artifact=art1)  # same id: its init fences a (a learns it at its next request)
    # a may learn of the fencing already in the rebalance (its revoke round's offsets: ProducerFenced) and exit
    _wait(lambda: b.worker.restored and (a.worker.restored or not a.thread.is_alive()), "b's partitions", alive=(b,))
    kafka_broker.produce(topics["readings"], second, part)  # a's first record now: ProducerFenced
    a.thread.join(60)
    assert not a.thread.is_alive() and a.code == EXIT_FENCED
    assert a.metrics.txn_rounds.labels("fenced")._value.get() == 1  # noqa: SLF001
    deadline = time.monotonic() + 90
    while sum(b.worker.committed.values()) < len(first) + len(second) and time.monotonic() < deadline:
        assert b.thread.is_alive(), f"b exited with {b.code}"
        time.sleep(0.2)
    state_b = (b.metrics.consumed._value.get(), sorted(b.worker.restored), dict(b.worker.applied),  # noqa: SLF001
               b.worker.sink.producer.committed, b.worker.sink.producer.aborted)
    assert b.stop() == 0  # b was never fenced: a did not take the id back
    committed_b = dict(b.worker.committed)
    assert sum(committed_b.values()) == len(first) + len(second), state_b
    seen = _keys(read_scores(kafka_broker.bootstrap, topics["scores"]))
    assert len(seen) == len(first) + len(second)  # every reading's score committed (a's committed rounds + b's)
    _check_states(kafka_broker, art1, s_a, topics, first + second, committed_b, 30)


def _wait(cond, what: str, timeout: float = 90.0, alive=()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for w in alive:
            assert w.thread.is_alive(), f"a worker exited with {w.code} waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_revoke_commits_the_open_transaction_and_each_score_is_committed_once(kafka_broker, art1, artifact_1f, tmp_path, kafka_client):
    """A second worker joins while the first has an open transaction (scores sent, no round due): the
    first commits it on revoke, within the revoke budget, before the partitions move; the
    read_committed output holds each reading's score once (nothing aborted, so on tansu too)."""
    data, ids = sine_fleet(12, 20, 1, seed=34), [f"s{i}" for i in range(12)]
    topics = _setup(kafka_broker, "eos-revoke")
    part = partition_by_index(N_PART)
    first, second = fleet_messages(data[:, :10], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=10)
    s_a = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "a",
                          kafka={"exactly_once": True, "worker_id": "eos-rev-a"},
                          checkpoint=_eos(topics, interval_readings=10 ** 9))  # no round until the revoke
    s_b = s_a.model_copy(update={"kafka": s_a.kafka.model_copy(update={"worker_id": "eos-rev-b"}),
                                 "checkpoint": s_a.checkpoint.model_copy(update={"dir": tmp_path / "b"})})
    kafka_broker.produce(topics["readings"], first, part)
    a = RunningWorker(s_a, artifact=art1)
    a.wait_consumed(len(first))
    _wait(lambda: a.worker.sink.producer.open and a.worker.sink.producer.committed == 0, "a's open transaction")
    assert len(read_scores(kafka_broker.bootstrap, topics["scores"], idle=1.0)) == 0  # open: hidden
    b = RunningWorker(s_b, artifact=art1)  # joins: a's partitions are revoked, a commits the open round first
    _wait(lambda: a.worker.sink.producer.committed >= 1, "a's commit on revoke", alive=(a, b))
    assert a.worker.sink.producer.aborted == 0
    group_offsets = _committed(kafka_broker, s_a.kafka.group_id, topics["readings"])
    assert sum(o or 0 for o in group_offsets.values()) == len(first), group_offsets  # the revoke round's offsets
    budget_s = s_a.limits.revoke_budget_fraction * s_a.kafka.session_timeout_ms / 1000
    assert a.metrics.txn_commit_seconds._sum.get() < budget_s  # noqa: SLF001 - the revoke round, within its budget
    _wait(lambda: b.worker.restored and a.worker.restored, "the partitions shared", alive=(a, b))
    kafka_broker.produce(topics["readings"], second, part)
    _wait(lambda: a.metrics.consumed._value.get() + b.metrics.consumed._value.get() >= len(first) + len(second),  # noqa: SLF001
          "the second part consumed", alive=(a, b))
    assert a.stop() == 0 and b.stop() == 0
    seen = _keys(read_scores(kafka_broker.bootstrap, topics["scores"]))
    aborted = a.worker.sink.producer.aborted + b.worker.sink.producer.aborted
    print(f"revoke test: {sum(len(v) for v in seen.values())} committed scores for {len(first) + len(second)} readings, "
          f"{aborted} aborted rounds ({'tansu' if on_tansu(kafka_broker) else 'Kafka'})")
    assert len(seen) == len(first) + len(second)  # every reading scored
    if aborted == 0 or not on_tansu(kafka_broker):  # tansu delivers aborted records; a real Kafka never
        assert all(len(v) == 1 for v in seen.values())
    else:
        assert all(len(v) == 1 or v[0] == v[1] for v in seen.values())
