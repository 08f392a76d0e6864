"""Exactly-once checkpoint rounds (``SLOTWATCH_KAFKA__EXACTLY_ONCE``): one Kafka transaction per round.

The sink's producer and the changelog writer's producer are one
:class:`~worker.kafka.transactions.TransactionalRound`: every score, anomaly/episode message and
dead letter produced since the previous round is in the open transaction.  A round runs on
the thread that holds the consumer (the loop, or a revocation callback), never in the
background (outputs produced after the export would be committed with offsets that do not
cover them), over *every* owned partition (the transaction holds all of their outputs):

1. **outputs acknowledged**: every record of the open transaction acknowledged by the broker;
2. **export state**: a copy of each changed partition's state (:meth:`Round.export_state`);
3. **changelog into the transaction**: its rows and markers, acknowledged;
4. **commit**: the offsets into the transaction with the consumer's group metadata (KIP-447),
   then EndTxn; this replaces the consumer's offset commit;
5. **local cache** (``state_store=both``): the checkpoint files, written after the commit; used on
   assignment only when their offset equals the committed one.

A round with nothing to write, no offset to move and no open transaction is skipped.  A
failed round is aborted and rewound: the state of every owned partition is reloaded from the
committed checkpoint (the local cache when current, else the changelog folded at the committed
offset) and the consumer seeks back (:meth:`worker.rewind.Rewinder.reload`); a core failure's
rewind aborts the open transaction too (:meth:`CheckpointCoordinator.reset`).  A fenced
producer stops the worker without committing (exit code 7); :data:`MAX_CONSECUTIVE_ABORTS`
aborted rounds in a row, or a producer that cannot be replaced, stop it with exit code 5.
An EndTxn with no answer in time is an aborted round *in doubt*
(:class:`~worker.kafka.txn_errors.TransactionInDoubt`): rewound like any abort, with the same
producer, never a re-initialised one (it could fence the worker that now owns the id); the next
round first waits for that EndTxn and stops the worker (exit code 7) when it stays unanswered.
An abort inside a rebalance callback (a lost partition, a failed revocation round) leaves
the rewind to the loop's thread (:attr:`ExactlyOnceRounds.rewind_due`).
"""

from __future__ import annotations

import logging
import threading
import time

from worker.kafka.txn_errors import TransactionAborted, TransactionError, TransactionFatal, TransactionFenced

log = logging.getLogger("slotwatch.worker")

#: aborted rounds in a row after which the worker stops (exit code 5) instead of replaying again
MAX_CONSECUTIVE_ABORTS = 5


