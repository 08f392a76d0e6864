"""The worker's state changelog (:class:`ChangelogStore`): what a checkpoint round writes, and the
restore on assignment.  The Kafka reads and writes are :mod:`worker.kafka.changelog`'s."""

from __future__ import annotations

import logging
import time

import numpy as np

from worker.checkpointing.changelog import Restored
from worker.kafka.changelog import ChangelogWriter, make_restore_consumer, restore_partition

log = logging.getLogger("slotwatch.changelog")


class ChangelogStore:
    """The worker's state changelog: what a checkpoint round writes, and restores on assignment.

    Per partition it remembers which sensors (at which ``last_offset``) the changelog holds,
    so a round writes only the rows changed since (plus tombstones and the marker).  A round
    writes every row (a *full snapshot*, which restores seek to) when it is the partition's
    first, after a model swap, or when the records written since the last snapshot would
    exceed the partition's sensor count: a restore then reads at most about twice the sensors.  The
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
        self.snapshots: dict[int, list[list[int]]] = {}  # [changelog offset, source offset] of the newest full rounds
        self.since_full: dict[int, float] = {}  # records written since the newest full snapshot

    def prepare(self, partition: int, columns, next_offset: int, model_version: str):
        """This round's records of ``partition`` (``columns``: its export, with the ``model_version`` column)."""
        from worker.checkpointing import changelog as cl

        n = len(columns["sensor_id"])
        known = self.written.setdefault(partition, {})
        full = self.versions.get(partition) != model_version
        rows = np.arange(n) if full else cl.select_changed(columns, known)
        removed = cl.removed_ids(columns, known)
        if not full and len(rows) and self.since_full.get(partition, float("inf")) + len(rows) + len(removed) > n:
            full, rows = True, np.arange(n)  # a new snapshot bounds what a restore reads
        recs = cl.encode_round(partition, next_offset, columns, rows, model_version, removed, full=full,
                               snapshots=self.snapshots.get(partition, ()))
        return partition, recs, columns, rows, removed, model_version, full, next_offset

    def write(self, rounds, timeout_s: float | None = None) -> int:
        """Produce every prepared round, wait for all acknowledgements; returns the bytes written."""
        from worker.checkpointing import changelog as cl

        futures, total, n, firsts = [], 0, 0, []
        for partition, recs, *_ in rounds:
            firsts.append(len(futures))
            futures += self.writer.send(partition, recs)
            total += sum(len(r.key) + len(r.value or b"") for r in recs)
            n += len(recs)
        self.writer.wait(futures, self.timeout_s if timeout_s is None else timeout_s)
        self.acked(rounds, [_offset(futures[i]) for i in firsts])
        if self.metrics is not None:
            self.metrics.changelog_records.inc(n)
            self.metrics.changelog_bytes.inc(total)
        return total

    def acked(self, rounds, starts=None) -> None:
        """Remember what acknowledged rounds put in the changelog (the next round writes only what changed);
        ``starts``: the changelog offset of each round's first record (a full round becomes a snapshot)."""
        from worker.checkpointing import changelog as cl

        for i, (partition, recs, columns, rows, removed, version, full, nxt) in enumerate(rounds):
            cl.note_written(self.written.setdefault(partition, {}), columns, rows, removed)
            self.versions[partition] = version
            start = starts[i] if starts is not None else None
            if full:
                if start is not None:
                    self.snapshots[partition] = (self.snapshots.get(partition, []) + [[start, nxt]])[-2:]
                self.since_full[partition] = 0
            else:
                self.since_full[partition] = self.since_full.get(partition, float("inf")) + len(recs)

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
        self.snapshots[partition] = res.snapshots
        # no snapshot known (a log written before snapshots): the next round writes one
        self.since_full[partition] = max(0, res.records - res.n_sensors) if res.snapshots else float("inf")
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
        for d in (self.written, self.versions, self.snapshots, self.since_full):
            d.pop(partition, None)

    def on_assigned(self, tp, local, features: list[str], model_version: str):
        """The checkpoint a newly assigned partition starts from: ``local`` when it is current (its
        next offset equals the committed offset), else one folded from the changelog at the committed
        offset (``None``: nothing committed and no local checkpoint, start from the beginning)."""
        from worker.checkpointing.format import Checkpoint

        p = tp.partition
        committed = self.committed(tp)
        # a local checkpoint may hold rows the changelog lacks (state_store was local before): after
        # a local restore the first round writes every row of the partition
        self.forget(p)
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


def _offset(future) -> int | None:
    """The changelog offset of an acknowledged record (``None`` when the future does not tell)."""
    try:
        return int(future.get(timeout=0).offset)
    except Exception:  # noqa: BLE001 - not a kafka-python future (tests), or no metadata
        return None
