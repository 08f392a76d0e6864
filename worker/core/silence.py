"""Silent sensors: a sensor that stops reporting is an alert, not a silence.  Pure (no I/O).

Every sensor's cadence is learned online in *stream time* (the readings' own time stamps):
an EWMA of the log of its inter-arrival intervals (the typical interval is its exponential,
a geometric mean) and an EWMA of the absolute deviation from it (the spread).  A sensor the
artifact knows starts from the typical interval of its training data.

A sensor is *silent* when its partition's stream time (the newest reading time seen on the
partition) has moved past the stream time of the sensor's last reading by more than::

    limit = max(floor_s, multiple x typical x exp(spread_weight x spread))

so a regular sensor is reported after ``multiple`` intervals, and an irregular one gets
room in proportion to its own jitter.  A sensor with fewer than ``min_intervals`` learned
intervals (and no seed) is never reported.  Stream time, not the wall clock: ``slotwatch
replay`` of a file gives the same episodes as the stream, and so does a replay after a
crash.  The result does not depend on how the stream is cut into polls either: a
sensor's deadline is compared with the stream time *at each position* of its
partition's sequence (a running maximum), not at the end of a batch.

Cost: the sensors with a reading in a batch are updated with numpy (per reading), the
others are looked at only when their deadline comes: a heap of deadlines per partition
with lazy invalidation (one live entry per sensor, re-pushed when it turns out early).

State: the per-sensor part lives in state-table columns (``sil_*``, ``cad_*``, see
:mod:`worker.state.table`) and is checkpointed with the partition; the partition's
stream time and the last-seen records of evicted sensors go into the checkpoint's meta
(:meth:`SilenceTracker.export_meta`).  Which sensors are silent is not stored: it is
``stream time > deadline``, rebuilt exactly on restore.

Episodes: ``open`` when the deadline passes (``ts`` = the deadline, ``start_ts`` = the
last reading), ``close`` with reason ``returned`` at the sensor's next reading (duration
and an estimate of the readings missed), or ``evicted`` when the bounded last-seen table
of evicted sensors forgets it.

River style, one sensor at a time (a tracker with its own small table):

>>> t = SilenceTracker(multiple=3, floor_s=0, min_intervals=2)
>>> for k in range(4):                    # "a" and "b" report every 60 s
...     _ = t.learn_one("a", 60_000 * k); _ = t.learn_one("b", 60_000 * k)
>>> round(t.expected_interval_s("a"), 6)
60.0
>>> [len(t.learn_one("b", 60_000 * k)) for k in range(4, 7)]   # "a" stops, "b" goes on: 3 x 60 s is not more
[0, 0, 0]
>>> t.learn_one("b", 420_000)                                  # ... than 3 x 60 s, 4 minutes are
[SilenceEvent(event='open', sensor_id='a', partition=-1, start_ts_ms=180000, ts_ms=360000, expected_interval_s=60.0, readings_missed=None, close_reason=None)]
>>> t.score_one("a") > 1.0, t.silent_count
(True, 1)
>>> ev = t.learn_one("a", 600_000)[0]      # back after 7 minutes, 6 readings missed
>>> ev.event, ev.close_reason, ev.duration_s, ev.readings_missed
('close', 'returned', 420.0, 6)
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from worker.core.silence_events import SilenceEvent, SilenceStats
from worker.core.silence_state import SEED_SPREAD, SilenceStateMixin
from worker.state.table import NEVER_TS, NO_TS, StateTable

__all__ = ["SEED_SPREAD", "SilenceEvent", "SilenceStats", "SilenceTracker", "seeds_from_manifest", "tracker_from"]

#: weight of a new interval in the cadence EWMAs (about the last 20 intervals count); the
#: first intervals are averaged plainly (weight 1/n) so that a new sensor learns fast
ALPHA = 0.05
#: a log-interval further than this from the typical one (in log units: CLIP_MIN + CLIP_K x
#: spread) is clipped before it is learned, so one odd gap does not move the cadence much
CLIP_MIN = 0.5
CLIP_K = 3.0


class SilenceTracker(SilenceStateMixin):
    """Per-sensor cadence and silence episodes over a :class:`~worker.state.table.StateTable`.

    The detector calls :meth:`observe` once per batch with the rows and times of the
    readings it applied (in input order); :meth:`drain` hands the episode events to the
    edges.  :meth:`learn_one` / :meth:`score_one` are the one-reading form (own table).
    Deadline heaps, evicted sensors' last-seen records and checkpoints: :mod:`worker.core.silence_state`.
    """

    def __init__(
        self,
        multiple: float = 5.0,
        floor_s: float = 60.0,
        spread_weight: float = 2.0,
        min_intervals: int = 3,
        last_seen_size: int = 100_000,
        seeds: dict[str, float] | None = None,
        alpha: float = ALPHA,
    ) -> None:
        if multiple <= 1 or floor_s < 0 or min_intervals < 1 or last_seen_size < 0:
            raise ValueError("need multiple > 1, floor_s >= 0, min_intervals >= 1, last_seen_size >= 0")
        self.multiple = float(multiple)
        self.floor_s = float(floor_s)
        self.spread_weight = float(spread_weight)
        self.min_intervals = int(min_intervals)
        self.last_seen_size = int(last_seen_size)
        self.alpha = float(alpha)
        self.seeds = {str(k): float(v) for k, v in (seeds or {}).items() if v and float(v) > 0}
        self.stream: dict[int, int] = {}  # partition -> newest reading time seen on it
        self.heaps: dict[int, list[tuple[int, str]]] = {}  # partition -> heap of (deadline, sensor id)
        self.open: dict[int, set[str]] = {}  # partition -> sensors in an open silent episode
        self.last_seen: OrderedDict[str, list] = OrderedDict()  # evicted sensors (bounded), oldest first
        self.events: list[SilenceEvent] = []
        self.stats = SilenceStats()
        self._own: StateTable | None = None  # learn_one's table

    # ------------------------------------------------------------------ limits
    def _due(self, stream_ts: np.ndarray, n: np.ndarray, lg: np.ndarray, dev: np.ndarray) -> np.ndarray:
        """Deadlines (ms of stream time) of sensors last seen at ``stream_ts``; NEVER_TS while unknown."""
        limit_s = np.maximum(self.floor_s, self.multiple * np.exp(lg + self.spread_weight * dev))
        limit_ms = np.minimum(np.ceil(limit_s * 1000.0 - 1e-6), 1e15).astype(np.int64)  # exp(log(x)) may be x + 1 ulp
        return np.where((n >= self.min_intervals) & (stream_ts != NO_TS), stream_ts + limit_ms, NEVER_TS)

    @property
    def silent_count(self) -> int:
        """Sensors in an open silent episode (evicted ones included)."""
        return sum(len(s) for s in self.open.values())

    def drain(self) -> list[SilenceEvent]:
        """The episode events since the last call, in stream order."""
        ev, self.events = self.events, []
        return ev

    # ------------------------------------------------------------------ one batch
    def observe(self, table: StateTable, rows: np.ndarray, ts: np.ndarray) -> None:
        """Readings applied in this batch, in input order: their state-table rows (< 0: not
        applied, ignored) and times.  Updates cadences and emits the episodes due."""
        rows = np.asarray(rows, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        ok = rows >= 0
        if not ok.all():
            rows, ts = rows[ok], ts[ok]
        if len(rows) == 0:
            return
        parts = table.cols["partition"][rows]
        p0 = parts[0]
        if (parts == p0).all():
            self._observe_partition(table, int(p0), rows, ts)
            return
        for p in np.unique(parts).tolist():
            m = parts == p
            self._observe_partition(table, int(p), rows[m], ts[m])

    def _observe_partition(self, table: StateTable, p: int, rows: np.ndarray, ts: np.ndarray) -> None:
        c = table.cols
        n = len(rows)
        s0 = self.stream.get(p, NO_TS)
        runmax = np.maximum(np.maximum.accumulate(ts), s0)  # stream time just after each reading
        prevmax = np.empty(n, np.int64)  # ... and just before it
        prevmax[0] = s0
        prevmax[1:] = runmax[:-1]
        s_end = int(runmax[-1])
        opened_set = self.open.setdefault(p, set())
        found: list[tuple[int, int, SilenceEvent]] = []  # (position, 0 open / 1 close, event)

        # rounds: the k-th reading of every sensor in this batch (a sensor's readings in order)
        order = np.argsort(rows, kind="stable")
        rs = rows[order]
        first_of = np.empty(n, bool)
        first_of[0] = True
        np.not_equal(rs[1:], rs[:-1], out=first_of[1:])
        starts = np.flatnonzero(first_of)
        if len(starts) == n:
            rounds = [np.arange(n)]
            last_pos = np.arange(n)
        else:
            occ = np.empty(n, np.int64)
            occ[order] = np.arange(n) - starts[np.cumsum(first_of) - 1]
            rounds = [np.flatnonzero(occ == k) for k in range(int(occ.max()) + 1)]
            last_pos = order[np.r_[starts[1:] - 1, n - 1]]

        for k, pos in enumerate(rounds):
            r = rows[pos]
            if k == 0:
                self._first_sight(table, r)
            t = ts[pos]
            last = c["sil_last_ts"][r]
            due = c["sil_due_ts"][r]
            pm = prevmax[pos]
            silent = (due != NEVER_TS) & (pm > due)  # the stream passed its deadline before this reading
            if silent.any():
                for j in np.flatnonzero(silent).tolist():
                    row = int(r[j])
                    sid = table.ids[row]
                    d, start = int(due[j]), int(last[j])
                    typical = math.exp(float(c["cad_log"][row]))
                    if not (k == 0 and s0 > d):  # not opened in an earlier batch: open it now
                        at = int(np.searchsorted(runmax, d, side="right"))
                        found.append((at, 0, SilenceEvent("open", sid, p, start, d, round(typical, 3))))
                    opened_set.discard(sid)
                    tj = int(t[j])
                    missed = max(0, int(round((tj - start) / 1000.0 / typical)) - 1)
                    found.append((int(pos[j]), 1, SilenceEvent("close", sid, p, start, tj, round(typical, 3), missed, "returned")))
            # learn the interval (not one that was a silence)
            cn = c["cad_n"][r]
            lg = c["cad_log"][r]
            dv = c["cad_dev"][r]
            dt = t - last
            learn = (last != NO_TS) & (dt > 0) & ~silent
            if learn.any():
                lx = np.log(np.where(learn, dt, 1000).astype(np.float64) / 1000.0)
                first = cn == 0
                width = CLIP_MIN + CLIP_K * dv
                e = np.clip(lx - lg, -width, width)
                a = np.maximum(self.alpha, 1.0 / (cn + 1.0))
                lg2 = np.where(first, lx, lg + a * e)
                dv2 = np.where(first, 0.0, dv + a * (np.abs(e) - dv))
                lg = np.where(learn, lg2, lg)
                dv = np.where(learn, dv2, dv)
                cn = cn + learn
                c["cad_log"][r], c["cad_dev"][r], c["cad_n"][r] = lg, dv, cn
            sm = runmax[pos]
            c["sil_last_ts"][r] = t
            c["sil_stream_ts"][r] = sm
            c["sil_due_ts"][r] = self._due(sm, cn, lg, dv)

        # after their last reading here: due already (opened inside the batch), or into the heap;
        # then the others, only those whose deadline the stream has passed
        self._arm(table, p, rows[last_pos], s_end, runmax, opened_set, found)
        self._pop_due(table, p, s_end, runmax, opened_set, found)
        self.stream[p] = s_end
        if found:
            found.sort(key=lambda f: (f[0], f[1], f[2].sensor_id))
            for _, kind, ev in found:
                self.events.append(ev)
                if kind == 0:
                    self.stats.opened += 1
                else:
                    self.stats.closed += 1

    # ------------------------------------------------------------------ one reading (River style)
    def _table(self) -> StateTable:
        if self._own is None:
            self._own = StateTable(n_features=1, state_size=1, recent=1)
        return self._own

    def learn_one(self, sensor_id: str, ts_ms: int, partition: int = -1) -> list[SilenceEvent]:
        """One reading through the tracker's own table; returns the episode events it caused."""
        t = self._table()
        row = t.index.get(sensor_id)
        if row is None:
            row = t.add(sensor_id, partition)
        self.observe(t, np.array([row]), np.array([int(ts_ms)]))
        return self.drain()

    def score_one(self, sensor_id: str) -> float:
        """How far the sensor is into its limit: stream time since its last reading over the
        limit (> 1: silent); 0 while its cadence is unknown."""
        t = self._table()
        row = t.index[sensor_id]
        c = t.cols
        due, st = int(c["sil_due_ts"][row]), int(c["sil_stream_ts"][row])
        if due == NEVER_TS:
            return 0.0
        return (self.stream.get(int(c["partition"][row]), st) - st) / max(due - st, 1)

    def expected_interval_s(self, sensor_id: str) -> float:
        """The typical interval learned for a sensor of the own table (seconds)."""
        t = self._table()
        return math.exp(float(t.cols["cad_log"][t.index[sensor_id]]))


def seeds_from_manifest(training: dict) -> dict[str, float]:
    """Per-sensor typical intervals (seconds) from an artifact's training summary, if it has them."""
    got = training.get("typical_interval_s") if isinstance(training, dict) else None
    return {str(k): float(v) for k, v in got.items()} if isinstance(got, dict) else {}


def tracker_from(cfg, training: dict | None = None) -> SilenceTracker | None:
    """A tracker from a :class:`worker.settings.SilenceSettings`-like object (None when disabled)."""
    if not getattr(cfg, "enabled", True):
        return None
    return SilenceTracker(
        multiple=cfg.multiple,
        floor_s=cfg.floor_s,
        spread_weight=cfg.spread_weight,
        min_intervals=cfg.min_intervals,
        last_seen_size=cfg.last_seen_size,
        seeds=seeds_from_manifest(training or {}),
    )
