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

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from worker.core import adaptive
from worker.core.adaptive import AdaptParams
from worker.core.artifact import Artifact
from worker.core.attribution import surprise
from worker.core.engine import SlotEngine
from worker.core.episodes import EpisodeParams, EpisodeTracker
from worker.core.limits import FLOAT32_MAX, SCALED_LIMIT, sensor_id_problem, ts_problem, values_problem
from worker.core.readings import TS_MAX_MS, TS_MIN_MS, Reading, Rejection, Score
from worker.core.router import SlotRouter
from worker.core.scorer import ScorerParams, feature_errors, reading_error
from worker.state.table import NO_TS, StateTable

#: the state-table columns of the silence tracker (worker.core.silence)
SILENCE_COLUMNS = ("sil_last_ts", "sil_stream_ts", "cad_n", "cad_log", "cad_dev", "sil_due_ts")

_MIN_STD_FRACTION = 1e-3  # an online-learned std never drops below this share of the fleet's


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

        Every check that can reject a reading runs here, before any state changes.
        """
        out: list[Score | Rejection | None] = [None] * len(readings)
        if self.silence is not None:
            self._seq_rows = np.full(len(readings), -1, np.int64)
            self._seq_ts = np.zeros(len(readings), np.int64)
        table = self.table
        index = table.index
        last_ts = table.cols["last_ts"]
        part_col = table.cols["partition"]
        groups: dict[str, list[int]] = {}
        pending: dict[str, tuple[int, int]] = {}  # sensor -> (ts, partition) of its last accepted reading here
        new: list[str] = []  # sensors without a table row, in order of their first accepted reading
        bad = self._invalid(readings)
        for i, r in enumerate(readings):
            if bad and i in bad:
                reason, detail = bad[i]
                sid = r.sensor_id if reason not in ("bad_sensor_id", "missing_sensor_id") else None
                out[i] = Rejection(reason, detail, sid, r.partition, r.offset)
                continue
            sid = r.sensor_id
            prev = pending.get(sid)
            if prev is None:
                row = index.get(sid)
                prev = (NO_TS, -1) if row is None else (int(last_ts[row]), int(part_col[row]))
            prev_ts, own = prev
            if own >= 0 and r.partition >= 0 and r.partition != own:
                out[i] = Rejection("wrong_partition", f"sensor {sid!r} belongs to partition {own}, not {r.partition} "
                                   "(key its readings by sensor id)", sid, r.partition, r.offset)
                continue
            if r.ts_ms < prev_ts and not r.reset:
                out[i] = Rejection("late", f"ts {r.ts_ms} is older than the last reading applied ({prev_ts})", sid, r.partition, r.offset)
                continue
            pending[sid] = (r.ts_ms, own if own >= 0 else r.partition)
            g = groups.get(sid)
            if g is None:
                groups[sid] = [i]
                if sid not in index:
                    new.append(sid)
            else:
                g.append(i)
        if new and self.max_sensors is not None:
            self._admit(new, groups, readings, out)

        # rounds: the k-th reading of every sensor; each round is cut into ticks of <= B sensors
        rnd = 0
        order = list(groups)
        while order:
            if len(order) <= self.slots:
                todo = order  # one tick: every sensor gets a slot, order does not matter
            else:  # several ticks: sensors holding a slot first, so fewer are paged
                sos = self.router.slot_of_sensor
                todo = [s for s in order if s in sos] + [s for s in order if s not in sos]
            for start in range(0, len(todo), self.slots):
                chunk = todo[start : start + self.slots]
                self._tick(chunk, [groups[s][rnd] for s in chunk], readings, out)
            rnd += 1
            order = [s for s in order if len(groups[s]) > rnd]
        if self.silence is not None and readings:
            self.silence.observe(table, self._seq_rows, self._seq_ts)
        return out  # type: ignore[return-value]

    def _invalid(self, readings: Sequence[Reading]) -> dict[int, tuple[str, str]]:
        """{index: (reason, detail)} of readings whose values, time stamp or sensor id are out of bounds."""
        bad: dict[int, tuple[str, str]] = {}
        nf = self.n_features
        index = self.table.index
        ok_vals: list[int] = []
        for i, r in enumerate(readings):
            sid = r.sensor_id
            if not (isinstance(sid, str) and sid in index):  # known sensors passed this check already
                why = sensor_id_problem(sid, self.max_sensor_id_bytes)
                if why is not None:
                    bad[i] = ("bad_sensor_id", why)
                    continue
            ts = r.ts_ms
            if not isinstance(ts, (int, np.integer)) or isinstance(ts, bool) or not (TS_MIN_MS <= ts <= TS_MAX_MS):
                bad[i] = ("bad_timestamp", ts_problem(ts) if isinstance(ts, (int, np.integer)) else f"ts {ts!r} is not an integer")
                continue
            v = r.values
            if not isinstance(v, np.ndarray) or v.shape != (nf,) or v.dtype.kind not in "fiu":
                bad[i] = values_problem(v, nf) or ("non_numeric", "values are not a numeric array")
                continue
            ok_vals.append(i)
        if ok_vals:  # one vectorised check of all values
            vals = np.array([readings[i].values for i in ok_vals], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                wrong = ~(np.abs(vals) <= FLOAT32_MAX).all(axis=1)  # NaN compares False
            for k in np.nonzero(wrong)[0].tolist():
                i = ok_vals[k]
                bad[i] = values_problem(readings[i].values, nf) or ("non_finite", "values are not finite")
        return bad

    def _admit(self, new: list[str], groups: dict[str, list[int]], readings: Sequence[Reading], out: list) -> None:
        """Make room for ``new`` sensors within ``max_sensors``: evict idle ones, reject the rest (``no_capacity``)."""
        table = self.table
        need = table.n_rows + len(new) - self.max_sensors
        if need <= 0:
            return
        # the partitions' stream time includes this call's readings: a flood of new sensors that are all
        # refused never moves the table's own times forward, yet it does make the old sensors idle
        now: dict[int, int] = {}
        for idx in groups.values():
            for i in idx:
                r = readings[i]
                if r.ts_ms > now.get(r.partition, NO_TS):
                    now[r.partition] = int(r.ts_ms)
        evicted = self._evict_idle(need, exclude=groups, now=now)
        refused = new[len(new) - (need - evicted):] if need > evicted else []
        for sid in refused:
            for i in groups.pop(sid):
                r = readings[i]
                out[i] = Rejection("no_capacity", f"the worker holds its maximum of {self.max_sensors} sensors "
                                   "and none is idle", sid, r.partition, r.offset)

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
    def _tick(self, chunk: list[str], idx: list[int], readings: Sequence[Reading], out: list) -> None:
        t_start = time.perf_counter()
        table, router, engine = self.table, self.router, self.engine
        c = table.cols
        index = table.index
        sos = router.slot_of_sensor
        n0 = len(chunk)
        rows = np.empty(n0, np.int64)
        slots = np.empty(n0, np.int64)
        fresh_pos: list[int] = []
        for j, sid in enumerate(chunk):
            row = index.get(sid)
            rows[j] = -1 if row is None else row  # a new sensor gets its row once it has a slot
            slot = sos.get(sid)
            if slot is None:
                fresh_pos.append(j)
                slot = -1
            slots[j] = slot
        keep = np.ones(n0, bool)
        out_rows: list[int] = []
        out_slots: list[int] = []
        in_rows: list[int] = []
        in_slots: list[int] = []
        if fresh_pos:
            got = router.acquire_many([chunk[j] for j in fresh_pos], slots[slots >= 0])
            for j, g in zip(fresh_pos, got):
                if g is None:
                    r = readings[idx[j]]
                    out[idx[j]] = Rejection("no_free_slot", f"all {self.slots} slots are taken", r.sensor_id, r.partition, r.offset)
                    keep[j] = False
                    continue
                slot, victim = g
                slots[j] = slot
                if victim is not None:
                    out_rows.append(index[victim])
                    out_slots.append(slot)
                if rows[j] < 0:
                    rows[j] = self._new_sensor(chunk[j], readings[idx[j]].partition)
                in_rows.append(int(rows[j]))
                in_slots.append(slot)
        if out_rows:  # page out before the slots are overwritten
            orow = np.array(out_rows)
            c["state"][orow] = engine.read_state(np.array(out_slots))
            c["slot"][orow] = -1
            self.stats.page_outs += len(out_rows)
        if in_rows:
            irow = np.array(in_rows)
            engine.write_state(np.array(in_slots), c["state"][irow])
            c["slot"][irow] = in_slots
            self.stats.page_ins += len(in_rows)
        if not keep.all():
            rows, slots = rows[keep], slots[keep]
            idx = [i for i, k in zip(idx, keep) if k]
        if len(rows) == 0:
            return
        router.touch_slots(slots)
        batch = [readings[i] for i in idx]
        n = len(batch)
        ts = np.fromiter([r.ts_ms for r in batch], np.int64, n)
        x = np.array([r.values for r in batch], dtype=np.float64)
        if x.shape != (n, self.n_features):
            raise ValueError(f"readings have values of shape {x.shape[1:]}, the model takes ({self.n_features},)")
        if self._seq_rows is not None:  # for the silence tracker: what was applied where
            pos = np.fromiter(idx, np.int64, n)
            self._seq_rows[pos] = rows
            self._seq_ts[pos] = ts

        # sequence boundaries: explicit reset, or a gap longer than max_gap
        count = c["count"][rows]
        gap = (count > 0) & (ts - c["last_ts"][rows] > self.max_gap_ms)
        req = np.fromiter((r.reset for r in batch), bool, n)
        need = gap | req
        events: list = []  # (position in batch, EpisodeEvent)
        if need.any():
            events = [(int(np.nonzero(need)[0][j]), e) for j, e in self.episodes.close(rows[need], ts[need], "reset")]
            self._reset_rows(rows[need], slots[need])
            self.stats.resets_gap += int(gap.sum())
            self.stats.resets_request += int((req & ~gap).sum())
            count = c["count"][rows]

        # scaling: artifact values, or learned online for unseen sensors during warm-up
        trained = c["trained"][rows]
        warm_n = np.where(trained, self.params.warmup, 2 * self.params.warmup)
        learning = (~trained) & (count < self.params.warmup)
        if learning.any():
            lr = rows[learning]
            xl = x[learning]
            k = (count[learning] + 1).astype(np.float64)[:, None]
            mean = c["mean"][lr]
            first = count[learning] == 0
            mean = np.where(first[:, None], xl, mean)
            delta = xl - mean
            mean = mean + delta / k
            m2 = np.where(first[:, None], 0.0, c["m2"][lr]) + delta * (xl - mean)
            std = np.sqrt((m2 + self._global_std**2) / (k + 1.0))
            std = np.maximum(std, self._global_std * _MIN_STD_FRACTION)
            c["mean"][lr], c["m2"][lr], c["std"][lr] = mean, m2, std
            ending = learning & (count + 1 >= self.params.warmup)
            if ending.any():  # scaling freezes now: errors and levels so far were on moving scales
                er = rows[ending]
                c["err_mean"][er] = self.params.prior_mean
                c["err_var"][er] = self.params.prior_var
                c["lvl_mean"][er] = 0.0
                c["lvl_var"][er] = 1.0
        mean = c["mean"][rows]
        std = c["std"][rows]
        xs = np.clip((x - mean) / std, -SCALED_LIMIT, SCALED_LIMIT)  # finite in float32, and its squared error

        # the compiled step over all B slots
        X, M = self._x, self._mask
        X[slots, 0, :] = xs
        M[slots] = True
        expected_all = engine.step(X, M)
        X[slots] = 0.0
        M[slots] = False
        exp_s = expected_all[slots].astype(np.float64)

        fz = feature_errors(xs, exp_s, self.residual_std)
        err = reading_error(fz)
        score, anom, warming, em, ev, es, tail = self._score(rows, x, xs, err, count, warm_n)
        c["err_mean"][rows], c["err_var"][rows], c["err_short"][rows] = em, ev, es
        c["count"][rows] = count + 1
        c["total"][rows] += 1
        c["last_ts"][rows] = ts
        offs = np.fromiter((r.offset for r in batch), np.int64, n)
        c["last_offset"][rows] = np.where(offs >= 0, offs, c["last_offset"][rows])
        pos = c["recent_pos"][rows]
        c["recent"][rows, pos] = x
        c["recent_ts"][rows, pos] = ts
        c["recent_pos"][rows] = (pos + 1) % table.recent
        expected = exp_s * std + mean
        surp = surprise(tail)  # the scorer's tail probability (1 - score without cancellation)
        accepted = self._accepted  # the horizon accepted this reading's deviation as the new normal
        step_events = self.episodes.step(rows, ts, score, surp, anom, accepted, x, expected, fz)
        if step_events:
            self._end_quiet_runs(rows, step_events)
            events += step_events

        st = self.stats
        if len(self._tick_log) < 100_000:  # bounded if nobody drains it
            self._tick_log.append((time.perf_counter() - t_start, n))
        st.ticks += 1
        st.readings += n
        st.anomalies += int(anom.sum())
        thr = self.params.threshold
        # plain Python values in one go: indexing numpy scalars per reading costs more
        for i, r, sc, e, an, wu, ex, sp, z, ac in zip(idx, batch, score.tolist(), err.tolist(), anom.tolist(), warming.tolist(),
                                                     expected, surp.tolist(), fz, accepted.tolist()):
            out[i] = Score(r.sensor_id, r.ts_ms, sc, e, an, thr, wu, r.values, ex, r.partition, r.offset, r.label, sp, z,
                           accepted=ac)
        for p, event in events:  # in position order: a reset's close comes before this reading's open
            sc = out[idx[p]]
            if sc.episodes is None:
                sc.episodes = [event]
            else:
                sc.episodes.append(event)

    def _score(self, rows: np.ndarray, x: np.ndarray, xs: np.ndarray, err: np.ndarray, count: np.ndarray, warm_n: np.ndarray):
        """The scoring lines of a tick (:func:`worker.core.adaptive.score_tick` on the rows' state).

        Returns ``(score, anomaly, warming, err_mean, err_var, err_short, tail)`` with
        ``tail = 1 - score`` computed without cancellation; ``self._accepted`` says which
        readings were accepted as the new normal.
        """
        c = self.table.cols
        st = {k: c[k][rows] for k in adaptive.STATE_COLUMNS}
        ring = self.table.recent
        prev = c["recent"].reshape(-1, self.n_features)[rows * ring + (c["recent_pos"][rows] - 1) % ring]
        score, anom, warming, tail, acc, new = adaptive.score_tick(
            self.params, self.adapt, st, err, xs, x.astype(np.float32), prev, count, warm_n, self._level_on, self._flat_on)
        for k in adaptive.ADAPT_COLUMNS:
            c[k][rows] = new[k]
        self._accepted = acc
        return score, anom, warming, new["err_mean"], new["err_var"], new["err_short"], tail

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
