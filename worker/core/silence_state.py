"""The silence tracker's state beyond the table's columns: deadline heaps, evicted sensors, partitions.

A mixin of :class:`worker.core.silence.SilenceTracker`: the heap of deadlines per partition
(armed after a batch, popped lazily when the stream passes them), the bounded last-seen records
of evicted sensors (so a silent one stays known as silent), seeding from training data, and the
partition's checkpoint meta (export, restore, drop).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from worker.core.silence_events import SilenceEvent
from worker.state.table import NEVER_TS, NO_TS, StateTable

#: the spread given to a sensor seeded from training data (log units)
SEED_SPREAD = 0.1

# last-seen record of an evicted sensor: partition, last ts, stream ts, due, n, log, dev, heap deadline
_P, _LAST, _STREAM, _DUE, _N, _LOG, _DEV, _HEAP = range(8)


class SilenceStateMixin:
    """Heaps, last-seen records and partitions of a :class:`~worker.core.silence.SilenceTracker`."""

    # ------------------------------------------------------------------ deadlines
    def _arm(self, table: StateTable, p: int, r: np.ndarray, s_end: int, runmax: np.ndarray, opened_set: set,
             found: list) -> None:
        """After a batch, for the rows ``r`` of its sensors (at their last reading): a deadline the stream
        already passed opens an episode now; any other goes into the partition's heap."""
        c = table.cols
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

    def _pop_due(self, table: StateTable, p: int, s_end: int, runmax: np.ndarray, opened_set: set, found: list) -> None:
        """The sensors with no reading in the batch: only those whose heap deadline the stream has passed
        are looked at (lazy invalidation: a stale or early entry is dropped or pushed again)."""
        c = table.cols
        heap = self.heaps.setdefault(p, [])
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
