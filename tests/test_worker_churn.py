"""Issue 12 item 5: three workers on one stream, no shared checkpoint folder, state in the Kafka
changelog (``SLOTWATCH_CHECKPOINT__STATE_STORE=kafka``), one consumer group on the real test
broker.  Each worker is a subprocess (``python -m worker.cli run``) with its own empty folder.

The story, each step waiting on a condition (never on a fixed sleep):

1. workers A and B start; chunk 1 of the stream is produced; A and B together own every
   partition and have committed all of it;
2. worker C joins late (a rebalance: every partition is revoked, checkpointed to the
   changelog, and restored by its new owner); chunk 2; every partition owned, all committed;
3. B leaves with SIGTERM (exit 0: final round, commit, leave the group); chunk 3; A and C
   own every partition, all committed;
4. chunk 4 is fed slowly and A is killed with ``kill -9`` while it scores it (readings
   after its last committed round are scored again by the next owner: duplicates);
5. chunk 5; C alone owns every partition and has committed everything; SIGTERM.

Then: every sensor's state, folded from the changelog at the group's committed offsets,
equals the uninterrupted in-process run's (``atol=1e-6``, as tests/test_worker_changelog.py
and tests/test_worker_crash.py); every reading has a score (``publish_scores``) whose values
are the uninterrupted run's (1e-5, as the crash test); a reading scored twice carries the same
bytes both times; and at least one reading was scored twice (the kill landed on work in hand).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.test_worker_changelog import _changelog_states
from tests.worker_helpers import (
    fleet_messages, partition_by_index, reference_detector, scores_by_reading, scrape_labeled, worker_env, worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.kafka.embedded import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

PARTITIONS, N_SENSORS, SLOTS = 6, 240, 48
CHUNKS = [(0, 12), (12, 24), (24, 36), (36, 52), (52, 60)]  # steps of each phase's readings
STEPS = CHUNKS[-1][1]
WAIT_S = 240.0  # per condition: generous, the machine is shared (a worker start imports TensorFlow)


class Fleet:
    """The three worker subprocesses, their /metrics ports and their log files."""

    def __init__(self, broker, topics, model, tmp_path) -> None:
        self.broker, self.topics, self.model, self.tmp = broker, topics, model, tmp_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> None:
        port = free_port()
        ckpt = self.tmp / f"ckpt-{name}"  # each its own, empty: no shared disk
        ckpt.mkdir()
        env = worker_env(
            self.broker, self.topics, self.model, ckpt, port,
            SLOTWATCH_KAFKA__CLIENT_ID=f"churn-{name}",
            SLOTWATCH_KAFKA__MAX_POLL_RECORDS="500",
            SLOTWATCH_MODEL__SLOTS=str(SLOTS),
            SLOTWATCH_CHECKPOINT__STATE_STORE="kafka",
            SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC=self.topics["changelog"],
            SLOTWATCH_CHECKPOINT__INTERVAL_S="1.5",
            SLOTWATCH_CHECKPOINT__INTERVAL_READINGS="1000000",
        )
        log = open(self.tmp / f"worker-{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=log, stderr=log)
        self.ports[name] = port

    def live(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def check_alive(self) -> None:
        for n, p in self.procs.items():
            if p.returncode is None and p.poll() is not None:
                raise AssertionError(f"worker {n} exited with {p.returncode}: {self.log_tail(n)}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")[-n:]

    def metrics(self, name: str) -> dict[str, float]:
        return scrape_labeled(self.ports[name])

    def owned(self) -> dict[str, dict[int, float]]:
        """Live worker -> {partition: committed offset} from its /metrics."""
        out = {}
        for n in self.live():
            m = self.metrics(n)
            out[n] = {int(k.split("partition=")[1].rstrip("}")): v for k, v in m.items()
                      if k.startswith("slotwatch_committed_offset{")}
        return out

    def wait_committed(self, produced: int, owners: set[str], what: str) -> dict[str, dict[int, float]]:
        """Until exactly ``owners`` own every partition between them (each at least one) and have committed
        ``produced`` readings."""
        deadline = time.monotonic() + WAIT_S
        seen = {}
        while time.monotonic() < deadline:
            self.check_alive()
            seen = self.owned()
            parts = [p for n in owners for p in seen.get(n, {})]
            others = [p for n, ps in seen.items() if n not in owners for p in ps]
            total = sum(v for n in owners for v in seen.get(n, {}).values())
            if (sorted(parts) == list(range(PARTITIONS)) and not others and total == produced
                    and all(seen.get(n) for n in owners)):
                return seen
            time.sleep(0.3)
        logs = "\n".join(f"--- {n}\n{self.log_tail(n)}" for n in self.procs)
        raise AssertionError(f"{what}: not reached in {WAIT_S:.0f} s (owned/committed {seen}, want {produced} "
                             f"committed by {sorted(owners)})\n{logs}")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    from worker.kafka.changelog import make_restore_consumer

    c = make_restore_consumer(bootstrap, group_id=group)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        c.close()


def test_three_workers_join_leave_and_crash_without_shared_disk(kafka_broker, artifact_1f, tmp_path):
    from kafka import KafkaAdminClient, KafkaProducer

    from worker.kafka.changelog import ensure_changelog_topic

    ids = [f"s{i}" for i in range(N_SENSORS)]
    data = sine_fleet(N_SENSORS, STEPS, 1, seed=31)
    chunks = [fleet_messages(data[:, :hi], ids, ["temp"], start=lo) for lo, hi in CHUNKS]
    every = [m for c in chunks for m in c]
    topics = kafka_broker.topics("churn", partitions=PARTITIONS)
    topics["changelog"] = topics["readings"].replace(".readings", ".changelog")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    ensure_changelog_topic(admin, topics["changelog"], PARTITIONS)
    admin.close()
    part = partition_by_index(PARTITIONS)
    fleet = Fleet(kafka_broker, topics, artifact_1f, tmp_path)
    produced = 0
    t_start = time.monotonic()
    timeline = []

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - t_start:6.1f} s {what}")

    try:
        # 1. A and B
        fleet.start("a")
        fleet.start("b")
        produced += kafka_broker.produce(topics["readings"], chunks[0], part)
        fleet.wait_committed(produced, {"a", "b"}, "A and B share the partitions")
        mark("A and B own every partition, chunk 1 committed")

        # 2. C joins late
        fleet.start("c")
        produced += kafka_broker.produce(topics["readings"], chunks[1], part)
        owned = fleet.wait_committed(produced, {"a", "b", "c"}, "C joined")
        restored_c = fleet.metrics("c").get("slotwatch_changelog_restored_sensors_total", 0)
        assert restored_c > 0, "C took over partitions without restoring their sensors from the changelog"
        mark(f"C joined: owned {dict((n, sorted(ps)) for n, ps in owned.items())}; C restored {restored_c:.0f} sensors")

        # 3. B leaves (SIGTERM)
        fleet.procs["b"].send_signal(signal.SIGTERM)
        assert fleet.procs["b"].wait(60) == 0, fleet.log_tail("b")
        produced += kafka_broker.produce(topics["readings"], chunks[2], part)
        owned = fleet.wait_committed(produced, {"a", "c"}, "B left")
        mark(f"B left (exit 0): owned {dict((n, sorted(ps)) for n, ps in owned.items())}")

        # 4. A is killed (kill -9) while it scores chunk 4, fed slowly in the background: after A has
        # committed a round of chunk 4 (so the next owner restores rows A wrote for it) and while it
        # holds readings not saved yet (so they are scored again)
        committed_a0 = sum(owned["a"].values())
        consumed_a0 = fleet.metrics("a").get("slotwatch_readings_consumed_total", 0)
        feed = chunks[3]
        feeder_done = threading.Event()

        def feeder() -> None:
            prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
            step = len(ids)  # one time step of the fleet at a time, ~3 steps per second
            for i in range(0, len(feed), step):
                for k, v in feed[i : i + step]:
                    prod.send(topics["readings"], key=k, value=v, partition=part(k))
                prod.flush(30)
                time.sleep(0.3)
            prod.close()
            feeder_done.set()

        t = threading.Thread(target=feeder, daemon=True)
        t.start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            fleet.check_alive()
            m_a = fleet.metrics("a")
            saved = sum(v for k, v in m_a.items() if k.startswith("slotwatch_committed_offset{")) - committed_a0
            unsaved = m_a.get("slotwatch_readings_consumed_total", 0) - consumed_a0 - saved
            if saved > 0 and unsaved >= 50:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"A never held a committed round of chunk 4 and unsaved readings at once: {fleet.log_tail('a')}")
        os.kill(fleet.procs["a"].pid, signal.SIGKILL)
        fleet.procs["a"].wait()
        mark(f"A killed (-9) with {saved:.0f} readings of chunk 4 committed and {unsaved:.0f} not yet")
        t.join(120)
        assert feeder_done.is_set()
        produced += len(feed)

        # 5. C alone
        produced += kafka_broker.produce(topics["readings"], chunks[4], part)
        owned = fleet.wait_committed(produced, {"c"}, "C took over A's partitions")
        mark("C owns every partition, everything committed")
        fleet.procs["c"].send_signal(signal.SIGTERM)
        assert fleet.procs["c"].wait(60) == 0, fleet.log_tail("c")
        mark("C stopped (exit 0)")
    finally:
        fleet.stop_all()
    assert produced == len(every)

    # every sensor's final state: the changelog folded at the group's committed offsets
    group = f"g-{topics['readings']}"  # worker_env's group id
    committed = _committed(kafka_broker.bootstrap, group, topics["readings"])
    assert sum(committed.values()) == len(every), committed
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v, part(k)) for k, v in every]
    settings = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ref", model={"slots": SLOTS})
    ref, ref_scores = reference_detector(art.load(artifact_1f), settings, readings)
    states = _changelog_states(kafka_broker, topics["changelog"], committed)
    assert sorted(states) == sorted(ids)
    for sid, (state, total, _version) in states.items():
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6, err_msg=sid)
        assert total == STEPS, (sid, total)

    # every reading scored, duplicates byte-identical, values as the uninterrupted run
    recs = kafka_broker.read_all(topics["scores"], expect=None, timeout=120, idle=3.0)
    by_key = scores_by_reading(recs)
    assert len(by_key) == len(every), f"{len(every) - len(by_key)} readings never scored"
    different = {k: v for k, v in by_key.items() if len(v) > 1}
    assert not different, f"{len(different)} readings scored twice with different bytes, e.g. {next(iter(different.items()))}"
    dups = len(recs) - len(by_key)
    assert dups > 0, "no reading was scored twice: the kill -9 did not land on unsaved work"
    ref_by = {(s.sensor_id, s.ts_ms): s for s in ref_scores}
    for vals in by_key.values():
        d = json.loads(next(iter(vals)))
        r = ref_by[(d["sensor_id"], d["ts_ms"])]
        assert abs(d["score"] - r.score) < 1e-5 and abs(d["error"] - r.error) < 1e-5 * max(1.0, r.error)
    print("\n".join(timeline))
    print(f"{len(every)} readings, {len(recs)} scores ({dups} duplicates, all byte-identical), "
          f"{len(states)} sensors equal to the uninterrupted run")
