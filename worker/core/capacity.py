"""Capacity of the scoring core: admitting new sensors within ``max_sensors``, evicting idle ones.

A mixin of :class:`worker.core.detector.SlotDetector` (it uses the detector's ``table``,
``router``, ``episodes``, ``stats`` and silence hooks).  A new sensor that does not fit first
evicts sensors idle for longer than ``max_gap_ms`` behind the newest reading of their
partition (oldest first); when none is idle it is rejected ``no_capacity``.
"""

from __future__ import annotations

import numpy as np

from worker.core import intake
from worker.core.columns import ReadingColumns, ScoreColumns
from worker.state.table import NO_TS


class CapacityMixin:
    """``_admit`` and ``_evict_idle`` of the detector (see the module's docstring)."""

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
