"""Prometheus metrics of the worker: the one place that names them.

Conventions: prefix ``slotwatch_``, base units (seconds, bytes, ratios), ``_total`` on
counters, no per-sensor labels (only ``reason``, ``cause`` and ``partition``, all bounded).
The dashboard and alert rules in ``deploy/`` use exactly these names; a test checks it.

Each :class:`Metrics` has its own registry, so tests can run several workers in one process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from worker.core.readings import REASONS

# sub-millisecond resolution for ticks, up to seconds for slow ones
TICK_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FILL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# event-time lag also covers backlogs and replays: minutes to a day
LAG_BUCKETS = LATENCY_BUCKETS + (120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.consumed = Counter("slotwatch_readings_consumed_total", "Readings taken from the readings topic.", registry=r)
        self.scored = Counter("slotwatch_readings_scored_total", "Readings scored by the core.", registry=r)
        self.rejected = Counter(
            "slotwatch_readings_rejected_total", "Readings sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.skipped = Counter(
            "slotwatch_readings_skipped_total",
            "Readings at or below the partition's checkpointed offset (a replay after a crash), not applied again.",
            registry=r,
        )
        self.anomalies = Counter("slotwatch_anomalies_total", "Readings flagged as anomalies.", registry=r)
        self.published = Counter(
            "slotwatch_messages_published_total", "Messages produced, by topic kind.", ["kind"], registry=r
        )
        for kind in ("score", "anomaly", "episode", "dead_letter"):
            self.published.labels(kind)
        self.resets = Counter("slotwatch_sensor_resets_total", "Sensor state resets, by cause.", ["cause"], registry=r)
        for cause in ("gap", "request"):
            self.resets.labels(cause)
        self.tick_seconds = Histogram(
            "slotwatch_tick_duration_seconds", "Wall time of one engine tick (routing, step, scoring).", buckets=TICK_BUCKETS, registry=r
        )
        self.batch_fill = Histogram(
            "slotwatch_batch_fill_ratio", "Readings per tick divided by the slot count B.", buckets=FILL_BUCKETS, registry=r
        )
        self.slots_in_use = Gauge("slotwatch_slots_in_use", "Slots holding a sensor.", registry=r)
        self.slots_capacity = Gauge("slotwatch_slots_capacity", "Slots of the model batch (B).", registry=r)
        self.sensors_known = Gauge("slotwatch_sensors_known", "Sensors with state held by this worker.", registry=r)
        self.page_ins = Counter("slotwatch_page_ins_total", "Sensor states paged into a slot.", registry=r)
        self.page_outs = Counter("slotwatch_page_outs_total", "Sensor states paged out of a slot.", registry=r)
        self.checkpoint_seconds = Histogram(
            "slotwatch_checkpoint_duration_seconds", "Time to write one checkpoint round (all partitions).", buckets=CHECKPOINT_BUCKETS, registry=r
        )
        self.checkpoint_bytes = Gauge("slotwatch_checkpoint_size_bytes", "Bytes written by the last checkpoint round.", registry=r)
        self.checkpoint_last = Gauge(
            "slotwatch_checkpoint_last_success_timestamp_seconds", "Unix time of the last durable checkpoint.", registry=r
        )
        self.checkpoint_age = Gauge("slotwatch_checkpoint_age_seconds", "Seconds since the last durable checkpoint.", registry=r)
        self.checkpoint_age.set_function(self._checkpoint_age)
        self.checkpoint_failures = Counter("slotwatch_checkpoint_failures_total", "Checkpoint rounds that failed.", registry=r)
        self.checkpoint_fallbacks = Counter(
            "slotwatch_checkpoint_fallbacks_total", "Restores that skipped a corrupt newest checkpoint.", registry=r
        )
        self.committed_offset = Gauge(
            "slotwatch_committed_offset", "Last offset committed to Kafka, per input partition.", ["partition"], registry=r
        )
        self.lag = Gauge("slotwatch_consumer_lag", "Readings behind the partition end, per input partition.", ["partition"], registry=r)
        self.latency = Histogram(  # deprecated (issue 13): kept for existing dashboards; same as event_lag
            "slotwatch_end_to_end_latency_seconds",
            "Deprecated, use slotwatch_event_time_lag_seconds (the same: from the reading's time stamp to its score).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.model = Info("slotwatch_model", "The model artifact in use.", registry=r)
        self.ready = Gauge("slotwatch_ready", "1 when /readyz answers ready.", registry=r)
        self.broker_up = Gauge("slotwatch_broker_up", "1 when the last broker call succeeded.", registry=r)
        self.start_time = Gauge("slotwatch_start_time_seconds", "Unix time the worker started.", registry=r)
        self.start_time.set(time.time())
        # issue 13 (latency split): how old a reading is when scored, and how long the worker took with it
        self.event_lag = Histogram(
            "slotwatch_event_time_lag_seconds",
            "From the reading's own time stamp (ts) to its score: the sender's clock and delays, Kafka, any backlog, the worker.",
            buckets=LAG_BUCKETS, registry=r,
        )
        self.processing = Histogram(
            "slotwatch_processing_latency_seconds",
            "From the poll that returned the reading to its score (decoding, the core's ticks); the worker's own share.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        # hardening (issue 10): bounded memory and failures that must not stop the worker
        self.evicted = Counter(
            "slotwatch_sensors_evicted_total", "Sensors dropped from the worker's table, by reason "
            "(idle: to make room under SLOTWATCH_LIMITS__MAX_SENSORS).", ["reason"], registry=r
        )
        self.evicted.labels("idle")
        self.sensors_capacity = Gauge("slotwatch_sensors_capacity", "Most sensors the worker holds (SLOTWATCH_LIMITS__MAX_SENSORS).", registry=r)
        self.rewinds = Counter(
            "slotwatch_rewinds_total", "Times an unexpected error made the worker reload its checkpoints and replay "
            "(the failing reading goes to the dead-letter topic as internal_error).", registry=r
        )
        # issue 9 episodes: alerts as episodes (worker.core.episodes); readings flagged stay in slotwatch_anomalies_total
        self.episodes_opened = Counter("slotwatch_episodes_opened_total", "Anomaly episodes opened, by kind.", ["kind"], registry=r)
        self.episodes_closed = Counter(
            "slotwatch_episodes_closed_total", "Anomaly episodes closed, by kind and close reason.", ["kind", "reason"], registry=r
        )
        self.episodes_open = Gauge("slotwatch_episodes_open", "Episodes open now (sensors of this worker), by kind.", ["kind"], registry=r)
        self.episodes_opened.labels("score")
        self.episodes_open.labels("score")
        for reason in ("quiet", "accepted", "reset", "evicted"):
            self.episodes_closed.labels("score", reason)

        # model handover (issue 15): warm state from the recent-readings ring, live swap of `latest`, shadow check
        self.handover_warmed = Counter(
            "slotwatch_handover_sensors_warmed_total",
            "Sensor states rebuilt under another model version from their recent readings, by cause.", ["cause"], registry=r)
        for cause in ("restore", "swap"):
            self.handover_warmed.labels(cause)
        self.candidates = Counter(
            "slotwatch_model_candidates_total",
            "New model versions seen behind the `latest` pointer, by outcome "
            "(promoted, forced, refused_invalid: does not load or fit, refused_shadow: flag rate out of bounds).",
            ["outcome"], registry=r)
        for outcome in ("promoted", "forced", "refused_invalid", "refused_shadow"):
            self.candidates.labels(outcome)
        self.candidate_refused = Gauge(
            "slotwatch_model_candidate_refused",
            "1 while the version `latest` names was refused (the worker keeps the current model), else 0.", registry=r)
        self.handover_seconds = Gauge(
            "slotwatch_model_handover_duration_seconds", "Wall time of the last live handover, load to switch.", registry=r)
        self.shadow_readings = Gauge(
            "slotwatch_shadow_readings", "Readings the candidate has scored in shadow (not published) so far.", registry=r)
        self.shadow_flag_rate = Gauge(
            "slotwatch_shadow_flag_rate", "Share of shadow readings flagged, by model (current, candidate).", ["model"], registry=r)
        self.shadow_disagree = Gauge(
            "slotwatch_shadow_disagreement_ratio", "Share of shadow readings one model flags and the other does not.", registry=r)
        self.shadow_error = Histogram(
            "slotwatch_shadow_error", "Reconstruction error (residual units) of shadow readings, by model (current, candidate).",
            ["model"], buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0), registry=r)
        for who in ("current", "candidate"):
            self.shadow_flag_rate.labels(who)
            self.shadow_error.labels(who)
        # issue 12: the state changelog (SLOTWATCH_CHECKPOINT__STATE_STORE kafka/both)
        self.changelog_records = Counter(
            "slotwatch_changelog_records_total", "State changelog records acknowledged (rows, tombstones, markers).", registry=r)
        self.changelog_bytes = Counter(
            "slotwatch_changelog_bytes_total", "Bytes (keys and values) of acknowledged state changelog records.", registry=r)
        self.changelog_restore_progress = Gauge(
            "slotwatch_changelog_restore_progress_ratio",
            "Share of a changelog partition read by the restore in progress (1 when done), by partition.", ["partition"],
            registry=r)
        self.changelog_restore_seconds = Histogram(
            "slotwatch_changelog_restore_seconds", "Time to restore a partition from the state changelog.",
            buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0), registry=r)
        self.changelog_restored = Counter(
            "slotwatch_changelog_restored_sensors_total", "Sensors restored from the state changelog.", registry=r)
        # issue 12: exactly-once rounds (SLOTWATCH_KAFKA__EXACTLY_ONCE); outcome: committed, aborted, fenced
        self.txn_rounds = Counter("slotwatch_transaction_rounds_total", "Checkpoint rounds' Kafka transactions, by outcome "
                                  "(committed, aborted, fenced).", ["outcome"], registry=r)
        self.txn_commit_seconds = Histogram("slotwatch_transaction_commit_seconds", "Time of a committed round's transaction "
                                            "(outputs acknowledged to EndTxn).", buckets=CHECKPOINT_BUCKETS, registry=r)
        for outcome in ("committed", "aborted", "fenced"):
            self.txn_rounds.labels(outcome)

        # silent sensors (issue 16): by kind, never per sensor; the stall gauge per partition (few)
        self.published.labels("episode")
        self.silent_sensors = Gauge(
            "slotwatch_silent_sensors", "Sensors in an open silent episode (their partition's stream time moved on without them).", registry=r
        )
        self.silence_episodes = Counter(
            "slotwatch_silence_episodes_total", "Silent-sensor episode events published, by event (open, close).", ["event"], registry=r
        )
        for event in ("open", "close"):
            self.silence_episodes.labels(event)
        self.silence_forgotten = Counter(
            "slotwatch_silence_forgotten_total", "Evicted sensors dropped from the full last-seen table (SLOTWATCH_SILENCE__LAST_SEEN_SIZE).", registry=r
        )
        self.stream_stall = Gauge(
            "slotwatch_partition_stream_stall_seconds",
            "Wall-clock seconds since an owned partition's stream time (newest reading time) last advanced, per input partition.",
            ["partition"], registry=r,
        )

    def _checkpoint_age(self) -> float:
        last = self.checkpoint_last._value.get()  # noqa: SLF001 - prometheus_client keeps it here
        return 0.0 if last == 0 else max(0.0, time.time() - last)


def observe_many(hist: Histogram, values) -> None:
    """``hist.observe(v)`` for every value, in one pass (numpy) instead of one locked call each.

    Uses the client's internal bucket counters (stable across prometheus-client releases
    for years); falls back to plain ``observe`` if they are not there.

    >>> h = Histogram("demo_seconds", "demo", buckets=(0.01, 0.1), registry=CollectorRegistry())
    >>> observe_many(h, [0.005, 0.05, 0.05, 3.0])
    >>> [s.value for s in h.collect()[0].samples if s.name == "demo_seconds_bucket"]
    [1.0, 3.0, 4.0]
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for x in v.tolist():
            hist.observe(x)
        return
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), v, side="left")  # first bound >= v
    counts = np.bincount(idx, minlength=len(bounds))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)
    total.inc(float(v.sum()))


#: every metric family name the worker exposes (for deploy/ checks)
def metric_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client import generate_latest

    m = Metrics()
    names = set()
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            names.add(s.name)
    return names
