"""Routing: which batch slot of the stateful LSTM each sensor occupies.

A sensor keeps its slot as long as it has one (assignment is stable and part of the
checkpointed state).  When every slot is taken, the router either hands over the slot of
the least recently used sensor (``when_full="page"``; the caller pages that sensor's
state out to the state table) or refuses (``when_full="reject"``).

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
from collections import OrderedDict
from collections.abc import Iterable


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
        self._lru: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._free: list[int] = list(range(slots))  # a heap: lowest free slot first
        self.page_outs = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, sensor_id: str) -> bool:
        return sensor_id in self._lru

    @property
    def in_use(self) -> int:
        return len(self._lru)

    def slot_of(self, sensor_id: str) -> int | None:
        return self._lru.get(sensor_id)

    def touch(self, sensor_id: str) -> None:
        """Mark as most recently used."""
        self._lru.move_to_end(sensor_id)

    def acquire(self, sensor_id: str, pinned: frozenset[str] | set[str] = frozenset()) -> tuple[int, str | None]:
        """A slot for a sensor that has none: ``(slot, evicted sensor or None)``.

        ``pinned`` sensors are never evicted (the ones in the tick being built).
        """
        if sensor_id in self._lru:
            raise KeyError(f"{sensor_id!r} already holds slot {self._lru[sensor_id]}")
        if self._free:
            slot = heapq.heappop(self._free)
            self._lru[sensor_id] = slot
            return slot, None
        if self.when_full == "reject":
            raise NoFreeSlot(f"all {self.slots} slots are taken")
        for victim in self._lru:
            if victim not in pinned:
                break
        else:
            raise NoFreeSlot(f"all {self.slots} slots are pinned by the current tick")
        slot = self._lru.pop(victim)
        self._lru[sensor_id] = slot
        self.page_outs += 1
        return slot, victim

    def release(self, sensor_id: str) -> int | None:
        """Give a sensor's slot back (e.g. its partition was revoked)."""
        slot = self._lru.pop(sensor_id, None)
        if slot is not None:
            heapq.heappush(self._free, slot)
        return slot

    def assignments(self) -> list[tuple[str, int]]:
        """(sensor, slot) pairs, least recently used first."""
        return list(self._lru.items())

    def place(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """Put sensors back into the slots they held (restore); returns those that could not be placed."""
        free = set(self._free)
        left = []
        for sid, slot in pairs:
            if sid in self._lru:
                continue
            if slot in free:
                free.discard(slot)
                self._lru[sid] = slot
            else:
                left.append(sid)
        self._free = sorted(free)
        heapq.heapify(self._free)
        return left
