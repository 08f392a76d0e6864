"""The state changelog's Kafka edge: write a round's records and wait for acknowledgement;
read a changelog partition to its end without a consumer group, and restore from it.

Record layout and the restore rule: :mod:`worker.checkpointing.changelog` (pure).

**How a restore knows it has read everything.**  The test broker answers end-offset
queries low (the first offset of the last write batch + 1, see DESIGN.md), and on a real
cluster an end offset read before the read starts says nothing about records a zombie may
still append.  So the restorer does not trust ``end_offsets``: it first produces a *fence*
record of its own (key ``b"__restore__"``, a fresh token as value) to the changelog partition
and waits for its acknowledgement; the acknowledged offset ``F`` is a true bound (every
record acknowledged before it is at an offset below it).  It then reads from the beginning
until it has seen the record at ``F`` (and checks the token).  A read that makes no
progress for ``stall_s`` seconds raises :class:`ChangelogStalled` instead of hanging
(a missing tail record must not hang the restore; Quix Streams issue 1017).  Fences share
one key, so compaction keeps only the newest; the fold ignores them.

>>> cfg = changelog_topic_config()
>>> cfg["cleanup.policy"]
'compact'
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from worker.checkpointing.changelog import FENCE_KEY, ChangelogRecord, Restored, fold
from worker.kafka.changelog_topic import (  # noqa: F401 - the topic's admin side, re-exported
    ChangelogError,
    changelog_topic_config,
    create_changelog_topic,
    ensure_changelog_topic,
)

log = logging.getLogger("slotwatch.changelog")


class ChangelogStalled(ChangelogError):
    pass


class ChangelogWriter:
    """Produces a round's records to the changelog partition of their source partition and waits for acks."""

    def __init__(self, producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def send(self, partition: int, records: list[ChangelogRecord]) -> list[Any]:
        send = self.producer.send
        return [send(self.topic, key=r.key, value=r.value, headers=r.headers, partition=partition) for r in records]

    def wait(self, futures: list[Any], timeout_s: float) -> None:
        """Block until every record is acknowledged; raises :class:`ChangelogError` on any failure or timeout."""
        deadline = time.monotonic() + timeout_s
        self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        for f in futures:
            try:
                f.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - KafkaError or timeout: the round is not durable
                raise ChangelogError(f"changelog record not acknowledged: {e}") from e

    def write(self, partition: int, records: list[ChangelogRecord], timeout_s: float = 30.0) -> int:
        """Send and wait; returns the bytes of keys and values written."""
        self.wait(self.send(partition, records), timeout_s)
        return sum(len(r.key) + len(r.value or b"") for r in records)


def read_partition(consumer, producer, topic: str, partition: int, *, stall_s: float = 10.0,
                   timeout_s: float = 600.0, progress: Callable[[int, int], None] | None = None) -> Iterator[Any]:
    """Every record of one changelog partition up to the fence this call writes (see the module doc).

    ``consumer`` must have no group (``group_id=None``); it is assigned the partition here.
    ``progress(position, fence_offset)`` is called after each poll.
    """
    from kafka import TopicPartition

    token = uuid.uuid4().hex.encode()
    try:
        meta = producer.send(topic, key=FENCE_KEY, value=token, partition=partition).get(timeout=stall_s)
    except Exception as e:  # noqa: BLE001
        raise ChangelogError(f"could not write the restore fence to {topic}[{partition}]: {e}") from e
    fence = meta.offset
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    deadline = time.monotonic() + timeout_s
    last_progress = time.monotonic()
    pos = 0
    while True:
        got = consumer.poll(timeout_ms=200, max_records=100_000)
        recs = got.get(tp, [])
        if recs:
            last_progress = time.monotonic()
            for r in recs:
                if r.offset == fence:
                    if r.key != FENCE_KEY or r.value != token:
                        raise ChangelogError(f"{topic}[{partition}] offset {fence} is not this restore's fence record")
                    if progress:
                        progress(fence + 1, fence + 1)
                    return
                if r.offset > fence:
                    raise ChangelogError(f"{topic}[{partition}]: read past the fence offset {fence} without seeing it")
                yield r
            pos = recs[-1].offset + 1
        if progress:
            progress(pos, fence + 1)
        now = time.monotonic()
        if now - last_progress > stall_s:
            raise ChangelogStalled(f"{topic}[{partition}]: no records for {stall_s:.0f} s at offset {pos}, "
                                   f"fence at {fence}; the changelog partition may be missing records")
        if now > deadline:
            raise ChangelogStalled(f"{topic}[{partition}]: restore not finished within {timeout_s:.0f} s "
                                   f"(at offset {pos} of {fence})")


def restore_partition(consumer, producer, topic: str, partition: int, committed: int, **kw) -> Restored:
    """Read changelog partition ``partition`` to its end and fold it at the ``committed`` readings offset."""
    t0 = time.perf_counter()
    res = fold(read_partition(consumer, producer, topic, partition, **kw), committed)
    log.info("partition %d: %d sensors restored from the changelog %s (%d records, %d rows beyond offset %d "
             "skipped) in %.2f s", partition, res.n_sensors, topic, res.records, res.skipped_beyond, committed,
             time.perf_counter() - t0,
             extra={"partition": partition, "sensors": res.n_sensors, "committed": committed})
    return res


def make_restore_consumer(bootstrap_or_settings, **overrides):
    """A group-less consumer for restores: from :class:`worker.settings.KafkaSettings` or a bootstrap string."""
    from kafka import KafkaConsumer

    if isinstance(bootstrap_or_settings, str):
        cfg: dict = {"bootstrap_servers": bootstrap_or_settings}
    else:
        from worker.kafka.clients import common_config

        cfg = common_config(bootstrap_or_settings)
    cfg.update(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
               fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
               fetch_max_wait_ms=50)
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


class ChangelogStore:
    """The worker's state changelog: what a checkpoint round writes, and restores on assignment.

    Per partition it remembers which sensors (at which ``last_offset``) the changelog holds,
    so a round writes only the rows changed since (plus tombstones and the marker).  The
    worker calls :meth:`prepare` on the consumer thread (with the export it takes anyway),
    :meth:`write` where it writes checkpoint files (the writer thread; raises when a record
    is not acknowledged, so the round's offsets are not committed), :meth:`restore` on
    assignment and :meth:`forget` when a partition leaves.
    """

    def __init__(self, kafka_settings, producer, topic: str, metrics=None, stall_s: float = 30.0,
                 timeout_s: float = 60.0, writer_producer=None) -> None:
        self.kafka = kafka_settings
        self.producer = producer  # plain: the restore fence, outside any transaction
        self.topic = topic
        self.metrics = metrics
        self.stall_s = stall_s
        self.timeout_s = timeout_s
        # exactly-once: the rounds' records go through the worker.kafka.transactions.TransactionalRound,
        # and restores read committed records only
        self.writer = ChangelogWriter(writer_producer or producer, topic)
        self.read_committed = writer_producer is not None
        self.written: dict[int, dict[str, int]] = {}
        # model version of the partition's rows in the changelog: a live model swap changes every row's
        # state without a reading, so the first round under another version writes every row
        self.versions: dict[int, str | None] = {}

    def prepare(self, partition: int, columns, next_offset: int, model_version: str):
        """This round's records of ``partition`` (``columns``: its export, with the ``model_version`` column)."""
        from worker.checkpointing import changelog as cl

        known = self.written.setdefault(partition, {})
        if self.versions.get(partition) != model_version:
            rows = np.arange(len(columns["sensor_id"]))
        else:
            rows = cl.select_changed(columns, known)
        removed = cl.removed_ids(columns, known)
        recs = cl.encode_round(partition, next_offset, columns, rows, model_version, removed)
        return partition, recs, columns, rows, removed, model_version

    def write(self, rounds, timeout_s: float | None = None) -> int:
        """Produce every prepared round, wait for all acknowledgements; returns the bytes written."""
        from worker.checkpointing import changelog as cl

        futures, total, n = [], 0, 0
        for partition, recs, *_ in rounds:
            futures += self.writer.send(partition, recs)
            total += sum(len(r.key) + len(r.value or b"") for r in recs)
            n += len(recs)
        self.writer.wait(futures, self.timeout_s if timeout_s is None else timeout_s)
        self.acked(rounds)
        if self.metrics is not None:
            self.metrics.changelog_records.inc(n)
            self.metrics.changelog_bytes.inc(total)
        return total

    def acked(self, rounds) -> None:
        """Remember what acknowledged rounds put in the changelog (the next round writes only what changed)."""
        from worker.checkpointing import changelog as cl

        for partition, _, columns, rows, removed, version in rounds:
            cl.note_written(self.written.setdefault(partition, {}), columns, rows, removed)
            self.versions[partition] = version

    def restore(self, partition: int, committed: int) -> Restored:
        """The partition's sensors as of readings offset ``committed`` (see :func:`restore_partition`)."""
        m = self.metrics
        gauge = m.changelog_restore_progress.labels(str(partition)) if m is not None else None

        def progress(pos: int, end: int) -> None:
            if gauge is not None:
                gauge.set(pos / end if end else 1.0)

        if gauge is not None:
            gauge.set(0.0)
        t0 = time.perf_counter()
        consumer = make_restore_consumer(self.kafka, **({"isolation_level": "read_committed"} if self.read_committed else {}))
        try:
            res = restore_partition(consumer, self.producer, self.topic, partition, committed, stall_s=self.stall_s,
                                    progress=progress)
        finally:
            consumer.close()
        self.written[partition] = dict(res.written)
        if m is not None:
            m.changelog_restore_seconds.observe(time.perf_counter() - t0)
            m.changelog_restored.inc(res.n_sensors)
            gauge.set(1.0)
        return res

    def committed(self, tp) -> int | None:
        """The group's committed offset of ``tp``, asked with a client of our own: kafka-python 3 runs
        rebalance callbacks on the worker consumer's IO thread, where its blocking calls are refused."""
        c = make_restore_consumer(self.kafka, group_id=self.kafka.group_id)
        try:
            return c.committed(tp)
        finally:
            c.close()

    def forget(self, partition: int) -> None:
        self.written.pop(partition, None)
        self.versions.pop(partition, None)

    def on_assigned(self, tp, local, features: list[str], model_version: str):
        """The checkpoint a newly assigned partition starts from: ``local`` when it is current (its
        next offset equals the committed offset), else one folded from the changelog at the committed
        offset (``None``: nothing committed and no local checkpoint, start from the beginning)."""
        from worker.checkpointing.format import Checkpoint

        p = tp.partition
        committed = self.committed(tp)
        # a local checkpoint may hold rows the changelog lacks (state_store was local before): after
        # a local restore the first round writes every row of the partition
        self.written.pop(p, None)
        self.versions.pop(p, None)
        if committed is None:
            return local
        if local is not None and local.next_offset == committed:
            log.info("partition %d: the local checkpoint is current (offset %d); not reading the changelog", p,
                     committed, extra={"partition": p, "offset": committed})
            return local
        res = self.restore(p, committed)
        if res.marker_next != committed:
            log.warning("partition %d: the changelog %s has no marker at the committed offset %d (newest at or below: "
                        "%s); it was not written by every round (state_store was local?)%s", p, self.topic, committed,
                        res.marker_next, "; using the local checkpoint" if local is not None else "",
                        extra={"partition": p, "offset": committed})
            if local is not None:
                self.written.pop(p, None)
                return local
        versions = set(res.columns.get("model_version", np.array([], dtype=object)).tolist())
        if versions <= {model_version}:  # rows of another version restore warm: the first round rewrites them
            self.versions[p] = model_version
        return Checkpoint(p, committed, model_version, res.columns,
                          meta={"features": list(features), "source": f"changelog {self.topic}"})
