"""``slotwatch run``: the worker.  Kafka readings -> codec -> scoring core -> Kafka outputs,
with per-partition checkpoints so that a crash loses nothing and applies nothing twice.

The pieces (each its own module):

* source: a kafka-python consumer in a group (:mod:`worker.kafka.clients`), manual commits;
* codec: bytes -> :class:`~worker.core.readings.Reading` or a rejection (:mod:`worker.codec`);
* core: :class:`~worker.core.detector.SlotDetector`, one call per poll (a poll's readings
  become ticks of at most B sensors);
* sinks: anomalies topic, scores topic (``SLOTWATCH_KAFKA__PUBLISH_SCORES``), dead-letter
  topic (original bytes, reason/detail/source headers);
* checkpoints: :class:`~worker.checkpointing.store.CheckpointStore`;
* metrics and health: :mod:`worker.metrics`, :mod:`worker.health`.

Order of a checkpoint round: produce -> flush (every output acknowledged) -> write each
partition's checkpoint durably -> commit the checkpoints' next offsets.  So output is
at-least-once, and state and offsets never run ahead of the output.

On assignment a partition's newest valid checkpoint is loaded and the consumer seeks to
its next offset; a reading at or below the partition's last applied offset is skipped
(``slotwatch_readings_skipped_total``), never applied twice.  On revocation the partition
is flushed, checkpointed and committed, then its sensors are dropped.  On SIGTERM/SIGINT
the worker finishes the batch in hand, checkpoints, commits, closes and exits 0 within
``SLOTWATCH_SHUTDOWN_GRACE_S``.

Counting: ``consumed = scored + rejected + skipped`` (every message taken from the topic is
exactly one of those).

A checkpoint written with another model version than the loaded artifact restores warm:
each sensor's state is rebuilt by stepping its recent readings through the loaded model
(:mod:`worker.core.handover`), so no sensor warms up again.  A checkpoint that cannot fit
the artifact (other features) is refused (exit code 3).  When every generation of a
partition's checkpoint is corrupt the worker refuses to start (exit code 3) unless
``SLOTWATCH_CHECKPOINT__ALLOW_FRESH_START`` is true; then that partition's sensors start
fresh from the committed offset.  A new artifact behind the ``latest`` pointer is taken
over while running (:mod:`worker.model_watch`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

HELP = "consume readings from Kafka, score them, publish anomalies, checkpoint state (the worker)"

log = logging.getLogger("slotwatch.worker")

EXIT_OK = 0
EXIT_CONFIG = 2  # bad settings or artifact
EXIT_CHECKPOINT = 3  # checkpoint cannot fit the model (other features) or is unreadable
EXIT_GRACE = 4  # shutdown did not finish within the grace period

#: dead letters keep the original bytes up to this size (the producer's request limit is 1 MiB);
#: a longer value is cut and gets a ``truncated_from`` header with its original size
DEAD_LETTER_MAX_BYTES = 900_000


class FatalCheckpointError(RuntimeError):
    pass


class Worker:
    """The worker loop.  ``run()`` blocks until :meth:`request_stop` (or a signal in ``main``).

    Tests run it in a thread with their own :class:`~worker.metrics.Metrics`.
    """

    def __init__(self, settings, metrics=None, artifact=None) -> None:
        from worker.checkpointing.store import CheckpointStore
        from worker.codec import ReadingCodec
        from worker.core import artifact as art
        from worker.core.factory import detector_from_settings
        from worker.metrics import Metrics

        self.settings = s = settings
        self.metrics = m = metrics or Metrics()
        self.artifact = artifact or art.load(s.model.path, features=s.model.features)
        mf = self.artifact.manifest
        self.features = list(mf.features)
        self.model_version = mf.model_version
        self.detector = detector_from_settings(self.artifact, s)
        self._stall: dict[int, list] = {}  # partition -> [stream time (or offset) seen, monotonic since, warned]
        self.codec = ReadingCodec(self.features, s.kafka.max_message_bytes, max_sensor_id_bytes=s.limits.max_sensor_id_bytes,
                                  max_future_s=s.limits.max_future_s)
        self.topic = s.kafka.readings_topic
        self.store = CheckpointStore(s.checkpoint.dir, self.topic, s.checkpoint.generations, on_fallback=self._on_fallback)
        m.model.info({"model_version": self.model_version, "features": ",".join(self.features),
                      "units": ",".join(map(str, mf.units)), "path": str(self.artifact.path)})
        m.slots_capacity.set(self.detector.slots)
        m.sensors_capacity.set(s.limits.max_sensors)
        from worker.rejectlog import RejectionLog

        self.rejection_log = RejectionLog(log, s.limits.rejection_log_interval_s)
        # recovery from an unexpected error in the core (see _rewind): per partition, the first offset
        # read since it was restored without a checkpoint, offsets whose reading made the core fail, and
        # offset ranges to process one reading at a time until passed
        self._origin: dict[int, int] = {}
        self._poison: dict[tuple[int, int], str] = {}
        self._suspect: dict[int, tuple[int, int]] = {}
        self._evicted_seen = 0
        self._lost: set[int] = set()  # partitions being dropped as lost: never commit their offsets
        from worker.model_watch import ModelWatch

        self.watch = ModelWatch(self) if s.handover.live_swap else None  # takes over a new `latest` while running
        self.health = None
        self.consumer = None
        self.producer = None
        # per input partition
        self.applied: dict[int, int] = {}  # last offset applied (or skipped as already applied)
        self.restored: set[int] = set()  # partitions whose state is loaded and owned
        self.checkpointed: dict[int, int] = {}  # next_offset of the last durable checkpoint
        self._writer = None  # checkpoint writer thread, started with the first background round
        self.changelog = None  # worker.kafka.changelog.ChangelogStore when checkpoint.state_store is kafka/both
        self._deferred: set = set()  # assigned partitions paused until the loop restores them from the changelog
        self._loop_thread = None
        self._pending = None  # (future, offsets to commit, {partition: next_offset}, export seconds)
        self.committed: dict[int, int] = {}  # offset last committed to Kafka
        self.outbox: list[list] = []  # [future|None, topic, key, value, headers, kind]
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self._stop = threading.Event()
        self._closing = False
        self._fatal: BaseException | None = None
        self._stats = self._stats_snapshot()
        self._last_probe = 0.0

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _ready_checks(self, broker: bool | None = None) -> None:
        h = self.health
        if broker is not None:
            self.metrics.broker_up.set(1 if broker else 0)
            if h:
                h.set_check("broker_reachable", broker)
        if h:
            assigned = self._assigned()
            h.set_check("partitions_assigned", bool(assigned))
            h.set_check("checkpoint_restored", bool(assigned) and assigned <= self.restored)

    def _assigned(self) -> set[int]:
        if self.consumer is None:
            return set()
        try:
            return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        except Exception:  # noqa: BLE001
            return set()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        from kafka import TopicPartition  # noqa: F401 - fail early when kafka-python is missing

        from worker.health import HealthServer
        from worker.kafka.clients import make_consumer, make_producer

        s = self.settings
        if self.health is None:
            self.health = HealthServer(self.metrics, s.metrics.host, s.metrics.port).start()
        self.health.set_check("model_loaded", True)
        self._ready_checks(broker=False)
        backoff = s.kafka.retry_backoff_ms / 1000
        while self.producer is None or self.consumer is None:
            try:
                if self.producer is None:
                    self.producer = make_producer(s.kafka, max_block_ms=10_000)
                    if s.checkpoint.state_store != "local":  # issue 12: the state changelog
                        from worker.kafka.changelog import ChangelogStore

                        self.changelog = ChangelogStore(s.kafka, self.producer, s.checkpoint.changelog_topic, self.metrics,
                                                        stall_s=s.checkpoint.changelog_stall_s)
                if self.consumer is None:
                    self.consumer = make_consumer(s.kafka)
            except Exception as e:  # noqa: BLE001 - NoBrokersAvailable and friends
                log.warning("cannot reach the brokers at %s (%s); retrying in %.1f s", s.kafka.bootstrap_servers, e, backoff)
                if self._stop.wait(backoff):
                    return self._close(EXIT_OK)
                backoff = min(backoff * 2, 30.0)
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        from worker.fmt import fmt_threshold

        log.info("worker started: model %s (threshold %s), %d slots, reading %s as group %s", self.model_version,
                 fmt_threshold(self.detector.threshold), self.detector.slots, self.topic, s.kafka.group_id)
        code = EXIT_OK
        self._loop_thread = threading.current_thread()
        poll_ms = s.kafka.poll_timeout_ms
        backoff = s.kafka.retry_backoff_ms / 1000
        while not self._stop.is_set():
            try:
                batch = self.consumer.poll(timeout_ms=poll_ms, max_records=s.kafka.max_poll_records)
            except Exception as e:  # noqa: BLE001
                if self._fatal is not None:
                    break
                log.warning("poll failed (%s); retrying in %.1f s", e, backoff)
                self._ready_checks(broker=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if self._fatal is not None:
                break
            backoff = s.kafka.retry_backoff_ms / 1000
            if self._deferred:
                self._restore_deferred()
            if batch:
                self._handle(batch)
            if self.watch is not None:
                self.watch.tick()
            self._maybe_checkpoint()
            self._maybe_probe()
            self._watch_streams()
        if self._fatal is not None:
            log.error("%s", self._fatal)
            code = EXIT_CHECKPOINT
        return self._close(code)

    def _close(self, code: int) -> int:
        s = self.settings
        deadline = time.monotonic() + s.shutdown_grace_s * 0.8
        if self.consumer is not None and self.restored:
            if self._checkpoint(sorted(self.restored), deadline=deadline, sync_commit=True):
                log.info("final checkpoint written and committed", extra={"partitions": sorted(self.restored)})
            else:
                log.error("final checkpoint not written (output not acknowledged); a restart replays from the previous one")
        self.rejection_log.flush()
        self._closing = True
        if self.watch is not None:
            self.watch.close()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=max(100, int((deadline - time.monotonic()) * 1000)))
            except Exception as e:  # noqa: BLE001
                log.warning("consumer close: %s", e)
        if self.producer is not None:
            try:
                self.producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001
                log.warning("producer close: %s", e)
        if self.health is not None:
            self.health.stop()
        log.info("worker stopped", extra={"exit_code": code})
        return code

    # ------------------------------------------------------------------ one poll
    def _handle(self, batch) -> None:
        import numpy as np

        from worker.core.readings import Rejection, Score
        from worker.metrics import observe_many

        m = self.metrics
        arrived = time.time()  # the poll just returned: processing latency starts here
        readings, origin = [], []
        rejects = []  # (Rejection, raw bytes)
        n_consumed = 0
        n_skipped = 0
        for tp, records in batch.items():
            p = tp.partition
            if tp.topic != self.topic or p not in self.restored:
                continue  # not ours (any more): not consumed, the next owner reads it
            last = self.applied.get(p, -1)
            if records and p not in self.checkpointed:
                self._origin.setdefault(p, records[0].offset)  # where a rewind without a checkpoint starts
            for rec in records:
                n_consumed += 1
                if rec.offset <= last:
                    n_skipped += 1
                    continue
                last = rec.offset
                why = self._poison.get((p, rec.offset)) if self._poison else None
                if why is not None:  # made the core fail before: dead letter, not applied
                    rejects.append((Rejection("internal_error", why, None, p, rec.offset), rec.value))
                    continue
                try:
                    r = self.codec.decode(rec.value, p, rec.offset)
                except Exception as e:  # noqa: BLE001 - a codec bug must not stop the worker; no state touched
                    log.exception("decoding partition %d offset %d failed", p, rec.offset)
                    r = Rejection("internal_error", _describe(e), None, p, rec.offset)
                if isinstance(r, Rejection):
                    rejects.append((r, rec.value))
                else:
                    readings.append(r)
                    origin.append(rec.value)
            self.applied[p] = last
        try:
            results, outputs = self._score(readings)
        except _CoreFailure as f:  # state may be half-updated: reload it (the poll is read again)
            self._rewind(f)
            return
        if self.watch is not None:
            self.watch.on_readings(readings, results)
        for topic, key, value, kind in outputs:
            self._send(topic, key, value, None, kind)
        orphans = self.detector.drain_episode_events()  # closes of evicted sensors' episodes
        if orphans:
            from worker.codec import encode_episode

            for e in orphans:
                self._send(self.settings.kafka.anomalies_topic, e.sensor_id.encode("utf-8"),
                           encode_episode(e, self.model_version), None, "episode")
            self._note_episodes(orphans)
        n_scored = 0
        ts_scored = []
        for r, raw in zip(results, origin):
            if isinstance(r, Score):
                n_scored += 1
                ts_scored.append(r.ts_ms)
                if r.episodes:
                    self._note_episodes(r.episodes)
            else:
                rejects.append((r, raw))
        if n_skipped:
            m.skipped.inc(n_skipped)
            log.info("skipped %d readings already applied (replay after a restart)", n_skipped)
        now = time.time()
        m.scored.inc(n_scored)
        if ts_scored:
            lag = np.maximum(0.0, now - np.asarray(ts_scored, dtype=np.float64) / 1000.0)
            observe_many(m.event_lag, lag)
            observe_many(m.latency, lag)  # deprecated name of the same
            observe_many(m.processing, np.full(len(ts_scored), max(0.0, now - arrived)))
        for rej, raw in rejects:
            self._dead_letter(rej, raw)
        self._publish_silence()
        self.rejection_log.flush_due()
        self._update_core_metrics()
        if len(self.outbox) > 20_000:
            self._prune_outbox()
        if self._suspect:
            self._suspect = {p: r for p, r in self._suspect.items() if self.applied.get(p, -1) < r[1]}
        m.consumed.inc(n_consumed)  # last, so that a scrape never sees consumed > scored + rejected + skipped
        self.since_checkpoint += n_consumed

    def _note_episodes(self, events) -> None:
        """Count and log episode events whose messages were just sent (see :meth:`_outputs`)."""
        m = self.metrics
        for e in events:
            top = e.features[0] if e.features else None
            what = f"; top feature {top['feature']} z {top['z']:+.2f}" if top else ""
            if e.event == "open":
                m.episodes_opened.labels(e.kind).inc()
                log.info("episode opened: %s, score %.9f, surprise %.2f%s", e.episode_id, e.score, e.surprise, what,
                         extra={"sensor_id": e.sensor_id})
            else:
                m.episodes_closed.labels(e.kind, e.close_reason).inc()
                log.info("episode closed (%s): %s, %d readings flagged over %.0f s, peak surprise %.2f%s", e.close_reason,
                         e.episode_id, e.readings_flagged, e.duration_s, e.peak_surprise, what,
                         extra={"sensor_id": e.sensor_id})

    def _score(self, readings) -> tuple[list, list]:
        """The core's results for ``readings`` and the outputs to send, or :class:`_CoreFailure`.

        Readings inside a suspect range (a poll that made the core fail, being replayed)
        go through the core one at a time, so a failure names its reading.
        """
        det = self.detector
        if not readings:
            return [], []
        if not self._suspect:
            try:
                results = det.process(readings)
                return results, self._outputs(results)
            except Exception as e:  # noqa: BLE001
                raise _CoreFailure(e, readings) from e
        results, batch = [], []
        for r in readings:
            lo, hi = self._suspect.get(r.partition, (0, -1))
            if lo <= r.offset <= hi:
                if batch:
                    try:
                        results += det.process(batch)
                    except Exception as e:  # noqa: BLE001
                        raise _CoreFailure(e, batch) from e
                    batch = []
                try:
                    one = det.process([r])
                    self._outputs(one)
                except Exception as e:  # noqa: BLE001
                    raise _CoreFailure(e, [r], single=True) from e
                results += one
            else:
                batch.append(r)
        try:
            if batch:
                results += det.process(batch)
            return results, self._outputs(results)
        except Exception as e:  # noqa: BLE001
            raise _CoreFailure(e, readings) from e

    def _outputs(self, results) -> list[tuple]:
        """(topic, key, value, kind) of every score to publish; encoding errors surface here, before any send."""
        from worker.codec import encode_episode, encode_score
        from worker.core.readings import Score

        kafka = self.settings.kafka
        episodes = self.settings.episodes
        out = []
        for r in results:
            if not isinstance(r, Score):
                continue
            per_reading = r.is_anomaly and episodes.publish_readings  # default: episode messages only
            if per_reading or kafka.publish_scores:
                value = encode_score(r, self.features, self.model_version, episodes.top_features)
                key = r.sensor_id.encode("utf-8")
                if kafka.publish_scores:
                    out.append((kafka.scores_topic, key, value, "score"))
                if per_reading:
                    out.append((kafka.anomalies_topic, key, value, "anomaly"))
            if r.is_anomaly:
                log.debug("anomaly: score %.9f, surprise %.2f", r.score, r.surprise,
                          extra={"sensor_id": r.sensor_id, "partition": r.partition, "offset": r.offset})
            if r.episodes:  # issue 9: one message when an episode opens, one when it closes
                for e in r.episodes:
                    out.append((kafka.anomalies_topic, e.sensor_id.encode("utf-8"), encode_episode(e, self.model_version),
                                "episode"))
        return out

    def _rewind(self, failure: "_CoreFailure") -> None:
        """Recover from an unexpected error in the core without losing or double-applying anything.

        The failed call may have changed some sensors' state, so the whole state is reloaded
        from the newest checkpoints (the in-flight one included) and every partition is sought
        back to where they start; the readings since then are applied again, which yields the
        state of before the failure (effectively-once, as after a kill -9).  The failed poll's
        offsets are then replayed one reading at a time; a reading that fails alone is marked
        poison (rewind again) and goes to the dead-letter topic as ``internal_error`` with the
        exception's class and message.  Nothing of the failed poll was counted or sent.
        """
        from kafka import TopicPartition

        e = failure.error
        self.metrics.rewinds.inc()
        if failure.single:
            r = failure.readings[0]
            self._poison[(r.partition, r.offset)] = _describe(e)
            log.error("reading at partition %d offset %d made the core fail (%s); it goes to the dead-letter topic "
                      "(internal_error) and the state is reloaded", r.partition, r.offset, _describe(e),
                      exc_info=e, extra={"partition": r.partition, "offset": r.offset, "sensor_id": r.sensor_id})
        else:
            for r in failure.readings:
                lo, hi = self._suspect.get(r.partition, (r.offset, r.offset))
                self._suspect[r.partition] = (min(lo, r.offset), max(hi, r.offset))
            log.error("the core failed on a poll of %d readings (%s); reloading the state from the checkpoints and "
                      "replaying that poll one reading at a time", len(failure.readings), _describe(e), exc_info=e)
        self._reap_checkpoint(wait=True)
        parts = sorted(self.restored)
        self.detector.clear()
        if self.watch is not None:
            self.watch.on_rewind()
        self.restored.clear()
        self.applied.clear()
        self.checkpointed.clear()
        self._stats = self._stats_snapshot()
        try:
            self.on_assigned([TopicPartition(self.topic, p) for p in parts])
        except Exception as e2:  # noqa: BLE001 - cannot reload: stop (exit 3); a restart replays from the checkpoints
            log.exception("reloading the checkpoints after a core failure failed")
            self._fatal = FatalCheckpointError(f"reloading the checkpoints after a core failure failed: {e2}")
            return
        for p in parts:
            if p not in self.checkpointed and p in self._origin and p in self.restored:
                self.consumer.seek(TopicPartition(self.topic, p), self._origin[p])
                self.applied[p] = self._origin[p] - 1

    def _dead_letter(self, rej, raw: bytes | None) -> None:
        from worker.codec import dead_letter_headers

        self.metrics.rejected.labels(rej.reason).inc()
        key = rej.sensor_id.encode("utf-8", "replace") if rej.sensor_id else None
        value = raw if raw is not None else b""
        headers = dead_letter_headers(rej, self.topic)
        if len(value) > DEAD_LETTER_MAX_BYTES:  # would exceed the producer's request size: keep the head
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        self._send(self.settings.kafka.dead_letter_topic, key, value, headers, "dead_letter")
        self.rejection_log.add(rej)  # DEBUG per reading, a WARNING summary per interval

    def _stats_snapshot(self) -> tuple:
        st = self.detector.stats
        return (st.page_ins, st.page_outs, st.resets_gap, st.resets_request, st.anomalies)

    def _update_core_metrics(self) -> None:
        from worker.metrics import observe_many

        m, det = self.metrics, self.detector
        new = self._stats_snapshot()
        old, self._stats = self._stats, new
        pin, pout, rgap, rreq, anom = (a - b for a, b in zip(new, old))
        done = det.drain_ticks()
        if done:
            observe_many(m.tick_seconds, [sec for sec, _ in done])
            observe_many(m.batch_fill, [n / det.slots for _, n in done])
        m.page_ins.inc(pin)
        m.page_outs.inc(pout)
        m.resets.labels("gap").inc(rgap)
        m.resets.labels("request").inc(rreq)
        m.anomalies.inc(anom)
        m.slots_in_use.set(len(det.router))
        m.sensors_known.set(det.table.n_rows)
        m.episodes_open.labels(det.episodes.kind).set(det.episodes.open_count())
        ev = det.stats.evicted_idle - self._evicted_seen  # issue 10: sensors evicted to stay under max_sensors
        if ev > 0:
            self._evicted_seen += ev
            m.evicted.labels("idle").inc(ev)
            gone = det.drain_evicted()
            log.info("evicted %d idle sensors to stay within %d (e.g. %s)", ev, det.max_sensors,
                     gone[0][0] if gone else "?", extra={"evicted": ev})
        if det.silence is not None:  # also after a restore or a revocation
            m.silent_sensors.set(det.silence.silent_count)

    # ------------------------------------------------------------------ silent sensors (issue 16)
    def _publish_silence(self) -> None:
        """Silent-sensor episodes of the last batch to the anomalies topic; their metrics."""
        sil = self.detector.silence
        if sil is None:
            return
        from worker.codec import encode_silence

        m = self.metrics
        events = sil.drain()
        topic = self.settings.kafka.anomalies_topic
        for ev in events:
            self._send(topic, ev.sensor_id.encode("utf-8"), encode_silence(ev, self.model_version), None, "episode")
            m.silence_episodes.labels(ev.event).inc()
            log.debug("sensor %s", "silent" if ev.event == "open" else f"back ({ev.close_reason})",
                      extra={"sensor_id": ev.sensor_id, "partition": ev.partition})
        if events:
            n_open = sum(ev.event == "open" for ev in events)
            log.info("silent sensors: %d went silent, %d came back; %d silent now", n_open, len(events) - n_open,
                     sil.silent_count)
        forgotten = sil.stats.forgotten - getattr(self, "_forgotten_seen", 0)
        if forgotten:
            m.silence_forgotten.inc(forgotten)
            self._forgotten_seen = sil.stats.forgotten

    def _watch_streams(self) -> None:
        """Wall-clock watchdog: seconds since each owned partition's stream time advanced (a stopped producer)."""
        sil = self.detector.silence
        now = time.monotonic()
        limit = self.settings.silence.watchdog_s
        for p in self.restored:
            mark = sil.stream.get(p) if sil is not None else self.applied.get(p)  # offsets when the tracker is off
            st = self._stall.get(p)
            if st is None or st[0] != mark:
                self._stall[p] = st = [mark, now, False]
            stalled = now - st[1]
            self.metrics.stream_stall.labels(str(p)).set(stalled)
            if stalled > limit and not st[2]:
                st[2] = True
                log.warning("partition %d: stream time has not advanced for %.0f s (a stopped producer?)", p, stalled,
                            extra={"partition": p})

    # ------------------------------------------------------------------ output
    def _send(self, topic: str, key, value: bytes, headers, kind: str) -> None:
        item = [None, topic, key, value, headers, kind]
        try:
            item[0] = self.producer.send(topic, key=key, value=value, headers=headers)
        except Exception as e:  # noqa: BLE001 - metadata timeout while the broker is away: retried in _deliver
            log.warning("produce to %s failed (%s); will retry", topic, e)
        self.outbox.append(item)

    def _prune_outbox(self) -> None:
        """Forget outputs already acknowledged (keeps memory flat between checkpoints)."""
        keep = []
        published = self.metrics.published
        for item in self.outbox:
            fut = item[0]
            if fut is not None and fut.is_done and fut.succeeded():
                published.labels(item[5]).inc()
            else:
                keep.append(item)
        self.outbox = keep

    def _deliver(self, deadline: float | None = None) -> bool:
        """Flush the producer until every output since the last round is acknowledged.

        Failed sends are re-sent with backoff (at-least-once).  False when ``deadline``
        (monotonic) passes first, or the worker is asked to stop during an outage.
        """
        backoff = self.settings.kafka.retry_backoff_ms / 1000
        published = self.metrics.published
        while True:
            wait = 10.0 if deadline is None else max(0.1, min(10.0, deadline - time.monotonic()))
            try:
                self.producer.flush(timeout=wait)
            except Exception as e:  # noqa: BLE001 - KafkaTimeoutError
                log.warning("flush did not complete: %s", e)
            retry, pending = [], []
            for item in self.outbox:
                fut = item[0]
                if fut is None or (fut.is_done and fut.failed()):
                    retry.append(item)
                elif not fut.is_done:
                    pending.append(item)
                else:
                    published.labels(item[5]).inc()
            self.outbox = retry + pending
            if not self.outbox:
                return True
            self._ready_checks(broker=False)
            log.warning("%d outputs not acknowledged yet; retrying in %.1f s", len(self.outbox), backoff)
            if deadline is not None and time.monotonic() + backoff > deadline:
                return False
            if deadline is None and self._stop.is_set():
                return False  # shutting down during an outage: _close tries once more within the grace period
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            for item in retry:
                try:
                    item[0] = self.producer.send(item[1], key=item[2], value=item[3], headers=item[4])
                except Exception as e:  # noqa: BLE001
                    item[0] = None
                    log.warning("re-send to %s failed (%s)", item[1], e)

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self) -> None:
        """A round every ``interval_readings`` readings or ``interval_s`` seconds.

        An idle round writes nothing (unchanged partitions are skipped) but still counts as a
        success: everything applied is durable, so ``slotwatch_checkpoint_age_seconds`` only
        grows while state is at risk (an idle worker must not trip the age alert).
        """
        self._reap_checkpoint()
        c = self.settings.checkpoint
        due = self.since_checkpoint >= c.interval_readings or time.monotonic() - self.last_checkpoint >= c.interval_s
        if not due or self._pending is not None:
            return
        if self.restored:
            self._checkpoint(sorted(self.restored), background=True)
        elif not self.outbox:
            self.metrics.checkpoint_last.set(time.time())
            self.last_checkpoint = time.monotonic()

    def _checkpoint(self, partitions, *, deadline: float | None = None, sync_commit: bool = True,
                    background: bool = False) -> bool:
        """Flush outputs, write the partitions' checkpoints durably, then commit their offsets.

        With ``background`` the consumer thread only flushes and takes a copy of the state
        (export); encoding and the durable write run on the writer thread, and the offsets
        are committed by :meth:`_reap_checkpoint` once the files are durable.  Revocation and
        shutdown write in the foreground (after any background round has finished).
        """
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        import numpy as np

        from worker.checkpointing.format import Checkpoint
        from worker.core.handover import VERSION_COLUMN

        self._reap_checkpoint(wait=True, sync_commit=sync_commit,
                              timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not self._deliver(deadline):
            return False
        t0 = time.perf_counter()
        cks = []
        rounds = []  # state changelog records, per partition (issue 12)
        written: dict[int, int] = {}
        offsets = {}
        for p in partitions:
            nxt = self.applied.get(p, -1) + 1
            if nxt <= 0:
                continue  # nothing applied and no checkpoint: nothing to save
            if self.checkpointed.get(p) != nxt:
                cols = self.detector.export_partition(p)  # a copy: the state may move on while it is written
                cols[VERSION_COLUMN] = np.full(len(cols["sensor_id"]), self.model_version, dtype=object)
                if self.changelog is not None:
                    rounds.append(self.changelog.prepare(p, cols, nxt, self.model_version))
                cks.append(Checkpoint(p, nxt, self.model_version, cols, meta={
                    "topic": self.topic, "client_id": self.settings.kafka.client_id, "features": self.features,
                    **self.detector.silence_meta(p)}))
                written[p] = nxt
            if self.committed.get(p) != nxt:
                offsets[TopicPartition(self.topic, p)] = OffsetAndMetadata(nxt, f"slotwatch {self.model_version}", -1)
        export_s = time.perf_counter() - t0
        if background and cks:
            if self._writer is None:
                from concurrent.futures import ThreadPoolExecutor

                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
            self._pending = (self._writer.submit(self._write_checkpoints, cks, rounds), offsets, written, export_s)
            self.since_checkpoint = 0
            self.last_checkpoint = time.monotonic()
            return True
        try:
            total, write_s = self._write_checkpoints(cks, rounds)
        except Exception as e:  # noqa: BLE001 - OSError, or anything else: same handling
            self._checkpoint_failed(e)
            return False
        self._checkpoint_done(total, export_s + write_s, offsets, written, sync_commit, foreground=True)
        return True

    def _write_checkpoints(self, cks, rounds=()) -> tuple[int, float]:
        t0 = time.perf_counter()
        total = self.changelog.write(rounds) if rounds else 0  # acknowledged, or raises: offsets stay uncommitted
        if self.settings.checkpoint.state_store != "kafka":
            total += sum(self.store.save(ck)[1] for ck in cks)
        return total, time.perf_counter() - t0

    def _reap_checkpoint(self, wait: bool = False, sync_commit: bool = True, timeout: float | None = None) -> None:
        """Finish a background round whose files are written: record it and commit its offsets.

        With ``timeout`` (seconds) a round that is not durable by then is given up: cancelled
        if it has not started, otherwise left to finish unrecorded (its offsets are never
        committed; the files it writes are consistent and merely older than the next round's).
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        if self._pending is None:
            return
        fut, offsets, written, export_s = self._pending
        if not wait and not fut.done():
            return
        self._pending = None
        try:
            total, write_s = fut.result(timeout=timeout)
        except FutureTimeout:
            fut.cancel()
            self._checkpoint_failed(TimeoutError(f"background checkpoint not durable within {timeout:.1f} s"))
            return
        except Exception as e:  # noqa: BLE001 - OSError, or anything else: same handling
            self._checkpoint_failed(e)
            return
        self._checkpoint_done(total, export_s + write_s, offsets, written, sync_commit, foreground=False)

    def _checkpoint_failed(self, e: BaseException) -> None:
        self.metrics.checkpoint_failures.inc()
        log.error("checkpoint failed: %s (offsets not committed; retried next round)", e)

    def _checkpoint_done(self, total: int, seconds: float, offsets, written: dict[int, int], sync_commit: bool,
                         foreground: bool) -> None:
        m = self.metrics
        self.checkpointed.update(written)
        m.checkpoint_seconds.observe(seconds)
        if total:
            m.checkpoint_bytes.set(total)
        m.checkpoint_last.set(time.time())
        if foreground:  # a background round reset these when it took its copy
            self.since_checkpoint = 0
            self.last_checkpoint = time.monotonic()
        if offsets:
            self._commit(offsets, sync=sync_commit)

    def _commit(self, offsets, sync: bool) -> None:
        m = self.metrics
        owned = self.restored - self._lost  # only partitions still ours, whenever the round was taken
        offsets = {tp: om for tp, om in offsets.items() if tp.partition in owned}
        if not offsets:
            return
        try:
            if sync:
                self.consumer.commit(offsets)
            else:  # inside a rebalance callback (the consumer's IO thread): must not block
                self.consumer.commit_async(offsets)
        except Exception as e:  # noqa: BLE001 - the checkpoint already holds the offset; next round commits again
            log.warning("offset commit failed (%s); the checkpoint holds the offsets, committing again next round", e)
            self._ready_checks(broker=False)
            return
        for tp, om in offsets.items():
            m.committed_offset.labels(str(tp.partition)).set(om.offset)
            if sync:  # an async commit may still fail: commit again next round
                self.committed[tp.partition] = om.offset

    def _maybe_probe(self, every_s: float = 5.0) -> None:
        """Every few seconds: end offsets of our partitions -> lag, and whether the broker answers."""
        now = time.monotonic()
        if now - self._last_probe < every_s:
            return
        self._last_probe = now
        from kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in sorted(self.restored)]
        try:
            ends = self.consumer.end_offsets(tps, timeout_ms=2000) if tps else {}
            if not tps:
                self.consumer.topics()  # touches the cluster, raises when unreachable
        except Exception as e:  # noqa: BLE001
            log.warning("broker not answering (%s)", e)
            self._ready_checks(broker=False)
            return
        for tp, end in ends.items():
            self.metrics.lag.labels(str(tp.partition)).set(max(0, end - (self.applied.get(tp.partition, -1) + 1)))
        self._ready_checks(broker=True)

    def _on_fallback(self, partition: int, path: Path, why: str) -> None:
        self.metrics.checkpoint_fallbacks.inc()

    # ------------------------------------------------------------------ rebalance (called inside poll)
    def on_assigned(self, tps) -> None:
        from worker.checkpointing.format import CorruptCheckpoint
        from worker.core.handover import import_warm

        allow = self.settings.checkpoint.allow_fresh_start
        for tp in sorted(tps):
            if tp.topic != self.topic or tp.partition in self.restored:
                continue
            p = tp.partition
            try:
                ck = self.store.load(p)
            except CorruptCheckpoint as e:
                if not allow:
                    self._fatal = FatalCheckpointError(
                        f"{e}. Refusing to start: fix or remove the folder, or set "
                        "SLOTWATCH_CHECKPOINT__ALLOW_FRESH_START=true to start this partition's sensors fresh "
                        "from the committed offset.")
                    return
                log.error("partition %d: every checkpoint is corrupt; starting it fresh (allow_fresh_start)", p,
                          extra={"partition": p})
                ck = None
            if self.changelog is not None:  # issue 12: state that follows the partition through Kafka
                if threading.current_thread() is not self._loop_thread:
                    # a rebalance callback (kafka-python's IO thread: heartbeats wait while it runs): pause the
                    # partition, the loop restores it (readiness stays false meanwhile)
                    self.consumer.pause(tp)
                    self._deferred.add(tp)
                    continue
                try:
                    ck = self.changelog.on_assigned(tp, ck if self.settings.checkpoint.state_store == "both"
                                                    else None, self.features, self.model_version)
                except Exception as e:  # noqa: BLE001 - ChangelogError, KafkaError: starting without the state would lose it
                    self._fatal = FatalCheckpointError(f"partition {p}: restoring from the state changelog "
                                                       f"{self.settings.checkpoint.changelog_topic} failed: {e}")
                    return
            if ck is not None:
                meta_f = ck.meta.get("features")
                try:
                    if meta_f is not None and list(meta_f) != self.features:
                        raise ValueError(f"its sensors have features {meta_f}, the model takes {self.features}")
                    n, warmed = import_warm(self.detector, ck.columns, ck.model_version) if ck.n_sensors else (0, 0)
                except (ValueError, KeyError) as e:  # columns of another shape: another kind of model
                    self.detector.drop_partition(p)
                    self._fatal = FatalCheckpointError(
                        f"partition {p}: checkpoint {ck.meta.get('source') or self.store.generations(p)[0]} (model {ck.model_version!r}) does not "
                        f"fit the loaded artifact {self.model_version!r} ({e}). Refusing to start: point "
                        "SLOTWATCH_MODEL__PATH at an artifact with the same features, or move the checkpoint folder "
                        "away to start fresh.")
                    return
                self.detector.restore_silence(p, ck.meta)
                if warmed:
                    self.metrics.handover_warmed.labels("restore").inc(warmed)
                self.applied[p] = ck.next_offset - 1
                self.checkpointed[p] = ck.next_offset
                self.consumer.seek(tp, ck.next_offset)
                log.info("partition %d restored: %d sensors (%d warmed from model %s to %s), resuming at offset %d", p, n,
                         warmed, ck.model_version, self.model_version, ck.next_offset,
                         extra={"partition": p, "offset": ck.next_offset})
            else:
                self.applied[p] = -1
                log.info("partition %d: no checkpoint, starting from the committed offset (or the beginning)", p,
                         extra={"partition": p})
            self.restored.add(p)
        self._update_core_metrics()
        self._ready_checks()

    def _restore_deferred(self) -> None:
        """Restore, on the loop's thread, the partitions an assignment left paused (issue 12)."""
        tps = sorted(self._deferred & set(self.consumer.assignment()))
        self._deferred.clear()
        self.on_assigned(tps)
        if self._fatal is None and tps:
            self.consumer.resume(*tps)

    def on_revoked(self, tps, lost: bool = False) -> None:
        self._deferred.difference_update(tps)  # never restored: nothing to save
        if self._closing:
            return
        parts = sorted(tp.partition for tp in tps if tp.topic == self.topic and tp.partition in self.restored)
        if not parts:
            return
        budget = self.settings.kafka.session_timeout_ms / 1000 * self.settings.limits.revoke_budget_fraction
        if lost:
            log.warning("partitions %s lost (evicted from the group); dropping their state unsaved, the next owner "
                        "replays from the last checkpoint", parts)
            self._lost.update(parts)  # an in-flight round may finish: its offsets for these are not committed
            try:
                self._reap_checkpoint(wait=True, sync_commit=False, timeout=budget)
            finally:
                self._lost.difference_update(parts)
        else:
            try:  # inside kafka-python's rebalance callback: stay well inside the session timeout
                ok = self._checkpoint(parts, deadline=time.monotonic() + budget, sync_commit=False)
            except Exception:  # noqa: BLE001 - the partitions are dropped below in any case
                log.exception("checkpoint of revoked partitions %s failed", parts)
                ok = False
            log.info("partitions %s revoked%s", parts, "" if ok else " (checkpoint failed; next owner replays)")
        for p in parts:
            self.detector.drop_partition(p)
            if self.watch is not None:
                self.watch.on_dropped(p)
            self.restored.discard(p)
            self._origin.pop(p, None)
            self._suspect.pop(p, None)
            self._poison = {k: v for k, v in self._poison.items() if k[0] != p}
            self.applied.pop(p, None)
            self.checkpointed.pop(p, None)
            if self.changelog is not None:
                self.changelog.forget(p)
            self.committed.pop(p, None)
            self._stall.pop(p, None)
            for gauge in (self.metrics.lag, self.metrics.committed_offset, self.metrics.stream_stall):
                try:
                    gauge.remove(str(p))
                except KeyError:
                    pass
        self._update_core_metrics()
        self._ready_checks()


class _CoreFailure(Exception):
    """The core (or encoding its results) raised on ``readings``; ``single``: on that one reading alone."""

    def __init__(self, error: BaseException, readings, single: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.readings = list(readings)
        self.single = single and len(self.readings) == 1


def _describe(e: BaseException) -> str:
    """``"ExceptionClass: message"`` for the dead letter's ``detail`` header."""
    text = str(e)
    return f"{type(e).__name__}: {text[:500]}" if text else type(e).__name__


def _Listener(worker: Worker):
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        # an exception escaping a callback would only surface as a failed poll, again and again:
        # an assignment that cannot be restored stops the worker instead (exit 3)
        def on_partitions_revoked(self, revoked):
            worker.on_revoked(revoked)

        def on_partitions_assigned(self, assigned):
            try:
                worker.on_assigned(assigned)
            except Exception as e:  # noqa: BLE001
                log.exception("restoring partitions %s failed", sorted(tp.partition for tp in assigned))
                worker._fatal = FatalCheckpointError(f"restoring partitions failed: {e}")

        def on_partitions_lost(self, lost):
            worker.on_revoked(lost, lost=True)

    return Listener()


# ---------------------------------------------------------------------- command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="artifact directory (overrides SLOTWATCH_MODEL__PATH)")
    p.add_argument("--bootstrap", default=None, help="host:port[,...] (overrides SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    from worker.argtypes import non_negative_int

    p.add_argument("--create-topics", type=non_negative_int, default=0, metavar="PARTITIONS",
                   help="create missing topics with this many partitions before starting (0: don't); waits up to SLOTWATCH_KAFKA__REQUEST_TIMEOUT_MS for the brokers, else exit 5")


def main(args: argparse.Namespace) -> int:
    from worker.core.artifact import ArtifactError
    from worker.logs import setup_logging
    from worker.settings import Settings

    try:
        settings = Settings.load()
    except Exception as e:  # noqa: BLE001 - pydantic ValidationError: say which setting
        from worker.exits import describe_settings_error

        setup_logging()
        log.error("%s", describe_settings_error(e))
        return EXIT_CONFIG
    if args.model is not None:
        settings.model.path = args.model
    if args.bootstrap:
        settings.kafka.bootstrap_servers = args.bootstrap
    setup_logging(settings.log)
    if settings.log.level != "DEBUG":  # kafka-python logs every refused connection at ERROR; the worker reports outages itself
        logging.getLogger("kafka.net").setLevel(logging.CRITICAL)
    from worker.tf_threads import apply_tf_threads

    try:
        apply_tf_threads()
    except ValueError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if args.create_topics:
        from worker.kafka.clients import ensure_topics

        from worker.exits import EXIT_BROKER, describe_broker_error

        k = settings.kafka
        try:
            made = ensure_topics(k, {t: args.create_topics for t in (k.readings_topic, k.scores_topic, k.anomalies_topic, k.dead_letter_topic)},
                                 timeout_s=k.request_timeout_ms / 1000)
        except Exception as e:  # noqa: BLE001 - NoBrokersAvailable, KafkaTimeoutError, ...: one line, exit 5
            log.error("%s", describe_broker_error(e, k.bootstrap_servers, f"create the topics (--create-topics {args.create_topics})"))
            return EXIT_BROKER
        if settings.checkpoint.state_store != "local":  # issue 12: one changelog partition per readings partition
            from worker.kafka.changelog import create_changelog_topic

            try:
                if create_changelog_topic(k, settings.checkpoint.changelog_topic, args.create_topics):
                    made.append(settings.checkpoint.changelog_topic)
            except Exception as e:  # noqa: BLE001
                log.error("%s", describe_broker_error(e, k.bootstrap_servers, "create the state changelog topic"))
                return EXIT_BROKER
        if made:
            log.info("created topics %s", made)
    try:
        worker = Worker(settings)
    except ArtifactError as e:
        from worker.exits import model_error

        log.error("%s", model_error(e, "--model" if args.model is not None else None))
        return EXIT_CONFIG

    def _stop(signum, _frame):
        log.info("signal %s: finishing the batch, checkpointing, committing", signal.Signals(signum).name)
        worker.request_stop()
        # the grace period is a promise: if shutting down hangs, leave anyway
        t = threading.Timer(settings.shutdown_grace_s, _overdue)
        t.daemon = True
        t.start()

    def _overdue():
        log.error("shutdown took longer than %.0f s; exiting without a final checkpoint", settings.shutdown_grace_s)
        logging.shutdown()
        os._exit(EXIT_GRACE)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if worker.watch is not None:  # SIGHUP: read the models folder's `latest` pointer now
        signal.signal(signal.SIGHUP, lambda *_: worker.watch.request_check())
    from worker.runtime import tune_gc

    tune_gc()  # after the model is loaded: freeze it out of the collector's way
    return worker.run()
