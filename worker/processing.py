"""One poll of the worker: records -> decode -> score -> outputs -> metrics.

:meth:`PollProcessor.run_core` is the seam between Kafka records and the scoring core: the
records of one poll in, the readings, the core's results, the messages to publish and the
rejections out.  Everything else here is bookkeeping around it: counting, sending through
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
    readings: list = field(default_factory=list)  # decoded readings, in poll order
    results: list = field(default_factory=list)  # the core's Score or Rejection per reading
    outputs: list = field(default_factory=list)  # messages (topic, key, value, headers, kind) of the scores
    rejects: list = field(default_factory=list)  # (Rejection, original bytes): decoding first, then the core's
    episodes: list = field(default_factory=list)  # episode events of the scores (already in ``outputs``)
    scored_ts_ms: list = field(default_factory=list)  # time stamps of the readings scored
    consumed: int = 0
    skipped: int = 0


class PollProcessor:
    def __init__(self, app) -> None:
        from worker.codec import ReadingCodec
        from worker.outputs import Outputs
        from worker.rejectlog import RejectionLog

        self.app = app
        s = app.settings
        self.codec = ReadingCodec(app.features, s.kafka.max_message_bytes, max_sensor_id_bytes=s.limits.max_sensor_id_bytes,
                                  max_future_s=s.limits.max_future_s)
        self.outputs = Outputs(app)
        self.rejection_log = RejectionLog(log, s.limits.rejection_log_interval_s)
        self.rewinder = Rewinder(app)

    # ------------------------------------------------------------------ the seam
    def run_core(self, batch) -> PollResult:
        """Records of one poll ({TopicPartition: [records]}) -> readings, results, outputs, rejections.

        Skips records already applied, and the partitions not (any more) ours; raises
        :class:`~worker.rewind.CoreFailure` when the core fails (no state of the poll is to be trusted).
        """
        from worker.core.readings import Rejection, Score

        app = self.app
        topic, restored, applied = app.topic, app.partitions.restored, app.partitions.applied
        checkpointed = app.checkpoints.checkpointed
        rw = self.rewinder
        decode = self.codec.decode
        res = PollResult()
        readings, rejects = res.readings, res.rejects
        origin = []  # raw bytes of each reading
        for tp, records in batch.items():
            p = tp.partition
            if tp.topic != topic or p not in restored:
                continue  # not ours (any more): not consumed, the next owner reads it
            last = applied.get(p, -1)
            if records and p not in checkpointed:
                rw.origin.setdefault(p, records[0].offset)  # where a rewind without a checkpoint starts
            res.consumed += len(records)
            for rec in records:
                if rec.offset <= last:
                    res.skipped += 1
                    continue
                last = rec.offset
                why = rw.poison.get((p, rec.offset)) if rw.poison else None
                if why is not None:  # made the core fail before: dead letter, not applied
                    rejects.append((Rejection("internal_error", why, None, p, rec.offset), rec.value))
                    continue
                try:
                    r = decode(rec.value, p, rec.offset)
                except Exception as e:  # noqa: BLE001 - a codec bug must not stop the worker; no state touched
                    log.exception("decoding partition %d offset %d failed", p, rec.offset)
                    r = Rejection("internal_error", describe(e), None, p, rec.offset)
                if isinstance(r, Rejection):
                    rejects.append((r, rec.value))
                else:
                    readings.append(r)
                    origin.append(rec.value)
            applied[p] = last
        res.results, res.outputs = rw.score(app.detector, readings, self.outputs.scores)
        ts, episodes = res.scored_ts_ms, res.episodes
        for r, raw in zip(res.results, origin):
            if isinstance(r, Score):
                ts.append(r.ts_ms)
                if r.episodes:
                    episodes.extend(r.episodes)
            else:
                rejects.append((r, raw))
        return res

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
        if app.watch is not None:
            app.watch.on_readings(res.readings, res.results)
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
            lag = np.maximum(0.0, now - np.asarray(res.scored_ts_ms, dtype=np.float64) / 1000.0)
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
