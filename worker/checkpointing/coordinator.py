"""The checkpoint round: send outputs -> write state -> commit offsets.

One round (:class:`Round`), in this order, so that output is at-least-once and state and
offsets never run ahead of the output:

1. **send outputs**: flush the sink until every output so far is acknowledged;
2. **write state**: take a copy of each changed partition's state (export), then write it
   durably: the state changelog records when ``checkpoint.state_store`` is kafka/both (acknowledged,
   or the round fails), the local checkpoint files unless it is ``kafka``;
3. **commit offsets**: commit the checkpoints' next offsets, for partitions still owned.

Periodic rounds run the write on a background writer thread (the consumer thread only flushes
and exports); the offsets are committed when :meth:`CheckpointCoordinator.reap` sees the write
durable.  Revocation and shutdown rounds run in the foreground (after any background round).
With ``SLOTWATCH_KAFKA__EXACTLY_ONCE`` a round is one Kafka transaction (outputs + changelog
records + offsets), run on the consumer's thread over every owned partition: its steps are
:class:`~worker.checkpointing.transactional.ExactlyOnceRounds` (it reuses :meth:`Round.export_state`).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("slotwatch.worker")


class Round:
    """One checkpoint round over some partitions."""

    def __init__(self, coord: "CheckpointCoordinator", partitions, deadline: float | None, sync_commit: bool) -> None:
        self.coord = coord
        self.partitions = partitions
        self.deadline = deadline
        self.sync_commit = sync_commit
        self.checkpoints: list = []  # worker.checkpointing.format.Checkpoint, one per changed partition
        self.changelog_records: list = []  # state changelog records, per partition (issue 12)
        self.written: dict[int, int] = {}  # partition -> next offset written
        self.offsets: dict = {}  # TopicPartition -> OffsetAndMetadata to commit
        self.export_s = 0.0

    # step 1
    def send_outputs(self) -> bool:
        app = self.coord.app
        return app.sink.flush(self.deadline, stopping=app.stop_event.is_set)

    # step 2a: a copy of the state (on the consumer thread: the state moves on afterwards)
    def export_state(self) -> None:
        import numpy as np

        from worker.checkpointing.format import Checkpoint
        from worker.core.handover import VERSION_COLUMN

        c, app = self.coord, self.coord.app
        t0 = time.perf_counter()
        det, version = app.detector, app.model_version
        for p in self.partitions:
            nxt = app.partitions.applied.get(p, -1) + 1
            if nxt <= 0:
                continue  # nothing applied and no checkpoint: nothing to save
            if c.checkpointed.get(p) != nxt:
                cols = det.export_partition(p)  # a copy: the state may move on while it is written
                cols[VERSION_COLUMN] = np.full(len(cols["sensor_id"]), version, dtype=object)
                if c.changelog is not None:
                    self.changelog_records.append(c.changelog.prepare(p, cols, nxt, version))
                self.checkpoints.append(Checkpoint(p, nxt, version, cols, meta={
                    "topic": app.topic, "client_id": app.settings.kafka.client_id, "features": app.features,
                    **det.silence_meta(p)}))
                self.written[p] = nxt
            if c.committed.get(p) != nxt:
                self.offsets[app.source.tp(p)] = app.source.offset(nxt, f"slotwatch {version}")
        self.export_s = time.perf_counter() - t0

    # step 2b: durable (on the writer thread for a background round)
    def write_state(self) -> tuple[int, float]:
        c = self.coord
        t0 = time.perf_counter()
        recs = self.changelog_records
        total = c.changelog.write(recs) if recs else 0  # acknowledged, or raises: offsets stay uncommitted
        if c.state_store != "kafka":
            total += sum(c.store.save(ck)[1] for ck in self.checkpoints)
        return total, time.perf_counter() - t0

    # step 3
    def commit_offsets(self) -> None:
        if self.offsets:
            self.coord.commit(self.offsets, sync=self.sync_commit)


class CheckpointCoordinator:
    """Checkpoint rounds of a worker: periodic (background), on revocation and at shutdown."""

    def __init__(self, app, store, changelog=None) -> None:
        self.app = app
        self.store = store
        self.changelog = changelog  # worker.kafka.changelog.ChangelogStore when state_store is kafka/both
        self.settings = app.settings.checkpoint
        self.state_store = self.settings.state_store
        self.checkpointed: dict[int, int] = {}  # next_offset of the last durable checkpoint
        self.committed: dict[int, int] = {}  # offset last committed to Kafka
        self.lost: set[int] = set()  # partitions being dropped as lost: never commit their offsets
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.pending = None  # (future, Round) of the background round in flight
        self._writer = None  # checkpoint writer thread, started with the first background round
        self.eos = None  # worker.checkpointing.transactional.ExactlyOnceRounds in exactly-once mode

    def attach_transactions(self, txn) -> None:
        """Exactly-once: rounds become transactions of ``txn`` (the sink's TransactionalRound)."""
        from worker.checkpointing.transactional import ExactlyOnceRounds

        self.eos = ExactlyOnceRounds(self, txn)

    def count(self, n: int) -> None:
        self.since_checkpoint += n

    def maybe_round(self) -> None:
        """A round every ``interval_readings`` readings or ``interval_s`` seconds.

        An idle round writes nothing (unchanged partitions are skipped) but still counts as a
        success: everything applied is durable, so ``slotwatch_checkpoint_age_seconds`` only
        grows while state is at risk (an idle worker must not trip the age alert).
        """
        self.reap()
        c = self.settings
        due = self.since_checkpoint >= c.interval_readings or time.monotonic() - self.last_checkpoint >= c.interval_s
        if self.eos is not None and (self.eos.rewind_due or self.app.sink.error is not None):
            due = True  # exactly-once: a failed transaction is rewound at once
        if not due or self.pending is not None:
            return
        restored = self.app.partitions.restored
        if restored:
            self.round(sorted(restored), background=True)
        elif self.app.sink.idle:
            self.app.metrics.checkpoint_last.set(time.time())
            self.last_checkpoint = time.monotonic()

    def round(self, partitions, *, deadline: float | None = None, sync_commit: bool = True,
              background: bool = False) -> bool:
        """Send outputs, write the partitions' state durably, then commit their offsets."""
        if self.eos is not None:  # one transaction holds every owned partition's outputs: all of them commit
            return self.eos.round(Round(self, sorted(self.app.partitions.restored), deadline, True))
        self.reap(wait=True, sync_commit=sync_commit,
                  timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        r = Round(self, partitions, deadline, sync_commit)
        if not r.send_outputs():
            return False
        r.export_state()
        if background and r.checkpoints:
            if self._writer is None:
                from concurrent.futures import ThreadPoolExecutor

                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
            self.pending = (self._writer.submit(r.write_state), r)
            self.since_checkpoint = 0
            self.last_checkpoint = time.monotonic()
            return True
        try:
            total, write_s = r.write_state()
        except Exception as e:  # noqa: BLE001 - OSError, or anything else: same handling
            self._failed(e)
            return False
        self._done(r, total, r.export_s + write_s, foreground=True)
        return True

    def reap(self, wait: bool = False, sync_commit: bool = True, timeout: float | None = None) -> None:
        """Finish a background round whose state is written: record it and commit its offsets.

        With ``timeout`` (seconds) a round that is not durable by then is given up: cancelled
        if it has not started, otherwise left to finish unrecorded (its offsets are never
        committed; the files it writes are consistent and merely older than the next round's).
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        if self.pending is None:
            return
        fut, r = self.pending
        if not wait and not fut.done():
            return
        self.pending = None
        try:
            total, write_s = fut.result(timeout=timeout)
        except FutureTimeout:
            fut.cancel()
            self._failed(TimeoutError(f"background checkpoint not durable within {timeout:.1f} s"))
            return
        except Exception as e:  # noqa: BLE001 - OSError, or anything else: same handling
            self._failed(e)
            return
        r.sync_commit = sync_commit
        self._done(r, total, r.export_s + write_s, foreground=False)

    def _failed(self, e: BaseException) -> None:
        self.app.metrics.checkpoint_failures.inc()
        log.error("checkpoint failed: %s (offsets not committed; retried next round)", e)

    def _done(self, r: Round, total: int, seconds: float, foreground: bool) -> None:
        m = self.app.metrics
        self.checkpointed.update(r.written)
        m.checkpoint_seconds.observe(seconds)
        if total:
            m.checkpoint_bytes.set(total)
        m.checkpoint_last.set(time.time())
        if foreground:  # a background round reset these when it took its copy
            self.since_checkpoint = 0
            self.last_checkpoint = time.monotonic()
        r.commit_offsets()

    def commit(self, offsets, sync: bool) -> None:
        app = self.app
        owned = app.partitions.restored - self.lost  # only partitions still ours, whenever the round was taken
        offsets = {tp: om for tp, om in offsets.items() if tp.partition in owned}
        if not offsets:
            return
        try:
            app.source.commit(offsets, sync=sync)
        except Exception as e:  # noqa: BLE001 - the checkpoint already holds the offset; next round commits again
            log.warning("offset commit failed (%s); the checkpoint holds the offsets, committing again next round", e)
            app.partitions.ready_checks(broker=False)
            return
        committed_offset = app.metrics.committed_offset
        for tp, om in offsets.items():
            committed_offset.labels(str(tp.partition)).set(om.offset)
            if sync:  # an async commit may still fail: commit again next round
                self.committed[tp.partition] = om.offset

    def forget(self, p: int) -> None:
        """A partition left: nothing of it is checkpointed or committed by this worker any more."""
        self.checkpointed.pop(p, None)
        self.committed.pop(p, None)
        if self.changelog is not None:
            self.changelog.forget(p)

    def reset(self) -> None:
        """After a rewind: every partition is restored again (exactly-once: the open transaction is dropped)."""
        self.checkpointed.clear()
        if self.eos is not None:
            self.eos.abort_open()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
