"""The state table: every known sensor's state as one row of a set of numpy columns.

A sensor's LSTM state lives in its slot while it has one (see :mod:`worker.core.engine`);
the table keeps the copy that is paged out, and the scorer statistics, scaling,
timestamps, offsets and recent readings of every sensor all the time.  Columns are
numpy arrays so that a tick reads and writes all its sensors with one fancy index.

>>> t = StateTable(n_features=1, state_size=4, recent=3)
>>> r = t.add("pump-1", partition=0)
>>> t.row("pump-1") == r, t.n_rows
(True, 1)
"""

from __future__ import annotations

import numpy as np

NO_TS = np.iinfo(np.int64).min
NEVER_TS = np.iinfo(np.int64).max  # a deadline that never comes

# name -> (dtype, trailing shape kind); "S": state_size, "F": features, "RF": recent x F, "R": recent
COLUMNS: dict[str, tuple[str, str]] = {
    "state": ("float32", "S"),  # LSTM state (h, c of each layer), valid when slot == -1 or synced
    "slot": ("int32", ""),  # slot held, or -1
    "partition": ("int32", ""),  # input partition the sensor's readings come from
    "count": ("int64", ""),  # readings since the last reset (warm-up counter)
    "total": ("int64", ""),  # readings ever applied
    "last_ts": ("int64", ""),  # ms of the last reading applied
    "last_offset": ("int64", ""),  # offset of the last reading applied
    "trained": ("bool", ""),  # scaling comes from the artifact
    "mean": ("float64", "F"),  # input scaling
    "std": ("float64", "F"),
    "m2": ("float64", "F"),  # Welford sum of squares while learning scaling online
    "err_mean": ("float64", ""),  # long-run error mean / variance
    "err_var": ("float64", ""),
    "err_short": ("float64", ""),  # short-term (EWMA) error
    "recent": ("float32", "RF"),  # ring of recent readings (raw values)
    "recent_ts": ("int64", "R"),
    "recent_pos": ("int32", ""),  # next write position in the ring
    # issue 9 episodes (worker.core.episodes): the sensor's open episode, if any
    "ep_start_ts": ("int64", ""),  # ms of its first flagged reading; NO_TS: no episode open
    "ep_last_ts": ("int64", ""),  # ms of its last flagged reading
    "ep_quiet": ("int64", ""),  # unflagged readings since then
    "ep_flagged": ("int64", ""),  # flagged readings in the episode
    "ep_peak_score": ("float64", ""),  # the peak (largest surprise) reading ...
    "ep_peak_surprise": ("float64", ""),
    "ep_peak_ts": ("int64", ""),
    "ep_peak_actual": ("float64", "F"),  # ... its values, expected values and per-feature z
    "ep_peak_expected": ("float64", "F"),
    "ep_peak_z": ("float64", "F"),
    # issue 9 adaptive scorer (worker/core/adaptive.py); older checkpoints lack them: COLUMN_DEFAULTS
    "lvl": ("float64", "F"),  # level channel: EWMA of the scaled values
    "lvl_mean": ("float64", "F"),  # its long-run mean / variance
    "lvl_var": ("float64", "F"),
    "move_rate": ("float64", "F"),  # own share of readings that changed each feature
    "still_run": ("int64", "F"),  # readings since each feature last changed
    "adapt_len": ("int64", ""),  # readings of the open run of flags the horizon counts (0 = none)
    "adapt_quiet": ("int64", ""),  # unflagged readings in a row within it
    "adapt_err_mean": ("float64", ""),  # its error mean / variance (what acceptance adopts)
    "adapt_err_var": ("float64", ""),
    # silent sensors (issue 16, worker.core.silence): cadence and last-seen times, kept out of
    # clear_rows so that a reset does not forget how often a sensor reports
    "sil_last_ts": ("int64", ""),  # ms of the sensor's last reading the silence tracker saw
    "sil_stream_ts": ("int64", ""),  # the partition's stream time (newest reading time) just after it
    "cad_n": ("int32", ""),  # inter-arrival intervals learned (the artifact's seed counts as min_intervals)
    "cad_log": ("float64", ""),  # EWMA of log(interval in seconds)
    "cad_dev": ("float64", ""),  # EWMA of |log-interval - cad_log| (spread)
    "sil_due_ts": ("int64", ""),  # stream time after which the sensor is silent (NEVER_TS: cadence unknown)
    "sil_heap_ts": ("int64", ""),  # deadline of its entry in the tracker's heap (transient: not checkpointed)
}

