"""What a batch of readings becomes before any state changes: rejections, and the ticks to run.  Pure.

:func:`check` refuses readings whose sensor id, time stamp or values are out of bounds (in
that order of precedence, :mod:`worker.core.limits`); :func:`sequence` refuses readings that
are ``late`` or on the ``wrong_partition`` and groups the rest per sensor, in order of each
sensor's first accepted reading; :func:`rounds` cuts the groups into rounds (the k-th
reading of every sensor).  Everything is vectorised over the batch; only a sensor whose
readings in the batch are out of order, reset or change partition is walked reading by
reading, with the same rule.

>>> from worker.core.columns import ReadingColumns, ScoreColumns
>>> cols = ReadingColumns.build(["a", "b", "a", "a"], [10, 5, 30, 20], [[0.0]] * 4, partition=0)
>>> out = ScoreColumns.empty(cols, 1, 0.99)
>>> g = sequence(cols, np.ones(4, bool), {}, np.zeros(0, np.int64), np.zeros(0, np.int32), out)
>>> g.sensors, [p.tolist() for p in g.positions], out.details
(['a', 'b'], [[0, 2], [1]], {3: 'ts 20 is older than the last reading applied (30)'})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.core.columns import SCORED, ReadingColumns, ScoreColumns
from worker.core.limits import FLOAT32_MAX, sensor_id_problem, ts_problem, values_problem
from worker.core.readings import TS_MAX_MS, TS_MIN_MS
from worker.state.table import NO_TS


def check(cols: ReadingColumns, index: dict, n_features: int, max_sensor_id_bytes: int, out: ScoreColumns) -> np.ndarray:
    """Reject (in ``out``) the rows whose sensor id, time stamp or values are out of bounds; returns the mask of the rest.

    A sensor already in ``index`` passed the sensor id check when it was added."""
    n = len(cols)
    reason = np.zeros(n, np.int8)  # 0 fine, 1 values, 2 ts, 3 sensor id: the highest wins
    ids = cols.sensor_id
    if n:
        vals = cols.values
        with np.errstate(invalid="ignore"):
            wrong = ~(np.abs(vals) <= FLOAT32_MAX).all(axis=1)  # NaN compares False
        reason[wrong] = 1
        ts = cols.ts_ms
        reason[(ts < TS_MIN_MS) | (ts > TS_MAX_MS)] = 2
    for i, (field, _, _) in cols.unfit.items():
        reason[i] = max(reason[i], 2 if field == "ts" else 1)
    bad_id: dict[str, str] = {}
    for sid in set(ids).difference(index):  # once per distinct new sensor
        why = sensor_id_problem(sid, max_sensor_id_bytes)
        if why is not None:
            bad_id[sid] = why
    if bad_id:
        for i, sid in enumerate(ids):
            if sid in bad_id:
                reason[i] = 3
    if not reason.any():
        return np.ones(n, bool)
    for i in np.nonzero(reason)[0].tolist():
        r = int(reason[i])
        unfit = cols.unfit.get(i)
        if r == 3:
            out.reject(i, "bad_sensor_id", bad_id[ids[i]])
        elif r == 2:
            if unfit is not None and unfit[0] == "ts":
                out.reject(i, unfit[1], unfit[2])
            else:
                out.reject(i, "bad_timestamp", ts_problem(int(cols.ts_ms[i])))
        elif unfit is not None:
            out.reject(i, unfit[1], unfit[2])
        else:
            out.reject(i, *(values_problem(cols.values[i], n_features) or ("non_finite", "values are not finite")))
    return reason == 0


@dataclass
class Groups:
    """The accepted readings of a batch per sensor, sensors in order of their first accepted reading.

    ``flat`` holds the rows of the batch sensor after sensor (each sensor's in arrival order);
    sensor ``g``'s are ``flat[starts[g] : starts[g] + counts[g]]``."""

    sensors: list  # sensor ids
    rows: np.ndarray  # per sensor: its table row, or -1 (not in the table yet)
    flat: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @property
    def positions(self) -> list[np.ndarray]:
        return [self.flat[a : a + n] for a, n in zip(self.starts.tolist(), self.counts.tolist())]

    def drop(self, keep: np.ndarray) -> None:
        """Keep only the sensors where ``keep``."""
        self.sensors = [s for s, k in zip(self.sensors, keep.tolist()) if k]
        self.rows = self.rows[keep]
        self.flat, self.starts, self.counts = _regroup(self.flat, self.starts, self.counts, np.nonzero(keep)[0])


def _regroup(flat: np.ndarray, starts: np.ndarray, counts: np.ndarray, order: np.ndarray):
    """The segments ``order`` of ``flat`` (given by ``starts``/``counts``), one after the other."""
    cnt = counts[order]
    new_starts = np.zeros(len(order), np.int64)
    if len(order) > 1:
        new_starts[1:] = np.cumsum(cnt)[:-1]
    idx = np.repeat(starts[order] - new_starts, cnt) + np.arange(int(cnt.sum()))
    return flat[idx], new_starts, cnt


def sequence(cols: ReadingColumns, ok: np.ndarray, index: dict, last_ts: np.ndarray, part_col: np.ndarray,
             out: ScoreColumns) -> Groups:
    """Reject ``late`` and ``wrong_partition`` readings among the ``ok`` rows; group the rest per sensor.

    A reading is late when it is older than the last reading accepted for its sensor (in the
    table, or earlier in the batch) and asks for no reset; a sensor's partition is that of
    its table row, or of its first accepted reading with a partition."""
    ids = cols.sensor_id
    pos = np.nonzero(ok)[0]
    ids_ok = ids if len(pos) == len(ids) else [ids[i] for i in pos.tolist()]
    code_of = dict.fromkeys(ids_ok)  # distinct sensors in order of first appearance
    for k, s in enumerate(code_of):
        code_of[s] = k
    codes = np.fromiter(map(code_of.__getitem__, ids_ok), np.int64, len(pos))
    sensors = list(code_of)
    g = len(sensors)
    rows = np.fromiter(map(index.get, sensors, [-1] * g), np.int64, g)
    known = rows >= 0
    prev_ts = np.full(g, NO_TS, np.int64)
    own = np.full(g, -1, np.int64)
    prev_ts[known] = last_ts[rows[known]]
    own[known] = part_col[rows[known]]
    order = np.argsort(codes, kind="stable")
    p = pos[order]
    c = codes[order]
    ts, part, rst = cols.ts_ms[p], cols.partition[p], cols.reset[p]
    first = np.ones(len(p), bool)
    first[1:] = c[1:] != c[:-1]
    # a sensor is simple when its readings are in order from its last one, on one partition, without resets
    hard = rst | (first & (ts < prev_ts[c]))
    hard[1:] |= ~first[1:] & ((ts[1:] < ts[:-1]) | (part[1:] != part[:-1]))
    hard |= first & (own[c] >= 0) & (part >= 0) & (part != own[c])
    if not hard.any():  # every reading accepted; groups in order of first appearance
        starts = np.nonzero(first)[0]
        return Groups(sensors, rows, p, starts, np.diff(np.append(starts, len(p))))
    accept = np.ones(len(p), bool)
    bad = np.zeros(g, bool)
    bad[c[hard]] = True
    walk = bad[c]
    accept[walk] = False
    for k in np.nonzero(walk)[0][np.argsort(p[walk], kind="stable")].tolist():  # in arrival order
        accept[k] = _one(out, int(p[k]), sensors[c[k]], int(ts[k]), int(part[k]), bool(rst[k]), prev_ts, own, int(c[k]))
    # groups in order of their first accepted reading
    pa, ca = p[accept], c[accept]
    kept, starts = np.unique(ca, return_index=True)  # ca is sorted: starts are each group's first accepted reading
    by_first = np.argsort(pa[starts], kind="stable")
    flat, starts, counts = _regroup(pa, starts, np.diff(np.append(starts, len(pa))), by_first)
    return Groups([sensors[k] for k in kept[by_first].tolist()], rows[kept[by_first]], flat, starts, counts)


def _one(out: ScoreColumns, i: int, sid: str, ts: int, part: int, reset: bool, prev_ts: np.ndarray, own: np.ndarray,
         g: int) -> bool:
    """The rule for one reading of a sensor walked reading by reading (``prev_ts``/``own`` per sensor, updated)."""
    o = int(own[g])
    if o >= 0 and part >= 0 and part != o:
        out.reject(i, "wrong_partition", f"sensor {sid!r} belongs to partition {o}, not {part} (key its readings by sensor id)")
        return False
    if ts < prev_ts[g] and not reset:
        out.reject(i, "late", f"ts {ts} is older than the last reading applied ({int(prev_ts[g])})")
        return False
    prev_ts[g] = ts
    own[g] = o if o >= 0 else part
    return True


def rounds(groups: Groups):
    """``(k, sensor indices, positions)`` of every round: the k-th reading of every sensor that has one, in group order."""
    counts, starts, flat = groups.counts, groups.starts, groups.flat
    k = 0
    live = np.arange(len(counts))
    while len(live):
        yield k, live, flat[starts[live] + k]
        k += 1
        live = live[counts[live] > k]


def newest_per_partition(cols: ReadingColumns, groups: Groups) -> dict[int, int]:
    """partition -> newest time stamp among the grouped readings (the stream time they bring)."""
    if not len(groups.flat):
        return {}
    p = groups.flat
    parts, ts = cols.partition[p], cols.ts_ms[p]
    uniq, inv = np.unique(parts, return_inverse=True)
    best = np.full(len(uniq), NO_TS, np.int64)
    np.maximum.at(best, inv, ts)
    return dict(zip(uniq.tolist(), best.tolist()))


__all__ = ["SCORED", "Groups", "check", "newest_per_partition", "rounds", "sequence"]
