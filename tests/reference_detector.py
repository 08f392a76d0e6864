"""The per-reading detector as it was before the columnar path (issue 11), kept as the reference
the columnar path is checked against (tests/test_columns.py): its ``process`` loop, input checks,
admission and tick, verbatim, over the current state helpers of :class:`SlotDetector`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from worker.core.attribution import surprise
from worker.core.detector import SlotDetector
from worker.core.limits import FLOAT32_MAX, SCALED_LIMIT, sensor_id_problem, ts_problem, values_problem
from worker.core.readings import TS_MAX_MS, TS_MIN_MS, Reading, Rejection, Score
from worker.core.scorer import feature_errors, reading_error
from worker.state.table import NO_TS

_MIN_STD_FRACTION = 1e-3


class ReferenceDetector(SlotDetector):
    """SlotDetector with the pre-columnar ``process`` (one Python step per reading)."""

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
                # the one change: a bool time stamp got the detail None (which broke its dead-letter headers)
                integer = isinstance(ts, (int, np.integer)) and not isinstance(ts, bool)
                bad[i] = ("bad_timestamp", ts_problem(ts) if integer else f"ts {ts!r} is not an integer")
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