#: columns that only mirror in-memory structures and are rebuilt on import, never checkpointed
TRANSIENT = {"sil_heap_ts"}

#: columns an older checkpoint may lack, and how import fills them (documented in the README):
#: the silence tracker's times start from the sensor's last applied reading, its cadence is unlearned
IMPORT_DEFAULTS = {
    "sil_last_ts": lambda data: data["last_ts"],
    "sil_stream_ts": lambda data: data["last_ts"],
    "cad_n": lambda data: 0,
    "cad_log": lambda data: 0.0,
    "cad_dev": lambda data: 0.0,
    "sil_due_ts": lambda data: NEVER_TS,  # an older checkpoint's sensors are not reported silent before they report again
    "sil_heap_ts": lambda data: NEVER_TS,
}

#: columns an older checkpoint may lack, and the value its sensors get on import (others: 0)
COLUMN_DEFAULTS: dict[str, int | float] = {
    "ep_start_ts": NO_TS,  # no episode open
    **{name: 0 for name in ("ep_last_ts", "ep_quiet", "ep_flagged", "ep_peak_score", "ep_peak_surprise", "ep_peak_ts",
                            "ep_peak_actual", "ep_peak_expected", "ep_peak_z")},
    # adaptive scorer: a restored sensor has no level or movement history (level prior 0 +- 1 scaled, move rate 1/2)
    "lvl_var": 1.0,
    "move_rate": 0.5,
    **{name: 0 for name in ("lvl", "lvl_mean", "still_run", "adapt_len", "adapt_quiet", "adapt_err_mean", "adapt_err_var")},
}


