"""What the worker reports about itself beyond counting readings: the core's statistics as
Prometheus metrics, episode logs, the wall-clock stream watchdog and the broker probe (lag,
broker reachable)."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("slotwatch.worker")


class Telemetry:
    def __init__(self, app) -> None:
        self.app = app
        self._stats = self._snapshot()
        self._evicted_seen = 0
        self._forgotten_seen = 0
        self._stall: dict[int, list] = {}  # partition -> [stream time (or offset) seen, monotonic since, warned]
        self._last_probe = 0.0
        self._probe: BrokerProbe | None = None

    # ------------------------------------------------------------------ core statistics
    def _snapshot(self) -> tuple:
        st = self.app.detector.stats
        return (st.page_ins, st.page_outs, st.resets_gap, st.resets_request, st.anomalies)

    def reset_stats(self) -> None:
        """The detector was cleared or replaced: count its statistics from here."""
        self._stats = self._snapshot()

    def update_core_metrics(self) -> None:
        from worker.metrics import observe_many

        m, det = self.app.metrics, self.app.detector
        new = self._snapshot()
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

    def note_episodes(self, events) -> None:
        """Count and log episode events whose messages were just sent."""
        m = self.app.metrics
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

    def note_silence(self, events, sil) -> None:
        """Metrics and logs of the silent-sensor events just sent (issue 16)."""
        m = self.app.metrics
        for ev in events:
            m.silence_episodes.labels(ev.event).inc()
            log.debug("sensor %s", "silent" if ev.event == "open" else f"back ({ev.close_reason})",
                      extra={"sensor_id": ev.sensor_id, "partition": ev.partition})
        if events:
            n_open = sum(ev.event == "open" for ev in events)
            log.info("silent sensors: %d went silent, %d came back; %d silent now", n_open, len(events) - n_open,
                     sil.silent_count)
        forgotten = sil.stats.forgotten - self._forgotten_seen
        if forgotten:
            m.silence_forgotten.inc(forgotten)
            self._forgotten_seen = sil.stats.forgotten

    # ------------------------------------------------------------------ watchdog and probe
    def watch_streams(self) -> None:
        """Wall-clock watchdog: seconds since each owned partition's stream time advanced (a stopped producer)."""
        app = self.app
        sil = app.detector.silence
        now = time.monotonic()
        limit = app.settings.silence.watchdog_s
        applied = app.partitions.applied
        for p in app.partitions.restored:
            mark = sil.stream.get(p) if sil is not None else applied.get(p)  # offsets when the tracker is off
            st = self._stall.get(p)
            if st is None or st[0] != mark:
                self._stall[p] = st = [mark, now, False]
            stalled = now - st[1]
            app.metrics.stream_stall.labels(str(p)).set(stalled)
            if stalled > limit and not st[2]:
                st[2] = True
                log.warning("partition %d: stream time has not advanced for %.0f s (a stopped producer?)", p, stalled,
                            extra={"partition": p})

    def maybe_probe(self, every_s: float = 5.0) -> None:
        """Every few seconds: end offsets of our partitions -> lag, and whether the broker answers.

        kafka-python: the request runs on the probe's own thread (:class:`BrokerProbe`), not on
        the consumer thread (a ListOffsets round trip took 14-41 ms out of the poll loop).
        confluent: on this thread, but from the watermarks librdkafka caches plus one metadata
        request (the ListOffsets queries took 165-290 ms).  Called every loop round: a threaded
        answer is applied as soon as it came (a success is at most one round old), a new request
        made every ``every_s``."""
        now = time.monotonic()
        app = self.app
        parts = app.partitions
        if not getattr(app.source, "probe_on_thread", False):  # confluent: cached watermarks, on this thread
            if now - self._last_probe < every_s:
                return
            self._last_probe = now
            try:
                answer = app.source.end_offsets(sorted(parts.restored))
            except Exception as e:  # noqa: BLE001
                answer = e
        elif self._probe is None:
            self._probe = BrokerProbe(app.source, timeout_s=3.0)  # the request's own limit is 2 s
        if self._probe is not None:
            answer = self._probe.take(now)  # applied as soon as it is there: a success is never stale
            if now - self._last_probe >= every_s:
                self._last_probe = now
                self._probe.ask(sorted(parts.restored))
        if answer is None:  # nothing new (none asked, or the request still within its time)
            return
        if isinstance(answer, BaseException):
            log.warning("broker not answering (%s)", answer)
            parts.ready_checks(broker=False)
            return
        for p, end in answer.items():
            app.metrics.lag.labels(str(p)).set(max(0, end - (parts.applied.get(p, -1) + 1)))
        parts.ready_checks(broker=True)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.stop()

    def forget(self, p: int) -> None:
        """A partition left: its per-partition gauges go."""
        self._stall.pop(p, None)
        m = self.app.metrics
        for gauge in (m.lag, m.committed_offset, m.stream_stall):
            try:
                gauge.remove(str(p))
            except KeyError:
                pass


class BrokerProbe:
    """End offsets asked on a daemon thread (``source.probe_end_offsets``, safe off the consumer
    thread); the consumer thread hands in the partitions and takes the answer: a dict, the
    exception the request raised, a :class:`TimeoutError` when the last request has been
    outstanding longer than ``timeout_s`` (a hung broker), or None (no answer due yet)."""

    def __init__(self, source, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self._cv = threading.Condition()
        self._request: list[int] | None = None
        self._answer = None
        self._asked_at: float | None = None  # monotonic time of the request not yet answered
        self._overdue_told = False
        self._stopped = False
        threading.Thread(target=self._run, name="slotwatch-broker-probe", daemon=True).start()

    def ask(self, partitions: list[int]) -> None:
        with self._cv:
            if self._asked_at is not None:  # still busy with the previous one: no pile-up
                return
            self._request, self._asked_at, self._overdue_told = partitions, time.monotonic(), False
            self._cv.notify()

    def take(self, now: float):
        with self._cv:
            answer, self._answer = self._answer, None
            late = self._asked_at is not None and now - self._asked_at > self.timeout_s
            if answer is None and late and not self._overdue_told:  # a hung call: told once per request
                self._overdue_told = True
                return TimeoutError(f"no end offsets within {self.timeout_s:.0f} s")
            return answer

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                partitions, self._request = self._request, None
            try:
                answer = self.source.probe_end_offsets(partitions)
            except Exception as e:  # noqa: BLE001
                answer = e
            with self._cv:
                self._answer, self._asked_at = answer, None