class ExactlyOnceRounds:
    """The rounds of :class:`~worker.checkpointing.coordinator.CheckpointCoordinator` in exactly-once mode."""

    def __init__(self, coord, txn) -> None:
        self.coord = coord
        self.app = coord.app
        self.txn = txn  # worker.kafka.transactions.TransactionalRound
        self.dead = False  # fenced or fatal: nothing more is committed
        self.rewind_due = False  # aborted inside a rebalance callback: the loop rewinds

    # ------------------------------------------------------------------ the round
    def round(self, r) -> bool:
        """Run round ``r`` (a :class:`~worker.checkpointing.coordinator.Round` over every owned partition)."""
        if self.dead:
            return False
        if self.rewind_due:
            self.rewind()
            if self.rewind_due or self.dead:
                return False
        t0 = time.perf_counter()
        try:
            self.txn.settle()  # an EndTxn left unanswered by an earlier round: answered now, or stop (exit 7)
            self.outputs_acknowledged()  # step 1
            r.export_state()  # step 2
            if not (r.checkpoints or r.offsets or self.txn.open):
                return self._empty()
            recs = r.changelog_records
            total = self.coord.changelog.write(recs) if recs else 0  # step 3: into the transaction, acknowledged
            offsets = self.owned(r.offsets)
            self.txn.commit(offsets, self.txn.group_metadata(self.app.source.consumer))  # step 4
        except TransactionError as e:
            self.failed(e)
            return False
        except Exception as e:  # noqa: BLE001 - ChangelogError, outputs not acknowledged, KafkaError
            try:
                self.txn.abort(e)
            except TransactionError as e2:  # fenced, or no replacement producer
                self.failed(e2)
                return False
            self.failed(TransactionAborted(f"round aborted: {type(e).__name__}: {e}", e))
            return False
        total += self.cache(r)  # step 5
        self.done(r, offsets, total, time.perf_counter() - t0)
        return True

    def outputs_acknowledged(self) -> None:
        """Every output of the open transaction acknowledged; raises when one failed or the transaction did."""
        sink = self.app.sink
        if sink.error is not None:
            raise sink.error
        self.txn.flush()
        sink.publish_counts()
        left = sink.unacknowledged
        if left:
            raise RuntimeError(f"{left} outputs of the round not acknowledged ({sink.last_error})") from sink.last_error

    def owned(self, offsets) -> dict:
        c = self.coord
        owned = self.app.partitions.restored - c.lost
        return {tp: om for tp, om in offsets.items() if tp.partition in owned}

    def cache(self, r) -> int:
        """``state_store=both``: the local checkpoint files of a committed round (a cache: failures only logged)."""
        c = self.coord
        if c.state_store != "both":
            return 0
        try:
            return sum(c.store.save(ck)[1] for ck in r.checkpoints)
        except OSError as e:
            log.warning("local checkpoint cache not written (%s); the changelog holds the committed state", e)
            return 0

    def done(self, r, offsets, total: int, seconds: float) -> None:
        c, m = self.coord, self.app.metrics
        c.checkpointed.update(r.written)
        for tp, om in offsets.items():
            m.committed_offset.labels(str(tp.partition)).set(om.offset)
            c.committed[tp.partition] = om.offset
        m.checkpoint_seconds.observe(seconds)
        m.txn_rounds.labels("committed").inc()
        m.txn_commit_seconds.observe(seconds)
        if total:
            m.checkpoint_bytes.set(total)
        m.checkpoint_last.set(time.time())
        c.since_checkpoint = 0
        c.last_checkpoint = time.monotonic()

    def _empty(self) -> bool:
        self.app.metrics.checkpoint_last.set(time.time())
        self.coord.since_checkpoint = 0
        self.coord.last_checkpoint = time.monotonic()
        return True

    # ------------------------------------------------------------------ failures
    def failed(self, e: TransactionError) -> None:
        """Aborted: rewind (or stop after too many in a row); fenced or fatal: stop without committing."""
        app = self.app
        app.metrics.txn_rounds.labels("aborted" if isinstance(e, TransactionAborted) else
                                      "fenced" if isinstance(e, TransactionFenced) else "failed").inc()
        if isinstance(e, TransactionAborted):
            app.metrics.checkpoint_failures.inc()
            n = self.txn.consecutive_failures
            if n < MAX_CONSECUTIVE_ABORTS:
                log.error("%s (%d in a row); rewinding to the committed offsets and replaying", e, n)
                self.rewind()
                return
            e = TransactionFatal(f"{n} rounds aborted in a row; stopping (last: {e})", e)
        self.dead = True
        log.error("%s", e)
        app.fail(e)

    def rewind(self) -> None:
        """Reload every owned partition from the committed checkpoint and seek back (on the loop's thread)."""
        app = self.app
        if threading.current_thread() is not app.loop_thread:
            self.rewind_due = True
            return
        self.rewind_due = False
        app.metrics.rewinds.inc()
        app.processor.rewinder.reload()  # -> CheckpointCoordinator.reset -> abort_open

    def abort_open(self) -> None:
        """Drop the open transaction and the sink's record of it (the state is being reloaded)."""
        try:
            if self.txn.open:
                self.txn.abort()
        except TransactionError as e:
            self.dead = True
            self.app.metrics.txn_rounds.labels("fenced" if isinstance(e, TransactionFenced) else "failed").inc()
            self.app.fail(e)
        self.app.sink.reset()

    def lost(self) -> None:
        """Partitions lost (evicted): their outputs in the open transaction must never commit."""
        try:
            if self.txn.open:
                self.txn.abort()
        except TransactionError as e:
            self.dead = True
            self.app.metrics.txn_rounds.labels("fenced" if isinstance(e, TransactionFenced) else "failed").inc()
            self.app.fail(e)
            return
        self.rewind_due = True  # the partitions still owned lost their outputs too: the loop rewinds them