class StateTable:
    """Rows of per-sensor state, addressed by sensor id."""

    def __init__(self, n_features: int, state_size: int, recent: int = 16, capacity: int = 1024) -> None:
        self.n_features = n_features
        self.state_size = state_size
        self.recent = recent
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._cap = 0
        self.cols: dict[str, np.ndarray] = {}
        self._grow(max(capacity, 1))

    # -- layout -----------------------------------------------------------------
    def _shape(self, kind: str, n: int) -> tuple[int, ...]:
        return {
            "": (n,),
            "S": (n, self.state_size),
            "F": (n, self.n_features),
            "RF": (n, self.recent, self.n_features),
            "R": (n, self.recent),
        }[kind]

    def _grow(self, cap: int) -> None:
        for name, (dtype, kind) in COLUMNS.items():
            new = np.zeros(self._shape(kind, cap), dtype=dtype)
            old = self.cols.get(name)
            if old is not None:
                new[: self._cap] = old[: self._cap]
            self.cols[name] = new
        self._cap = cap

    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("cols")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    # -- rows -------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def row(self, sensor_id: str) -> int | None:
        return self.index.get(sensor_id)

    def add(self, sensor_id: str, partition: int = -1) -> int:
        """A new zeroed row for ``sensor_id`` (caller fills in scaling)."""
        if sensor_id in self.index:
            raise KeyError(f"{sensor_id!r} exists")
        r = len(self.ids)
        if r >= self._cap:
            self._grow(self._cap * 2)
        self.ids.append(sensor_id)
        self.index[sensor_id] = r
        self._init_rows(slice(r, r + 1), partition)
        return r

    def add_many(self, sensor_ids: list[str], partition: int = -1) -> np.ndarray:
        """New zeroed rows for sensors not in the table yet; returns their row numbers."""
        start = len(self.ids)
        n = len(sensor_ids)
        if len(set(sensor_ids)) != n or any(s in self.index for s in sensor_ids):
            raise KeyError("add_many: ids repeat or exist already")
        if start + n > self._cap:
            cap = self._cap
            while cap < start + n:
                cap *= 2
            self._grow(cap)
        self.ids.extend(sensor_ids)
        self.index.update(zip(sensor_ids, range(start, start + n)))
        self._init_rows(slice(start, start + n), partition)
        return np.arange(start, start + n)

    def _init_rows(self, rows: slice, partition: int) -> None:
        for col in self.cols.values():
            col[rows] = 0
        c = self.cols
        c["last_ts"][rows] = NO_TS
        c["recent_ts"][rows] = NO_TS
        c["sil_last_ts"][rows] = NO_TS
        c["sil_stream_ts"][rows] = NO_TS
        c["sil_due_ts"][rows] = NEVER_TS
        c["sil_heap_ts"][rows] = NEVER_TS
        c["slot"][rows] = -1
        c["partition"][rows] = partition
        c["last_offset"][rows] = -1
        c["ep_start_ts"][rows] = NO_TS
        c["lvl_var"][rows] = 1.0
        c["move_rate"][rows] = 0.5

    def clear_rows(self, rows: np.ndarray) -> None:
        """Restart rows' sequences: zero state and warm-up, forget time and errors (keeps scaling, offsets)."""
        c = self.cols
        c["state"][rows] = 0.0
        c["count"][rows] = 0
        c["last_ts"][rows] = NO_TS
        c["err_mean"][rows] = 0.0
        c["err_var"][rows] = 0.0
        c["err_short"][rows] = 0.0
        c["recent"][rows] = 0.0
        c["recent_ts"][rows] = NO_TS
        c["recent_pos"][rows] = 0
        for name in ("lvl", "lvl_mean", "still_run", "adapt_len", "adapt_quiet", "adapt_err_mean", "adapt_err_var"):
            c[name][rows] = 0
        c["lvl_var"][rows] = 1.0
        c["move_rate"][rows] = 0.5

    def rows_of_partition(self, partition: int) -> np.ndarray:
        n = self.n_rows
        return np.nonzero(self.cols["partition"][:n] == partition)[0]

    def export_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the columns for ``rows`` plus their ids under ``"sensor_id"``."""
        out = {name: self.cols[name][rows].copy() for name in COLUMNS if name not in TRANSIENT}
        out["sensor_id"] = np.array([self.ids[r] for r in rows], dtype=object)
        return out

    def import_rows(self, data: dict[str, np.ndarray]) -> np.ndarray:
        """Write exported rows back (adding unknown sensors); returns their row numbers."""
        ids = list(data["sensor_id"])
        index = self.index
        rows = np.fromiter((index.get(sid, -1) for sid in ids), np.int64, len(ids))
        new = np.nonzero(rows < 0)[0]
        if len(new):
            rows[new] = self.add_many([ids[i] for i in new])
        for name, (_, kind) in COLUMNS.items():
            want = self._shape(kind, len(ids))
            arr = data.get(name)
            if name in TRANSIENT or (arr is None and name in IMPORT_DEFAULTS):  # issue 16's columns
                arr = IMPORT_DEFAULTS[name](data)
                if np.ndim(arr) == 0:
                    arr = np.full(want, arr, dtype=self.cols[name].dtype)
            elif arr is None and name in COLUMN_DEFAULTS:  # a checkpoint written before the column existed
                arr = np.full(want, COLUMN_DEFAULTS[name], dtype=self.cols[name].dtype)
            elif arr is None:
                raise KeyError(f"column {name} missing")
            if arr.shape != want:
                raise ValueError(f"column {name} has shape {arr.shape}, expected {want}")
            self.cols[name][rows] = arr
        return rows

    def remove_rows(self, rows: np.ndarray) -> None:
        """Forget rows (a revoked partition's sensors, evicted idle sensors).

        The last rows move into the holes (cost proportional to the rows removed, not to
        the table), so row numbers of other sensors may change; use :attr:`index`.

        >>> t = StateTable(n_features=1, state_size=2)
        >>> _ = t.add_many(["a", "b", "c", "d"]); t.cols["total"][:4] = [1, 2, 3, 4]
        >>> t.remove_rows(np.array([0, 2])); t.ids, t.cols["total"][:2].tolist()
        (['d', 'b'], [4, 2])
        """
        n = self.n_rows
        drop = np.unique(np.asarray(rows, dtype=np.int64))
        if len(drop) == 0:
            return
        if drop[0] < 0 or drop[-1] >= n:
            raise IndexError(f"rows {drop.tolist()[:5]}... outside the table of {n}")
        m = n - len(drop)
        holes = drop[drop < m]
        movers = np.setdiff1d(np.arange(m, n, dtype=np.int64), drop, assume_unique=True)
        ids, index = self.ids, self.index
        for r in drop.tolist():
            del index[ids[r]]
        if len(holes):
            for col in self.cols.values():
                col[holes] = col[movers]
            for h, mv in zip(holes.tolist(), movers.tolist()):
                sid = ids[mv]
                ids[h] = sid
                index[sid] = h
        del ids[m:]
        # rows past the end are zeroed when reused (_init_rows)

    def nbytes_per_row(self) -> int:
        return sum(c.itemsize * int(np.prod(c.shape[1:], dtype=np.int64)) for c in self.cols.values())
