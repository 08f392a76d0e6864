"""Routing: which batch slot of the stateful LSTM each sensor occupies.

A sensor keeps its slot as long as it has one (assignment is stable and part of the
checkpointed state).  When every slot is taken, the router either hands over the slots of
the least recently used sensors (``when_full="page"``; the caller pages their state out
to the state table) or refuses (``when_full="reject"``).  Recency is one integer per slot
(the tick that last used it), so a whole tick is touched with one numpy assignment and
victims are found with one ``argpartition``.

>>> r = SlotRouter(slots=2)
>>> r.acquire("a"), r.acquire("b")
((0, None), (1, None))
>>> r.touch("a"); r.acquire("c")      # "b" is now the least recently used
(1, 'b')
>>> r2 = SlotRouter(slots=1, when_full="reject"); _ = r2.acquire("x"); r2.acquire("y")
Traceback (most recent call last):
...
worker.core.router.NoFreeSlot: all 1 slots are taken
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import numpy as np

_NEVER = np.iinfo(np.int64).max


class NoFreeSlot(Exception):
    pass


class SlotRouter:
    def __init__(self, slots: int, when_full: str = "page") -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if when_full not in ("page", "reject"):
            raise ValueError(f"when_full must be 'page' or 'reject', got {when_full!r}")
        self.slots = slots
        self.when_full = when_full
        self.slot_of_sensor: dict[str, int] = {}
        self.owner: list[str | None] = [None] * slots
        self.last_used = np.zeros(slots, np.int64)
        self.clock = 1
        self._free: list[int] = list(range(slots))  # a heap: lowest free slot first

    def __len__(self) -> int:
        return len(self.slot_of_sensor)

    def __contains__(self, sensor_id: str) -> bool:
        return sensor_id in self.slot_of_sensor

    @property
    def in_use(self) -> int:
        return len(self.slot_of_sensor)

    def slot_of(self, sensor_id: str) -> int | None:
        return self.slot_of_sensor.get(sensor_id)

    def touch(self, sensor_id: str) -> None:
        """Mark one sensor as most recently used."""
        self.touch_slots(np.array([self.slot_of_sensor[sensor_id]]))

    def touch_slots(self, slots: np.ndarray) -> None:
        """Mark slots as used by the current tick."""
        self.clock += 1
        self.last_used[slots] = self.clock

    def acquire(self, sensor_id: str, pinned: np.ndarray | None = None) -> tuple[int, str | None]:
        """A slot for one sensor that has none: ``(slot, evicted sensor or None)``."""
        got = self.acquire_many([sensor_id], pinned)[0]
        if got is None:
            raise NoFreeSlot(f"all {self.slots} slots are taken")
        return got

    def acquire_many(self, sensor_ids: Sequence[str], pinned: np.ndarray | None = None) -> list[tuple[int, str | None] | None]:
        """Slots for sensors that have none, as ``(slot, evicted sensor or None)`` each.

        ``pinned`` (slot numbers) are never evicted: the slots of the tick being built.
        In reject mode, sensors beyond the free slots get ``None``.
        """
        out: list = []
        need = len(sensor_ids)
        k = 0
        while k < need and self._free:
            slot = heapq.heappop(self._free)
            self._assign(sensor_ids[k], slot)
            out.append((slot, None))
            k += 1
        if k == need:
            return out
        if self.when_full == "reject":
            return out + [None] * (need - k)
        rest = need - k
        recency = self.last_used.copy()
        if pinned is not None and len(pinned):
            recency[pinned] = _NEVER
        for s, _ in out:
            recency[s] = _NEVER
        if rest > self.slots:
            raise NoFreeSlot(f"{need} sensors cannot share {self.slots} slots in one tick")
        victims = np.argpartition(recency, rest - 1)[:rest] if rest < self.slots else np.arange(self.slots)
        victims = victims[np.argsort(recency[victims], kind="stable")]
        if recency[victims[-1]] == _NEVER:
            raise NoFreeSlot(f"all {self.slots} slots are pinned by the current tick")
        for sid, slot in zip(sensor_ids[k:], victims.tolist()):
            victim = self.owner[slot]
            del self.slot_of_sensor[victim]
            self._assign(sid, slot)
            out.append((slot, victim))
        return out

    def _assign(self, sensor_id: str, slot: int) -> None:
        if sensor_id in self.slot_of_sensor:
            raise KeyError(f"{sensor_id!r} already holds slot {self.slot_of_sensor[sensor_id]}")
        self.slot_of_sensor[sensor_id] = slot
        self.owner[slot] = sensor_id
        self.last_used[slot] = self.clock

    def release(self, sensor_id: str) -> int | None:
        """Give a sensor's slot back (e.g. its partition was revoked)."""
        slot = self.slot_of_sensor.pop(sensor_id, None)
        if slot is not None:
            self.owner[slot] = None
            self.last_used[slot] = 0
            heapq.heappush(self._free, slot)
        return slot

    def assignments(self) -> list[tuple[str, int]]:
        """(sensor, slot) pairs, least recently used first."""
        pairs = list(self.slot_of_sensor.items())
        pairs.sort(key=lambda p: int(self.last_used[p[1]]))
        return pairs

    def place(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """Put sensors back into the slots they held (restore); returns those that could not be placed."""
        free = set(self._free)
        left = []
        for sid, slot in pairs:
            if sid in self.slot_of_sensor:
                continue
            if slot in free:
                free.discard(slot)
                self._assign(sid, slot)
            else:
                left.append(sid)
        self._free = sorted(free)
        heapq.heapify(self._free)
        return left
