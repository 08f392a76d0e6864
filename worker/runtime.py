"""Process-wide runtime tuning for long-running slotwatch processes (worker, replay, benchmarks).

Called once at the edge (a command's ``main``), never by the core. TensorFlow's thread
pools are set by :mod:`worker.tf_threads`.
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Make Python's cyclic GC cheap for a process that creates many short-lived objects.

    The core makes a few objects per reading (readings, scores); none form cycles. With the
    default thresholds the collector runs every 700 allocations and, once the process
    holds a large state table and a loaded TensorFlow, each run walks millions of objects:
    measured here, it made building a score 3.5x slower (0.98 vs 0.28 us). Freezing what
    start-up allocated and collecting young objects less often removes that cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)

