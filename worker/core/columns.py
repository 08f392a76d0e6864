"""The core's values as columns: one poll of readings in, one column per score field out.  Pure.

:class:`ReadingColumns` is what the batch codec (:func:`worker.codec.decode_batch`) makes of a
whole poll and what :meth:`SlotDetector.process_columns <worker.core.detector.SlotDetector.process_columns>`
takes; :class:`ScoreColumns` is what it returns, aligned with the input rows: a status per row
(scored, or the index of its rejection reason in :data:`~worker.core.readings.REASONS`) and the
score fields as arrays.  Objects (:class:`~worker.core.readings.Score`,
:class:`~worker.core.readings.Rejection`) are made only at the edges that want them
(:meth:`ScoreColumns.row`, the replay CSV, tests).

>>> cols = ReadingColumns.from_readings([Reading("a", 1000, np.array([1.5]), partition=0, offset=3)], 1)
>>> cols.sensor_id, cols.ts_ms.tolist(), cols.values.tolist(), cols.offset.tolist()
(['a'], [1000], [[1.5]], [3])
>>> cols[0].sensor_id, cols[0].offset
('a', 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.core.limits import ts_problem, values_problem
from worker.core.readings import REASONS, Reading, Rejection, Score

#: status of a scored row in :attr:`ScoreColumns.status`; a rejected row holds its reason's index in REASONS
SCORED = -1
REASON_CODE = {r: k for k, r in enumerate(REASONS)}
_I64 = np.iinfo(np.int64)


@dataclass
class ReadingColumns:
    """Readings as columns (row ``i`` is one reading).

    ``unfit`` lists rows whose time stamp or values could not be held in the arrays (a
    caller handed the core a float time stamp, values of the wrong shape ...): row ->
    (field, reason, detail); the core rejects them in its usual order of checks.  The codec
    never makes such rows.  ``labels`` (optional) travel to the scores (evaluation data).
    """

    sensor_id: list
    ts_ms: np.ndarray  # int64 (n,)
    values: np.ndarray  # float64 (n, F)
    reset: np.ndarray  # bool (n,)
    partition: np.ndarray  # int64 (n,)
    offset: np.ndarray  # int64 (n,)
    labels: list | None = None
    unfit: dict[int, tuple[str, str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sensor_id)

    def __getitem__(self, i: int) -> Reading:
        """Row ``i`` as a :class:`Reading` (for edges and tests; the core never needs it)."""
        return Reading(self.sensor_id[i], int(self.ts_ms[i]), self.values[i], int(self.partition[i]), int(self.offset[i]),
                       bool(self.reset[i]), None if self.labels is None else self.labels[i])

    @classmethod
    def build(cls, sensor_id: list, ts_ms, values, reset=None, partition=-1, offset=-1, labels=None) -> "ReadingColumns":
        """Columns from arrays; ``reset``/``partition``/``offset`` may be scalars (the same for every row)."""
        n = len(sensor_id)
        vals = np.asarray(values, np.float64)
        return cls(list(sensor_id), np.asarray(ts_ms, np.int64).reshape(n),
                   vals.reshape(n, vals.shape[-1] if vals.ndim > 1 else (vals.size // n if n else 0)),
                   np.broadcast_to(np.asarray(False if reset is None else reset, bool), (n,)).copy(),
                   np.broadcast_to(np.asarray(partition, np.int64), (n,)).copy(),
                   np.broadcast_to(np.asarray(offset, np.int64), (n,)).copy(), labels)

    @classmethod
    def from_readings(cls, readings: Sequence[Reading], n_features: int) -> "ReadingColumns":
        """Columns of :class:`Reading` objects (``SlotDetector.process``, ``slotwatch replay``).

        Whatever a Reading holds that a column cannot (a time stamp that is no int64, values
        that are not ``n_features`` numbers) is noted in ``unfit`` with the reason the core gives it.
        """
        n = len(readings)
        ids = [r.sensor_id for r in readings]
        unfit: dict[int, tuple[str, str, str]] = {}
        ts_list = [r.ts_ms for r in readings]
        try:
            ts = np.array(ts_list, np.int64) if all(type(t) is int for t in ts_list) else None
        except OverflowError:
            ts = None
        if ts is None or ts.shape != (n,):
            ts = np.zeros(n, np.int64)
            for i, t in enumerate(ts_list):
                integer = isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                if integer and _I64.min <= t <= _I64.max:
                    ts[i] = t
                elif integer:
                    unfit[i] = ("ts", "bad_timestamp", ts_problem(t))
                else:
                    unfit[i] = ("ts", "bad_timestamp", f"ts {t!r} is not an integer")
        vals = np.zeros((n, n_features), np.float64)
        ok = [i for i, r in enumerate(readings)
              if isinstance(r.values, np.ndarray) and r.values.shape == (n_features,) and r.values.dtype.kind in "fiu"]
        if len(ok) == n:
            if n:
                vals = np.array([r.values for r in readings], np.float64).reshape(n, n_features)
        else:
            if ok:
                vals[ok] = np.array([readings[i].values for i in ok], np.float64)
            good = set(ok)
            for i, r in enumerate(readings):
                if i not in good and i not in unfit:
                    reason, detail = values_problem(r.values, n_features) or ("non_numeric", "values are not a numeric array")
                    unfit[i] = ("values", reason, detail)
        for i, sid in enumerate(ids):
            if type(sid) is not str:  # cannot be a key; "" gets the same reason and detail from the core
                ids[i] = ""
        labels = [r.label for r in readings]
        return cls(ids, ts, vals, np.fromiter((bool(r.reset) for r in readings), bool, n),
                   np.fromiter((r.partition for r in readings), np.int64, n),
                   np.fromiter((r.offset for r in readings), np.int64, n),
                   labels if any(lb is not None for lb in labels) else None, unfit)


@dataclass
class ScoreColumns:
    """The core's verdict on every row of a :class:`ReadingColumns` (``inputs``), as columns.

    ``status`` is :data:`SCORED` or the index of the rejection reason in ``REASONS``
    (``details`` holds the rejected rows' details); the other arrays are meaningful where
    ``status == SCORED``.  ``episodes`` maps a row to the episode events that reading opened
    or closed.  ``threshold`` is the same for every row.
    """

    inputs: ReadingColumns
    status: np.ndarray  # int16 (n,)
    score: np.ndarray  # float64 (n,)
    surprise: np.ndarray
    error: np.ndarray
    is_anomaly: np.ndarray  # bool (n,)
    warming_up: np.ndarray
    accepted: np.ndarray
    expected: np.ndarray  # float64 (n, F)
    feature_z: np.ndarray  # float64 (n, F)
    threshold: float
    details: dict[int, str] = field(default_factory=dict)
    episodes: dict[int, list] = field(default_factory=dict)

    @classmethod
    def empty(cls, inputs: ReadingColumns, n_features: int, threshold: float) -> "ScoreColumns":
        n = len(inputs)
        z = np.zeros(n, np.float64)
        b = np.zeros(n, bool)
        return cls(inputs, np.full(n, SCORED, np.int16), z, z.copy(), z.copy(), b, b.copy(), b.copy(),
                   np.zeros((n, n_features)), np.zeros((n, n_features)), float(threshold))

    def __len__(self) -> int:
        return len(self.status)

    def put(self, pos: np.ndarray, score, error, is_anomaly, warming_up, surprise, accepted, expected, feature_z) -> None:
        """The scores of the rows at ``pos`` (one tick's)."""
        self.score[pos] = score
        self.error[pos] = error
        self.is_anomaly[pos] = is_anomaly
        self.warming_up[pos] = warming_up
        self.surprise[pos] = surprise
        self.accepted[pos] = accepted
        self.expected[pos] = expected
        self.feature_z[pos] = feature_z

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.status[i] = REASON_CODE[reason]
        self.details[i] = detail

    @property
    def scored(self) -> np.ndarray:
        """Bool mask of the scored rows."""
        return self.status == SCORED

    def counts(self) -> dict[str, int]:
        """{"scored": n, reason: n, ...} of this batch (for the metrics)."""
        codes, n = np.unique(self.status, return_counts=True)
        return {("scored" if c == SCORED else REASONS[c]): int(k) for c, k in zip(codes.tolist(), n.tolist())}

    def row(self, i: int, reading: Reading | None = None) -> Score | Rejection:
        """Row ``i`` as today's object: a :class:`Score`, or a :class:`Rejection` (no raw bytes).

        ``reading`` (the object the row was made from, if any) supplies the values and label
        the Score carries, so that ``process`` hands back its callers' own arrays."""
        inp = self.inputs
        code = int(self.status[i])
        sid = inp.sensor_id[i]
        if code != SCORED:
            reason = REASONS[code]
            keep_id = reason not in ("bad_sensor_id", "missing_sensor_id")
            return Rejection(reason, self.details.get(i, ""), sid if keep_id else None, int(inp.partition[i]), int(inp.offset[i]))
        values = inp.values[i] if reading is None else reading.values
        label = (None if inp.labels is None else inp.labels[i]) if reading is None else reading.label
        return Score(sid, int(inp.ts_ms[i]) if reading is None else reading.ts_ms, float(self.score[i]), float(self.error[i]),
                     bool(self.is_anomaly[i]), self.threshold, bool(self.warming_up[i]), values, self.expected[i],
                     int(inp.partition[i]), int(inp.offset[i]), label, float(self.surprise[i]), self.feature_z[i],
                     self.episodes.get(i), bool(self.accepted[i]))

    def to_objects(self, readings: Sequence[Reading] | None = None) -> list[Score | Rejection]:
        """Every row as an object (``readings``: the objects the rows were made from, if any)."""
        inp = self.inputs
        out: list = [None] * len(self)
        ok = self.status == SCORED
        for i in np.nonzero(~ok)[0].tolist():
            out[i] = self.row(i)
        idx = np.nonzero(ok)[0]
        if not len(idx):
            return out
        # plain Python values in one go: indexing numpy scalars per row costs more
        cols = [a[idx].tolist() for a in (self.score, self.error, self.is_anomaly, self.warming_up, self.surprise,
                                          self.accepted, inp.partition, inp.offset)]
        exp, fz, eps, thr, sids = self.expected, self.feature_z, self.episodes, self.threshold, inp.sensor_id
        if readings is None:
            vals, ts = inp.values, inp.ts_ms[idx].tolist()
            labels = inp.labels
            for k, (i, sc, e, an, wu, sp, ac, p, o) in enumerate(zip(idx.tolist(), *cols)):
                out[i] = Score(sids[i], ts[k], sc, e, an, thr, wu, vals[i], exp[i], p, o, None if labels is None else labels[i],
                               sp, fz[i], eps.get(i), ac)
        else:
            for i, sc, e, an, wu, sp, ac, p, o in zip(idx.tolist(), *cols):
                r = readings[i]
                out[i] = Score(r.sensor_id, r.ts_ms, sc, e, an, thr, wu, r.values, exp[i], p, o, r.label, sp, fz[i],
                               eps.get(i), ac)
        return out
