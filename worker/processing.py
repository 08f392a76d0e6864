"""One poll of the worker: records -> decode -> score -> outputs -> metrics.

:meth:`PollProcessor.run_core` is the seam between Kafka records and the scoring core: the
records of one poll in; the readings as columns (one ``decode_batch`` call), the core's score
columns (one ``process_columns`` call), the messages to publish and the rejections out.  Everything else here is bookkeeping around it: counting, sending through
the sink, dead letters, silent-sensor events, and the rewind after a core failure
(:mod:`worker.rewind`).

Counting: ``consumed = scored + rejected + skipped`` (every message taken from the topic is
exactly one of those); ``consumed`` is counted last, so that a scrape never sees more.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from worker.rewind import CoreFailure, Rewinder, describe

log = logging.getLogger("slotwatch.worker")


@dataclass
class PollResult:
    cols: object = None  # ReadingColumns of the decoded readings, in poll order (None: none)
    scores: object = None  # the core's ScoreColumns, row for row of ``cols``
    outputs: list = field(default_factory=list)  # messages (topic, key, value, headers, kind) of the scores
    rejects: list = field(default_factory=list)  # (Rejection, original bytes): decoding first, then the core's
    episodes: list = field(default_factory=list)  # episode events of the scores (already in ``outputs``)
    scored_ts_ms: object = field(default_factory=list)  # time stamps of the readings scored (int64 array)
    consumed: int = 0
    skipped: int = 0


class PollProcessor:
    def __init__(self, app) -> None:
        from worker.batch_codec import BatchCodec
        from worker.outputs import Outputs
        from worker.rejectlog import RejectionLog

        self.app = app
        s = app.settings
        self.codec = BatchCodec(app.features, s.kafka.max_message_bytes, max_sensor_id_bytes=s.limits.max_sensor_id_bytes,
                                max_future_s=s.limits.max_future_s)
        self.outputs = Outputs(app)
        self.rejection_log = RejectionLog(log, s.limits.rejection_log_interval_s)
        self.rewinder = Rewinder(app)

    # ------------------------------------------------------------------ the seam
    def run_core(self, batch) -> PollResult:
        """Records of one poll ({TopicPartition: PartitionRecords}, :mod:`worker.kafka.polled`) -> columns, score columns, outputs, rejections.

        Skips records already applied, and the partitions not (any more) ours; raises
        :class:`~worker.rewind.CoreFailure` when the core fails (no state of the poll is to be trusted).
        The whole poll is decoded in one call (:meth:`BatchCodec.decode_batch`) and scored in one
        (:meth:`SlotDetector.process_columns`); objects are made only for the rejections.
        """
        import numpy as np

        from worker.core.columns import SCORED
        from worker.core.readings import Rejection

        app = self.app
        topic, restored, applied = app.topic, app.partitions.restored, app.partitions.applied
        checkpointed = app.checkpoints.checkpointed
        rw = self.rewinder
        poison = rw.poison
        res = PollResult()
        values, offsets, parts, counts = [], [], [], []
        early = []  # (partition, offset, Rejection, raw) of the poisoned offsets
        for tp, pr in batch.items():  # pr: worker.kafka.polled.PartitionRecords (values, offsets)
            p = tp.partition
            if tp.topic != topic or p not in restored:
                continue  # not ours (any more): not consumed, the next owner reads it
            offs = pr.offsets
            if not offs:
                continue
            last = applied.get(p, -1)
            if p not in checkpointed:
                rw.origin.setdefault(p, offs[0])  # where a rewind without a checkpoint starts
            res.consumed += len(offs)
            n0 = len(values)
            if offs[0] > last and not poison:  # the common case: nothing to skip
                values.extend(pr.values)
                offsets.extend(offs)
                last = offs[-1]
            else:
                for value, offset in zip(pr.values, offs):
                    if offset <= last:
                        res.skipped += 1
                        continue
                    last = offset
                    why = poison.get((p, offset)) if poison else None
                    if why is not None:  # made the core fail before: dead letter, not applied
                        early.append((p, offset, Rejection("internal_error", why, None, p, offset), value))
                        continue
                    values.append(value)
                    offsets.append(offset)
            parts.append(p)
            counts.append(len(values) - n0)
            applied[p] = last
        part = np.repeat(np.asarray(parts, np.int64), counts)
        cols, bad = self._decode(values, part, offsets)
        raw = None
        if bad or early:
            raw = dict(zip(zip(part.tolist(), offsets), values))
            rank = {p: k for k, p in enumerate(parts)}  # dead letters in poll order, as read
            both = early + [(r.partition, r.offset, r, raw[(r.partition, r.offset)]) for r in bad]
            both.sort(key=lambda t: (rank.get(t[0], -1), t[1]))
            res.rejects = [(r, v) for _, _, r, v in both]
        if not len(cols):
            return res
        res.cols = cols
        sc, res.outputs = rw.score(app.detector, cols, self.outputs.scores)
        res.scores = sc
        scored = sc.status == SCORED
        res.scored_ts_ms = cols.ts_ms[scored]
        if not scored.all():
            if raw is None:
                raw = dict(zip(zip(part.tolist(), offsets), values))
            for i in np.nonzero(~scored)[0].tolist():
                r = sc.row(i)
                res.rejects.append((r, raw[(r.partition, r.offset)]))
        for i in sorted(sc.episodes):
            res.episodes.extend(sc.episodes[i])
        return res

    def _decode(self, values, part, offsets):
        """:meth:`BatchCodec.decode_batch` of the poll; if it raises (a codec bug), the per-message path,
        where a message whose decoding raises is an ``internal_error`` (no state touched)."""
        from worker.core.columns import ReadingColumns
        from worker.core.readings import Rejection

        codec = self.codec
        try:
            return codec.decode_batch(values, part, offsets)
        except Exception:  # noqa: BLE001 - a codec bug must not stop the worker
            log.exception("decoding a poll of %d messages failed; decoding it one message at a time", len(values))
        readings, bad = [], []
        for raw, p, o in zip(values, part.tolist(), offsets):
            try:
                r = codec.decode(raw, p, o)
            except Exception as e:  # noqa: BLE001
                log.exception("decoding partition %d offset %d failed", p, o)
                r = Rejection("internal_error", describe(e), None, p, o)
            (bad if isinstance(r, Rejection) else readings).append(r)
        return ReadingColumns.from_readings(readings, len(self.app.features)), bad

    # ------------------------------------------------------------------ one poll
    def handle(self, batch) -> None:
        import numpy as np

        from worker.metrics import observe_many

        app = self.app
        m, sink, tele = app.metrics, app.sink, app.telemetry
        arrived = time.time()  # the poll just returned: processing latency starts here
        try:
            res = self.run_core(batch)
        except CoreFailure as f:  # state may be half-updated: reload it (the poll is read again)
            self.rewinder.rewind(f)
            return
        if app.watch is not None and res.cols is not None:
            app.watch.on_readings(res.cols, res.scores)
        sink.send_many(res.outputs)
        orphans = app.detector.drain_episode_events()  # closes of evicted sensors' episodes
        if orphans:
            sink.send_many(self.outputs.episodes_of(orphans))
            tele.note_episodes(orphans)
        if res.episodes:
            tele.note_episodes(res.episodes)
        if res.skipped:
            m.skipped.inc(res.skipped)
            log.info("skipped %d readings already applied (replay after a restart)", res.skipped)
        now = time.time()
        n_scored = len(res.scored_ts_ms)
        m.scored.inc(n_scored)
        if n_scored:
            lag = np.maximum(0.0, now - res.scored_ts_ms / 1000.0)
            observe_many(m.event_lag, lag)
            observe_many(m.latency, lag)  # deprecated name of the same
            observe_many(m.processing, np.full(n_scored, max(0.0, now - arrived)))
        if res.rejects:
            self._dead_letters(res.rejects)
        self._publish_silence()
        self.rejection_log.flush_due()
        tele.update_core_metrics()
        sink.publish_counts()
        self.rewinder.passed(app.partitions.applied)
        m.consumed.inc(res.consumed)  # last, so that a scrape never sees consumed > scored + rejected + skipped
        app.checkpoints.count(res.consumed)

    def _dead_letters(self, rejects) -> None:
        by_reason: dict[str, int] = {}
        dead_letter, log_add = self.outputs.dead_letter, self.rejection_log.add
        msgs = []
        for rej, raw in rejects:
            by_reason[rej.reason] = by_reason.get(rej.reason, 0) + 1
            msgs.append(dead_letter(rej, raw))
            log_add(rej)  # DEBUG per reading, a WARNING summary per interval
        rejected = self.app.metrics.rejected
        for reason, n in by_reason.items():
            rejected.labels(reason).inc(n)
        self.app.sink.send_many(msgs)

    def _publish_silence(self) -> None:
        """Silent-sensor episodes of the last batch to the anomalies topic; their metrics."""
        sil = self.app.detector.silence
        if sil is None:
            return
        events = sil.drain()
        if events:
            self.app.sink.send_many(self.outputs.silence(events))
        self.app.telemetry.note_silence(events, sil)
