"""Per-sensor state of the scoring core: new rows, resets, checkpoint export/import, clearing.

A mixin of :class:`worker.core.detector.SlotDetector`: the state table (:mod:`worker.state.table`)
holds every sensor's row; the engine holds the LSTM state of the sensors that have a slot, and
:meth:`StateMixin.sync_state` copies it into the table before an export
(:mod:`worker.checkpointing.format` writes what :meth:`StateMixin.export_partition` returns).
"""

from __future__ import annotations

import numpy as np

from worker.core.router import SlotRouter
from worker.state.table import StateTable


class StateMixin:
    """Sensor rows, resets, export/import per partition (see the module's docstring)."""

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
