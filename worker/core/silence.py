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

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from worker.state.table import NEVER_TS, NO_TS, StateTable

#: weight of a new interval in the cadence EWMAs (about the last 20 intervals count); the
#: first intervals are averaged plainly (weight 1/n) so that a new sensor learns fast
ALPHA = 0.05
#: a log-interval further than this from the typical one (in log units: CLIP_MIN + CLIP_K x
#: spread) is clipped before it is learned, so one odd gap does not move the cadence much
CLIP_MIN = 0.5
CLIP_K = 3.0
#: the spread given to a sensor seeded from training data (log units)
SEED_SPREAD = 0.1


@dataclass(frozen=True, slots=True)
class SilenceEvent:
    """An episode message to publish: a sensor went silent (``open``) or came back (``close``)."""

    event: str  # "open" | "close"
    sensor_id: str
    partition: int
    start_ts_ms: int  # the sensor's last reading before the silence
    ts_ms: int  # open: the stream time it was due by; close: its returning reading (or when forgotten)
    expected_interval_s: float
    readings_missed: int | None = None  # close: an estimate from the typical interval
    close_reason: str | None = None  # close: "returned" | "evicted"

    @property
    def episode_id(self) -> str:
        return f"{self.sensor_id}@{self.start_ts_ms}"

    @property
    def duration_s(self) -> float:
        return (self.ts_ms - self.start_ts_ms) / 1000.0


@dataclass
class SilenceStats:
    """Counters the edges turn into metrics (by kind, never per sensor)."""

    opened: int = 0
    closed: int = 0
    forgotten: int = 0  # evicted sensors dropped from the full last-seen table


# last-seen record of an evicted sensor: partition, last ts, stream ts, due, n, log, dev, heap deadline
_P, _LAST, _STREAM, _DUE, _N, _LOG, _DEV, _HEAP = range(8)


