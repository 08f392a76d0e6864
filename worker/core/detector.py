"""The scoring core: route readings to slots, tick the engine, score, keep per-sensor state.

:class:`SlotDetector` is what the Kafka worker and ``slotwatch replay`` both run.  It is
pure with respect to I/O: readings in, scores and rejections out, state exportable per
partition for checkpoints.

Order: readings are applied in the order given (for Kafka: offset order per partition).
A sensor's readings in one call become successive ticks.  A reading older than the last
one applied for its sensor is rejected as ``late`` rather than reordered, so the result
never depends on how the stream was cut into batches.

Validation before mutation: every check that can reject a reading (its values, time
stamp and sensor id against :mod:`worker.core.limits`, ``wrong_partition``, ``late``,
``no_capacity``) runs before any state changes, and a reading refused for want of a slot
(``no_free_slot``) gets no table row; so a rejected reading leaves the detector's state
exactly as it was.

Capacity: with ``max_sensors`` the table holds at most that many sensors.  A new sensor
that does not fit first evicts sensors idle for longer than ``max_gap_ms`` (behind the
newest reading of their partition, held or being processed; oldest first), whose state a returning reading would
zero anyway; when none is idle it is rejected ``no_capacity``.  Evictions are counted in
``stats.evicted_idle`` and listed by :meth:`SlotDetector.drain_evicted`.

>>> from worker.core.artifact import Artifact, Manifest, Scaling, Calibration, build_network
>>> net = build_network(1, [8], seed=0)
>>> scaling = Scaling([0.0], [1.0], sensors={"a": {"mean": [0.0], "std": [1.0]}})
>>> m = Manifest("demo", ["temp"], [8], scaling, Calibration(warmup=2))
>>> det = SlotDetector(Artifact(None, m, net), slots=4)
>>> out = det.process([Reading("a", 1000 * i, np.array([0.1 * i])) for i in range(3)])
>>> [o.warming_up for o in out]   # "a" was seen in training; unseen sensors warm up twice as long
[True, True, False]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from worker.core import adaptive, intake
from worker.core.adaptive import AdaptParams
from worker.core.artifact import Artifact
from worker.core.capacity import CapacityMixin
from worker.core.columns import ReadingColumns, ScoreColumns
from worker.core.detector_silence import SILENCE_COLUMNS, SilenceHooksMixin
from worker.core.detector_state import StateMixin
from worker.core.engine import SlotEngine
from worker.core.episodes import EpisodeParams, EpisodeTracker
from worker.core.readings import Reading, Rejection, Score
from worker.core.router import SlotRouter
from worker.core.scorer import ScorerParams
from worker.core.tick import run_tick
from worker.state.table import StateTable

__all__ = ["DetectorStats", "SILENCE_COLUMNS", "SlotDetector"]


@dataclass
class DetectorStats:
    """Counters the edges turn into metrics."""

    ticks: int = 0
    readings: int = 0  # readings that went through a tick
    page_outs: int = 0
    page_ins: int = 0
    resets_gap: int = 0
    resets_request: int = 0
    anomalies: int = 0
    evicted_idle: int = 0  # sensors dropped to make room (max_sensors), idle longer than max_gap


class SlotDetector(CapacityMixin, StateMixin, SilenceHooksMixin):
    """Every sensor in a fixed slot of one stateful LSTM, scored step by step.

    Processing and scoring are here; capacity (:mod:`worker.core.capacity`), per-sensor state and
    checkpoints (:mod:`worker.core.detector_state`) and the silence hooks
    (:mod:`worker.core.detector_silence`) are mixins in their own modules."""

    def __init__(
        self,
        artifact: Artifact,
        slots: int = 256,
        when_full: str = "page",
        max_gap_ms: int = 3_600_000,
        threshold: float | None = None,
        warmup: int | None = None,
        recent: int = 16,
        jit_compile: bool = True,
        silence=None,
        scoring: object | None = None,
        max_sensors: int | None = None,
        max_sensor_id_bytes: int = 256,
        episodes: EpisodeParams | None = None,
    ) -> None:
        m = artifact.manifest
        m.validate()
        cal = m.calibration
        self.model_version = m.model_version
        self.features = list(m.features)
        self.n_features = f = len(self.features)
        self.slots = slots
        self.max_gap_ms = int(max_gap_ms)
        self.max_sensors = None if max_sensors is None else int(max_sensors)
        self.max_sensor_id_bytes = int(max_sensor_id_bytes)
        self._evicted: list[tuple[str, int, int]] = []  # (sensor, partition, last ts) since drain_evicted
        self.params = ScorerParams(
            threshold=cal.threshold if threshold is None else float(threshold),
            warmup=cal.warmup if warmup is None else int(warmup),
            short_window=cal.short_window,
            long_window=cal.long_window,
            prior_mean=cal.error_mean,
            prior_var=cal.error_std**2,
        )
        self.residual_std = np.asarray(cal.residual_std or [1.0] * f, dtype=np.float64)
        # adaptive scoring (worker.core.adaptive): ``scoring`` is settings.scoring (or an AdaptParams)
        self.adapt = self._adapt_params(cal, scoring)
        # one quiet period for the scorer's runs and the episode messages: the episode settings'
        # (without them, an AdaptParams' own ``quiet`` sets both)
        if episodes is None:
            episodes = EpisodeParams(quiet_readings=self.adapt.quiet)
        self.adapt = replace(self.adapt, quiet=episodes.quiet_readings)
        self._level_on = self.adapt.level_scale > 0 and self.adapt.level_window > 0
        # stuck sensors: stillness against the sensor's own history, on when the artifact asks for a flatline check
        self._flat_on = int(cal.flat_window) > 0 and self.adapt.flat_min_run > 0
        self.scaling = m.scaling
        self._global_mean = np.asarray(m.scaling.mean, dtype=np.float64)
        self._global_std = np.asarray(m.scaling.std, dtype=np.float64)
        self.engine = SlotEngine(artifact.model.get_weights(), f, m.units, slots, jit_compile=jit_compile)
        self.router = SlotRouter(slots, when_full)
        self.table = StateTable(f, self.engine.state_size, recent)
        self.episodes = EpisodeTracker.from_params(self.features, episodes, self.table)
        self.reset_events: list = []  # episode events of the last reset() call
        self._episode_events: list = []  # closes of evicted sensors' episodes, see drain_episode_events
        self.stats = DetectorStats()
        self._tick_log: list[tuple[float, int]] = []  # (seconds, readings) per tick, see drain_ticks
        self._x = np.zeros((slots, 1, f), np.float32)
        self._mask = np.zeros(slots, bool)
        self.silence = silence  # worker.core.silence.SilenceTracker, or None (off)
        self._seq_rows: np.ndarray | None = None  # per input position of a batch: row applied (-1: not), time
        self._seq_ts: np.ndarray | None = None

    @staticmethod
    def _adapt_params(cal, scoring) -> AdaptParams:
        if isinstance(scoring, AdaptParams):
            return scoring
        d = AdaptParams()
        g = (lambda k: getattr(scoring, k, getattr(d, k))) if scoring is not None else (lambda k: getattr(d, k))
        level = bool(getattr(scoring, "level", True)) if scoring is not None else True
        return AdaptParams(
            accept_after=int(g("accept_after")),
            level_window=int(cal.level_window) if level else 0, level_scale=float(cal.level_scale) if level else 0.0,
            move_window=int(g("move_window")), flat_min_run=int(g("flat_min_run")), flat_p_max=float(g("flat_p_max")),
            level_scales=tuple(float(v) for v in cal.level_feature_scale) if level else (),
            level_scales_unseen=tuple(float(v) for v in cal.level_feature_scale_unseen) if level and cal.level_feature_scale else (),
        )

    @property
    def threshold(self) -> float:
        return self.params.threshold

    # ------------------------------------------------------------------ processing
    def process(self, readings: Sequence[Reading]) -> list[Score | Rejection]:
        """Score readings; the result is aligned with the input (a Score or a Rejection each).

        A thin wrapper over :meth:`process_columns`: the readings become columns, the score
        columns become objects (carrying the readings' own value arrays and labels)."""
        return self.process_columns(ReadingColumns.from_readings(readings, self.n_features)).to_objects(readings)

    def process_columns(self, cols: ReadingColumns) -> ScoreColumns:
        """Score a batch of readings given as columns; the result has one row per input row.

        Every check that can reject a reading runs here, before any state changes
        (:mod:`worker.core.intake`); then the accepted readings run in rounds (the k-th
        reading of every sensor), each round cut into ticks of at most B sensors
        (:mod:`worker.core.tick`)."""
        n = len(cols)
        out = ScoreColumns.empty(cols, self.n_features, self.params.threshold)
        if self.silence is not None:
            self._seq_rows = np.full(n, -1, np.int64)
            self._seq_ts = np.zeros(n, np.int64)
        table = self.table
        ok = intake.check(cols, table.index, self.n_features, self.max_sensor_id_bytes, out)
        groups = intake.sequence(cols, ok, table.index, table.cols["last_ts"], table.cols["partition"], out)
        if self.max_sensors is not None and (groups.rows < 0).any():
            self._admit(groups, cols, out)
        rows = groups.rows
        for _, live, at in intake.rounds(groups):
            if len(live) > self.slots:  # several ticks: sensors holding a slot first, so fewer are paged
                slot_col = table.cols["slot"]  # read each round: a round's new sensors may have grown the table
                r = rows[live]
                held = np.zeros(len(live), bool)
                held[r >= 0] = slot_col[r[r >= 0]] >= 0
                first = np.concatenate([np.nonzero(held)[0], np.nonzero(~held)[0]])
                live, at = live[first], at[first]
            for start in range(0, len(live), self.slots):
                chunk = live[start : start + self.slots]
                new = rows[chunk] < 0
                self._tick(rows[chunk], at[start : start + self.slots], cols, out)
                if new.any():  # new sensors got their rows in this tick
                    index = table.index
                    for g in chunk[new].tolist():
                        rows[g] = index.get(groups.sensors[g], -1)
        if self.silence is not None and n:
            self.silence.observe(table, self._seq_rows, self._seq_ts)
        return out

    def drain_episode_events(self) -> list:
        """Episode events that belong to no reading (closes of evicted sensors) since the last call."""
        ev, self._episode_events = self._episode_events, []
        return ev

    def drain_evicted(self) -> list[tuple[str, int, int]]:
        """(sensor id, partition, last ts ms) of every sensor evicted since the last call."""
        ev, self._evicted = self._evicted, []
        return ev

    def drain_ticks(self) -> list[tuple[float, int]]:
        """(duration in seconds, readings) of every tick since the last call (for metrics)."""
        log, self._tick_log = self._tick_log, []
        return log

    def score_one(self, reading: Reading) -> Score | Rejection:
        """Score a single reading (a tick with one slot busy)."""
        return self.process([reading])[0]

    # ------------------------------------------------------------------ one tick
    def _tick(self, rows: np.ndarray, idx: np.ndarray, cols: ReadingColumns, out: ScoreColumns) -> None:
        """One tick: the readings at positions ``idx`` of ``cols``, one per sensor (``rows``: table rows, -1 new)."""
        run_tick(self, rows, idx, cols, out)

    def _score(self, rows: np.ndarray, x: np.ndarray, xs: np.ndarray, err: np.ndarray, count: np.ndarray, warm_n: np.ndarray):
        """The scoring lines of a tick (:func:`worker.core.adaptive.score_tick` on the rows' state).

        Returns ``(score, anomaly, warming, err_mean, err_var, err_short, tail)`` with
        ``tail = 1 - score`` computed without cancellation; ``self._accepted`` says which
        readings were accepted as the new normal.  (The tick itself calls :meth:`_score_rows`.)
        """
        c = self.table.cols
        ring = self.table.recent
        prev = c["recent"].reshape(-1, self.n_features)[rows * ring + (c["recent_pos"][rows] - 1) % ring]
        score, anom, warming, tail, new = self._score_rows(rows, x, xs, err, count, warm_n, prev)
        return score, anom, warming, new["err_mean"], new["err_var"], new["err_short"], tail

    def _score_rows(self, rows: np.ndarray, x: np.ndarray, xs: np.ndarray, err: np.ndarray, count: np.ndarray,
                    warm_n: np.ndarray, prev: np.ndarray):
        """:func:`worker.core.adaptive.score_tick` on the rows' state, written back to the table.

        ``prev``: each sensor's previous raw reading (from its ring).  Returns ``(score, anomaly,
        warming, tail, new state)``; ``self._accepted`` says which readings were accepted as the new normal."""
        c = self.table.cols
        st = {k: c[k].take(rows, axis=0) for k in adaptive.STATE_COLUMNS}
        score, anom, warming, tail, acc, new = adaptive.score_tick(
            self.params, self.adapt, st, err, xs, x.astype(np.float32), prev, count, warm_n, self._level_on, self._flat_on)
        for k in adaptive.STATE_COLUMNS:
            c[k][rows] = new[k]
        self._accepted = acc
        return score, anom, warming, tail, new

    def _end_quiet_runs(self, rows: np.ndarray, step_events: list) -> None:
        """The scorer's run ends where the tracker closed an episode for its quiet period.

        With a count only the scorer ended it at the same reading already; this covers ``quiet_s``."""
        pos = [p for p, e in step_events if e.event == "close" and e.close_reason == "quiet"]
        if pos:
            r = rows[np.asarray(pos, np.int64)]
            self.table.cols["adapt_len"][r] = 0
            self.table.cols["adapt_quiet"][r] = 0
