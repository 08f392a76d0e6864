"""The partition lifecycle of a worker: assigned -> restoring -> active -> revoked (or lost).

On assignment a partition's state is restored from its newest valid local checkpoint, or from
the Kafka state changelog when ``checkpoint.state_store`` is kafka/both (issue 12; a
partition assigned inside a rebalance callback is paused and restored on the loop's thread),
and the consumer seeks to its next offset.  Then it is active (``restored``): its readings are
applied.  On revocation it is flushed, checkpointed and committed within a budget, then its
sensors are dropped; a lost partition is dropped without committing.  Readiness
(``/readyz``) follows: partitions assigned, all of them restored, broker reachable.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("slotwatch.worker")


class FatalCheckpointError(RuntimeError):
    """A checkpoint that cannot be restored: the worker stops with exit code 3."""


class Partitions:
    """Which input partitions a worker owns, how far each is applied, and their restore/revoke."""

    def __init__(self, app) -> None:
        self.app = app
        self.applied: dict[int, int] = {}  # last offset applied (or skipped as already applied)
        self.restored: set[int] = set()  # partitions whose state is loaded and owned
        self.deferred: set = set()  # assigned partitions paused until the loop restores them from the changelog
        self.closing = False  # shutting down: a revocation saves nothing more

    # ------------------------------------------------------------------ readiness
    def ready_checks(self, broker: bool | None = None) -> None:
        app = self.app
        h = app.health
        if broker is not None:
            app.metrics.broker_up.set(1 if broker else 0)
            if h:
                h.set_check("broker_reachable", broker)
        if h:
            assigned = app.source.assigned()
            h.set_check("partitions_assigned", bool(assigned))
            h.set_check("checkpoint_restored", bool(assigned) and assigned <= self.restored)

    # ------------------------------------------------------------------ assigned -> restoring -> active
    def assigned(self, tps) -> None:
        app = self.app
        for tp in sorted(tps):
            if tp.topic != app.topic or tp.partition in self.restored:
                continue
            if app.checkpoints.changelog is not None and threading.current_thread() is not app.loop_thread:
                # a rebalance callback (kafka-python's IO thread: heartbeats wait while it runs): pause the
                # partition, the loop restores it (readiness stays false meanwhile)
                if not self._load_local(tp.partition)[0]:  # a corrupt local checkpoint stops the worker at once
                    return
                app.source.pause(tp)
                self.deferred.add(tp)
                continue
            if not self._restore(tp):
                return
        app.telemetry.update_core_metrics()
        self.ready_checks()

    def restore_deferred(self) -> None:
        """Restore, on the loop's thread, the partitions an assignment left paused (issue 12)."""
        app = self.app
        tps = sorted(self.deferred & app.source.assignment())
        self.deferred.clear()
        self.assigned(tps)
        if app.fatal is None and tps:
            app.source.resume(*tps)

    def _load_local(self, p: int):
        """(True, checkpoint or None) from the local store; (False, None) after a fatal error."""
        from worker.checkpointing.format import CorruptCheckpoint

        app = self.app
        try:
            ck = app.store.load(p)
        except CorruptCheckpoint as e:
            if not app.settings.checkpoint.allow_fresh_start:
                app.fail(FatalCheckpointError(
                    f"{e}. Refusing to start: fix or remove the folder, or set "
                    "SLOTWATCH_CHECKPOINT__ALLOW_FRESH_START=true to start this partition's sensors fresh "
                    "from the committed offset."))
                return False, None
            log.error("partition %d: every checkpoint is corrupt; starting it fresh (allow_fresh_start)", p,
                      extra={"partition": p})
            ck = None
        return True, ck

    def _restore(self, tp) -> bool:
        """Restore one partition; False after a fatal error (the worker stops)."""
        from worker.core.handover import import_warm

        app = self.app
        p = tp.partition
        ok, ck = self._load_local(p)
        if not ok:
            return False
        cs = app.settings.checkpoint
        if app.checkpoints.changelog is not None:  # issue 12: state that follows the partition through Kafka
            try:
                ck = app.checkpoints.changelog.on_assigned(tp, ck if cs.state_store == "both" else None, app.features,
                                                           app.model_version)
            except Exception as e:  # noqa: BLE001 - ChangelogError, KafkaError: starting without the state would lose it
                app.fail(FatalCheckpointError(f"partition {p}: restoring from the state changelog "
                                              f"{cs.changelog_topic} failed: {e}"))
                return False
        if ck is not None:
            meta_f = ck.meta.get("features")
            try:
                if meta_f is not None and list(meta_f) != app.features:
                    raise ValueError(f"its sensors have features {meta_f}, the model takes {app.features}")
                n, warmed = import_warm(app.detector, ck.columns, ck.model_version) if ck.n_sensors else (0, 0)
            except (ValueError, KeyError) as e:  # columns of another shape: another kind of model
                app.detector.drop_partition(p)
                app.fail(FatalCheckpointError(
                    f"partition {p}: checkpoint {ck.meta.get('source') or app.store.generations(p)[0]} (model {ck.model_version!r}) does not "
                    f"fit the loaded artifact {app.model_version!r} ({e}). Refusing to start: point "
                    "SLOTWATCH_MODEL__PATH at an artifact with the same features, or move the checkpoint folder "
                    "away to start fresh."))
                return False
            app.detector.restore_silence(p, ck.meta)
            if warmed:
                app.metrics.handover_warmed.labels("restore").inc(warmed)
            self.applied[p] = ck.next_offset - 1
            app.checkpoints.checkpointed[p] = ck.next_offset
            app.source.seek(tp, ck.next_offset)
            log.info("partition %d restored: %d sensors (%d warmed from model %s to %s), resuming at offset %d", p, n,
                     warmed, ck.model_version, app.model_version, ck.next_offset,
                     extra={"partition": p, "offset": ck.next_offset})
        else:
            self.applied[p] = -1
            log.info("partition %d: no checkpoint, starting from the committed offset (or the beginning)", p,
                     extra={"partition": p})
        self.restored.add(p)
        return True

    # ------------------------------------------------------------------ active -> revoked / lost
    def revoked(self, tps, lost: bool = False) -> None:
        app = self.app
        self.deferred.difference_update(tps)  # never restored: nothing to save
        if self.closing:
            return
        parts = sorted(tp.partition for tp in tps if tp.topic == app.topic and tp.partition in self.restored)
        if not parts:
            return
        budget = app.settings.kafka.session_timeout_ms / 1000 * app.settings.limits.revoke_budget_fraction
        ck = app.checkpoints
        if lost:
            log.warning("partitions %s lost (evicted from the group); dropping their state unsaved, the next owner "
                        "replays from the last checkpoint", parts)
            ck.lost.update(parts)  # an in-flight round may finish: its offsets for these are not committed
            if ck.eos is not None:  # exactly-once: the open transaction holds their outputs: abort it
                ck.eos.lost()
            try:
                ck.reap(wait=True, sync_commit=False, timeout=budget)
            finally:
                ck.lost.difference_update(parts)
        else:
            try:  # inside kafka-python's rebalance callback: stay well inside the session timeout
                ok = ck.round(parts, deadline=time.monotonic() + budget, sync_commit=False)
            except Exception:  # noqa: BLE001 - the partitions are dropped below in any case
                log.exception("checkpoint of revoked partitions %s failed", parts)
                ok = False
            log.info("partitions %s revoked%s", parts, "" if ok else " (checkpoint failed; next owner replays)")
        for p in parts:
            app.detector.drop_partition(p)
            if app.watch is not None:
                app.watch.on_dropped(p)
            self.restored.discard(p)
            self.applied.pop(p, None)
            app.processor.rewinder.forget(p)
            ck.forget(p)
            app.telemetry.forget(p)
        app.telemetry.update_core_metrics()
        self.ready_checks()

    def clear(self) -> None:
        """Forget every partition's state (a rewind restores them all again)."""
        self.restored.clear()
        self.applied.clear()