class SilenceTracker:
    """Per-sensor cadence and silence episodes over a :class:`~worker.state.table.StateTable`.

    The detector calls :meth:`observe` once per batch with the rows and times of the
    readings it applied (in input order); :meth:`drain` hands the episode events to the
    edges.  :meth:`learn_one` / :meth:`score_one` are the one-reading form (own table).
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

        # after their last reading here: due already (opened inside the batch), or into the heap
        r = rows[last_pos]
        due = c["sil_due_ts"][r]
        heap = self.heaps.setdefault(p, [])
        hd = c["sil_heap_ts"][r]
        late = (due != NEVER_TS) & (due < s_end)
        need = (due != NEVER_TS) & ~late & (hd > due)  # no live heap entry at or before the deadline
        if late.any():
            for j in np.flatnonzero(late).tolist():
                row = int(r[j])
                sid = table.ids[row]
                d = int(due[j])
                at = int(np.searchsorted(runmax, d, side="right"))
                typical = round(math.exp(float(c["cad_log"][row])), 3)
                found.append((at, 0, SilenceEvent("open", sid, p, int(c["sil_last_ts"][row]), d, typical)))
                opened_set.add(sid)
        if need.any():
            for j in np.flatnonzero(need).tolist():
                row = int(r[j])
                heapq.heappush(heap, (int(due[j]), table.ids[row]))
            c["sil_heap_ts"][r[need]] = due[need]

        # the others: only those whose deadline the stream has passed (lazy invalidation)
        index = table.index
        while heap and heap[0][0] < s_end:
            d, sid = heapq.heappop(heap)
            row = index.get(sid)
            if row is None:  # evicted: its last-seen record
                rec = self.last_seen.get(sid)
                if rec is None or rec[_HEAP] != d or rec[_P] != p:
                    continue
                rec[_HEAP] = NEVER_TS
                due_now, last_now, lg_now = rec[_DUE], rec[_LAST], rec[_LOG]
                def rearm(x, rec=rec):
                    rec[_HEAP] = x
            else:
                if int(c["sil_heap_ts"][row]) != d or int(c["partition"][row]) != p:
                    continue  # stale entry
                c["sil_heap_ts"][row] = NEVER_TS
                due_now, last_now, lg_now = int(c["sil_due_ts"][row]), int(c["sil_last_ts"][row]), float(c["cad_log"][row])
                def rearm(x, row=row):
                    c["sil_heap_ts"][row] = x
            if due_now == NEVER_TS or sid in opened_set:
                continue
            if due_now < s_end:
                at = int(np.searchsorted(runmax, due_now, side="right"))
                found.append((at, 0, SilenceEvent("open", sid, p, last_now, due_now, round(math.exp(lg_now), 3))))
                opened_set.add(sid)
            else:  # the entry was early (the sensor reported since): wait for the real deadline
                heapq.heappush(heap, (due_now, sid))
                rearm(due_now)

        self.stream[p] = s_end
        if found:
            found.sort(key=lambda f: (f[0], f[1], f[2].sensor_id))
            for _, kind, ev in found:
                self.events.append(ev)
                if kind == 0:
                    self.stats.opened += 1
                else:
                    self.stats.closed += 1

    def _first_sight(self, table: StateTable, r: np.ndarray) -> None:
        """Sensors new to the table: back from the last-seen table, or seeded from training."""
        c = table.cols
        new = c["sil_last_ts"][r] == NO_TS
        if not new.any() or not (self.last_seen or self.seeds):
            return
        for row in r[new & (c["cad_n"][r] == 0)].tolist():
            sid = table.ids[row]
            rec = self.last_seen.pop(sid, None)
            if rec is not None:
                c["sil_last_ts"][row], c["sil_stream_ts"][row], c["sil_due_ts"][row] = rec[_LAST], rec[_STREAM], rec[_DUE]
                c["cad_n"][row], c["cad_log"][row], c["cad_dev"][row] = rec[_N], rec[_LOG], rec[_DEV]
                c["sil_heap_ts"][row] = rec[_HEAP]
                continue
            seed = self.seeds.get(sid)
            if seed is not None:
                c["cad_n"][row] = self.min_intervals
                c["cad_log"][row] = math.log(seed)
                c["cad_dev"][row] = SEED_SPREAD

    # ------------------------------------------------------------------ evictions
    def evicted(self, table: StateTable, rows: np.ndarray) -> None:
        """Rows about to be dropped from the state table (sensor cap, idle eviction): keep their
        last-seen record, so that a silent one stays silent and a quiet one can still go silent.
        The table is bounded: the oldest records are forgotten first (an open episode closes
        with reason ``evicted``)."""
        c = table.cols
        for row in np.asarray(rows, dtype=np.int64).tolist():
            sid = table.ids[row]
            if int(c["sil_last_ts"][row]) == NO_TS:
                continue
            self.last_seen[sid] = [int(c["partition"][row]), int(c["sil_last_ts"][row]), int(c["sil_stream_ts"][row]),
                                   int(c["sil_due_ts"][row]), int(c["cad_n"][row]), float(c["cad_log"][row]),
                                   float(c["cad_dev"][row]), int(c["sil_heap_ts"][row])]
            self.last_seen.move_to_end(sid)
        while len(self.last_seen) > self.last_seen_size:
            sid, rec = self.last_seen.popitem(last=False)
            self.stats.forgotten += 1
            opened = self.open.get(rec[_P])
            if opened is not None and sid in opened:
                opened.discard(sid)
                at = max(self.stream.get(rec[_P], rec[_STREAM]), rec[_DUE])
                self.events.append(SilenceEvent("close", sid, rec[_P], rec[_LAST], at, round(math.exp(rec[_LOG]), 3),
                                                None, "evicted"))
                self.stats.closed += 1

    # ------------------------------------------------------------------ partitions (checkpoints)
    def export_meta(self, partition: int) -> dict:
        """What the checkpoint of ``partition`` needs besides the table columns (JSON)."""
        p = int(partition)
        seen = [[sid, *rec[_LAST:_HEAP]] for sid, rec in self.last_seen.items() if rec[_P] == p]
        return {"stream_ts": int(self.stream.get(p, NO_TS)), "last_seen": seen}

    def restore(self, table: StateTable, partition: int, meta: dict | None) -> None:
        """Rebuild a partition's heap, stream time and open episodes after its rows were imported."""
        p = int(partition)
        self.drop_partition(p)
        c = table.cols
        rows = table.rows_of_partition(p)
        meta = meta or {}
        stream = int(meta.get("stream_ts", NO_TS))
        if stream == NO_TS and len(rows):  # an older checkpoint: the newest time any of its sensors saw
            stream = int(c["sil_stream_ts"][rows].max())
        self.stream[p] = stream
        for sid, last, st, due, cn, lg, dv in meta.get("last_seen", []):
            if sid not in table.index:
                self.last_seen[str(sid)] = [p, int(last), int(st), int(due), int(cn), float(lg), float(dv), NEVER_TS]
        opened = self.open.setdefault(p, set())
        heap: list[tuple[int, str]] = []
        due = c["sil_due_ts"][rows]
        c["sil_heap_ts"][rows] = NEVER_TS
        live = due != NEVER_TS
        ids = table.ids
        for row, d in zip(rows[live].tolist(), due[live].tolist()):
            if stream > d:
                opened.add(ids[row])
            else:
                heap.append((d, ids[row]))
                c["sil_heap_ts"][row] = d
        for sid, rec in self.last_seen.items():
            if rec[_P] == p and rec[_DUE] != NEVER_TS:
                if stream > rec[_DUE]:
                    opened.add(sid)
                else:
                    heap.append((rec[_DUE], sid))
                    rec[_HEAP] = rec[_DUE]
        heapq.heapify(heap)
        self.heaps[p] = heap

    def reset(self) -> None:
        """Forget everything (the detector's table was cleared; restores rebuild it per partition)."""
        self.stream.clear()
        self.heaps.clear()
        self.open.clear()
        self.last_seen.clear()
        self.events = []

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (it moved to another worker, whose checkpoint carries it on)."""
        p = int(partition)
        self.stream.pop(p, None)
        self.heaps.pop(p, None)
        self.open.pop(p, None)
        for sid in [s for s, rec in self.last_seen.items() if rec[_P] == p]:
            del self.last_seen[sid]

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
