"""Rate-limited logging of rejected readings: one WARNING summary per interval, not one per reading.

A producer that sends only garbage must not turn the worker's log into a copy of the
dead-letter topic.  Each rejection is logged at DEBUG (with sensor, partition, offset and
reason as structured fields); at WARNING the worker writes at most one line per interval:
the counts by reason and one example (the first of the interval).  The first rejection
after a quiet interval is reported at once.

>>> import logging
>>> seen = []
>>> class Grab(logging.Handler):
...     def emit(self, record): seen.append(record.getMessage())
>>> lg = logging.getLogger("demo.rejects"); lg.addHandler(Grab()); lg.setLevel(logging.INFO)
>>> t = [0.0]
>>> rl = RejectionLog(lg, interval_s=10.0, clock=lambda: t[0])
>>> from worker.core.readings import Rejection
>>> rl.add(Rejection("late", "old", "s1", 0, 5))          # first one: reported at once
>>> for k in range(99): rl.add(Rejection("not_json", "bad", None, 0, 6 + k))
>>> t[0] = 11.0; rl.flush_due()
>>> seen[0]
'rejected 1 reading in the last 0.0 s: late 1; e.g. late at partition 0 offset 5 (sensor s1): old'
>>> seen[1]
'rejected 99 readings in the last 11.0 s: not_json 99; e.g. not_json at partition 0 offset 6: bad'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RejectionLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval_s = float(interval_s)
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.example = None
        self._since = clock()
        self._last_flush = -float("inf")

    def add(self, rej) -> None:
        """Count one rejection (and log it at DEBUG); may write the summary if it is due."""
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("rejected reading (%s): %s", rej.reason, rej.detail,
                           extra={"sensor_id": rej.sensor_id, "partition": rej.partition, "offset": rej.offset,
                                  "reason": rej.reason})
        if not self.counts:
            self._since = self.clock()
            self.example = rej
        self.counts[rej.reason] = self.counts.get(rej.reason, 0) + 1
        self.flush_due()

    def flush_due(self) -> None:
        """Write the summary when the interval since the last one has passed."""
        if self.counts and self.clock() - self._last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        if not self.counts:
            return
        now = self.clock()
        n = sum(self.counts.values())
        ex = self.example
        where = f"partition {ex.partition} offset {ex.offset}" + (f" (sensor {ex.sensor_id})" if ex.sensor_id else "")
        by = ", ".join(f"{r} {c}" for r, c in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        self.log.warning("rejected %d reading%s in the last %.1f s: %s; e.g. %s at %s: %s", n, "" if n == 1 else "s",
                         now - self._since, by, ex.reason, where, ex.detail[:300],
                         extra={"rejected": dict(self.counts), "partition": ex.partition, "offset": ex.offset})
        self.counts = {}
        self.example = None
        self._last_flush = now
