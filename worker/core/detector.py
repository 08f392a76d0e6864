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
from worker.core.columns import ReadingColumns, ScoreColumns
from worker.core.engine import SlotEngine
from worker.core.episodes import EpisodeParams, EpisodeTracker
from worker.core.readings import Reading, Rejection, Score
from worker.core.router import SlotRouter
from worker.core.scorer import ScorerParams
from worker.core.tick import run_tick
from worker.state.table import NO_TS, StateTable

#: the state-table columns of the silence tracker (worker.core.silence)
SILENCE_COLUMNS = ("sil_last_ts", "sil_stream_ts", "cad_n", "cad_log", "cad_dev", "sil_due_ts")


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


class SlotDetector:
    """Every sensor in a fixed slot of one stateful LSTM, scored step by step."""

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

    def _admit(self, groups: intake.Groups, cols: ReadingColumns, out: ScoreColumns) -> None:
        """Make room for the new sensors of ``groups`` within ``max_sensors``: evict idle ones, reject the rest
        (``no_capacity``, the sensors whose first reading came last)."""
        table = self.table
        new = np.nonzero(groups.rows < 0)[0]
        need = table.n_rows + len(new) - self.max_sensors
        if need <= 0:
            return
        # the partitions' stream time includes this call's readings: a flood of new sensors that are all
        # refused never moves the table's own times forward, yet it does make the old sensors idle
        now = intake.newest_per_partition(cols, groups)
        evicted = self._evict_idle(need, exclude=set(groups.sensors), now=now)
        if need > evicted:
            refused = new[len(new) - (need - evicted):]
            for g in refused.tolist():
                for i in groups.flat[groups.starts[g] : groups.starts[g] + groups.counts[g]].tolist():
                    out.reject(i, "no_capacity", f"the worker holds its maximum of {self.max_sensors} sensors and none is idle")
            keep = np.ones(len(groups.sensors), bool)
            keep[refused] = False
            groups.drop(keep)
        if evicted:  # rows moved: look the kept sensors up again
            index = table.index
            groups.rows = np.fromiter((index.get(s, -1) for s in groups.sensors), np.int64, len(groups.sensors))

    def _evict_idle(self, k: int, exclude, now: dict[int, int] | None = None) -> int:
        """Drop up to ``k`` sensors idle longer than max_gap behind their partition's newest reading
        (in the table, or in ``now``: partition -> newest time stamp being processed), oldest first."""
        table = self.table
        n = table.n_rows
        if n == 0:
            return 0
        lt = table.cols["last_ts"][:n]
        parts = table.cols["partition"][:n]
        uniq, inv = np.unique(parts, return_inverse=True)
        clock = np.full(len(uniq), NO_TS, np.int64)
        np.maximum.at(clock, inv, lt)
        if now:
            clock = np.maximum(clock, np.array([now.get(int(u), NO_TS) for u in uniq.tolist()], np.int64))
        with np.errstate(over="ignore"):
            idle = (lt < clock[inv] - self.max_gap_ms) & (clock[inv] != NO_TS)
        cand = np.nonzero(idle)[0]
        if len(cand) and exclude:
            cand = np.array([r for r in cand.tolist() if table.ids[r] not in exclude], dtype=np.int64)
        if len(cand) == 0:
            return 0
        if len(cand) > k:
            cand = cand[np.argpartition(lt[cand], k - 1)[:k]]
        cand = np.sort(cand)
        # an open episode of an evicted sensor closes now ("evicted", at its partition's stream time)
        evict_ts = clock[inv[cand]]
        for _, e in self.episodes.close(cand, evict_ts, "evicted"):
            if len(self._episode_events) < 100_000:  # bounded if nobody drains it
                self._episode_events.append(e)
        for r in cand.tolist():
            sid = table.ids[r]
            self.router.release(sid)
            if len(self._evicted) < 100_000:  # bounded if nobody drains it
                self._evicted.append((sid, int(parts[r]), int(lt[r])))
        self.silence_evicted(cand)  # silent sensors stay known as silent (issue 16)
        table.remove_rows(cand)
        self.stats.evicted_idle += len(cand)
        return len(cand)

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
        st = {k: c[k][rows] for k in adaptive.STATE_COLUMNS}
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

    # ------------------------------------------------------------------ state
    def _new_sensor(self, sensor_id: str, partition: int) -> int:
        row = self.table.add(sensor_id, partition)
        mean, std, trained = self.scaling.for_sensor(sensor_id)
        c = self.table.cols
        c["mean"][row], c["std"][row], c["trained"][row] = mean, std, trained
        c["m2"][row] = 0.0
        return row

    def _reset_rows(self, rows: np.ndarray, slots: np.ndarray) -> None:
        self.table.clear_rows(rows)
        self.engine.reset(slots)

    def reset(self, sensor_id: str) -> bool:
        """Zero a sensor's state and restart its warm-up now; False if it is unknown.

        An open episode closes (reason ``reset``, at the sensor's last reading); the event is in
        :attr:`reset_events`."""
        row = self.table.index.get(sensor_id)
        if row is None:
            return False
        slot = self.router.slot_of(sensor_id)
        ts = self.table.cols["last_ts"][row]
        self.reset_events = [e for _, e in self.episodes.close(np.array([row]), np.array([ts]), "reset")]
        self.table.clear_rows(np.array([row]))
        if slot is not None:
            self.engine.reset(np.array([slot]))
        return True

    def sync_state(self) -> None:
        """Copy the state of every slotted sensor into the table (before export)."""
        pairs = self.router.assignments()
        if not pairs:
            return
        rows = np.array([self.table.index[s] for s, _ in pairs])
        self.table.cols["state"][rows] = self.engine.read_state(np.array([sl for _, sl in pairs]))

    def sensor_state(self, sensor_id: str) -> np.ndarray:
        """The current LSTM state (h, c of each layer) of one sensor."""
        row = self.table.index[sensor_id]
        slot = self.router.slot_of(sensor_id)
        if slot is not None:
            return self.engine.read_state(np.array([slot]))[0]
        return self.table.cols["state"][row].copy()

    def export_partition(self, partition: int) -> dict[str, np.ndarray]:
        """Columns of every sensor of ``partition`` (for :mod:`worker.checkpointing.format`)."""
        self.sync_state()
        return self.table.export_rows(self.table.rows_of_partition(partition))

    def import_partition(self, data: dict[str, np.ndarray]) -> int:
        """Load sensors' state (from a checkpoint); they go back to their old slots where free."""
        ids = [str(s) for s in data["sensor_id"]]
        for sid in ids:  # the checkpoint wins over whatever was in memory
            if self.router.release(sid) is not None:
                self.table.cols["slot"][self.table.index[sid]] = -1
        rows = self.table.import_rows(data)
        c = self.table.cols
        saved = c["slot"][rows].copy()
        c["slot"][rows] = -1
        wanted = [(ids[k], int(saved[k])) for k in range(len(ids)) if saved[k] >= 0]
        self.router.place(wanted)
        placed = [(self.table.index[s], sl) for s, sl in wanted if self.router.slot_of(s) == sl]
        if placed:
            prow = np.array([p[0] for p in placed])
            pslot = np.array([p[1] for p in placed])
            self.engine.write_state(pslot, c["state"][prow])
            c["slot"][prow] = pslot
        return len(ids)

    def clear(self) -> None:
        """Forget every sensor (all slots free, table empty); the counters in ``stats`` stay."""
        self.engine.reset(np.arange(self.slots))
        self.router = SlotRouter(self.slots, self.router.when_full)
        self.table = StateTable(self.n_features, self.engine.state_size, self.table.recent)
        self.episodes.table = self.table
        self._evicted = []
        self._episode_events = []
        if self.silence is not None:
            self.silence.reset()

    def silence_meta(self, partition: int) -> dict:
        """Checkpoint meta of the silence tracker for ``partition`` ({} when it is off)."""
        return {} if self.silence is None else {"silence": self.silence.export_meta(partition)}

    def restore_silence(self, partition: int, meta: dict | None) -> None:
        """After :meth:`import_partition`: rebuild the partition's silence state from its checkpoint."""
        if self.silence is not None:
            self.silence.restore(self.table, partition, (meta or {}).get("silence"))

    def adopt_silence(self, old: "SlotDetector") -> None:
        """A live model swap (issue 15): take over ``old``'s silence tracker and its per-sensor columns
        (the candidate's copies stopped when it was warmed; ``old`` tracked every reading since)."""
        sil = old.silence
        if sil is None:
            return
        self.silence = sil
        n = old.table.n_rows
        index = self.table.index
        pairs = [(r, index[sid]) for r, sid in enumerate(old.table.ids[:n]) if sid in index]
        if pairs:
            src = np.fromiter((a for a, _ in pairs), np.int64, len(pairs))
            dst = np.fromiter((b for _, b in pairs), np.int64, len(pairs))
            for name in SILENCE_COLUMNS:
                self.table.cols[name][dst] = old.table.cols[name][src]
        for p in sorted(set(sil.stream) | set(sil.heaps)):
            sil.restore(self.table, p, sil.export_meta(p))  # heaps rebuilt over this table, same open episodes

    def silence_evicted(self, rows: np.ndarray) -> None:
        """Call before dropping rows of sensors for good (a sensor cap's eviction): the silence
        tracker keeps their last-seen records, so a silent one stays known as silent."""
        if self.silence is not None:
            self.silence.evicted(self.table, rows)

    def drop_partition(self, partition: int) -> int:
        """Forget every sensor of a partition (it moved to another worker)."""
        if self.silence is not None:
            self.silence.drop_partition(partition)
        rows = self.table.rows_of_partition(partition)
        for r in rows:
            sid = self.table.ids[r]
            self.router.release(sid)
        self.table.remove_rows(rows)
        return len(rows)
