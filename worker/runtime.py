"""Process-wide runtime tuning for long-running slotwatch processes (worker, replay, benchmarks).

Called once at the edge (a command's ``main``), never by the core.
"""

from __future__ import annotations

import gc
import os


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


def tf_threads() -> tuple[int, int]:
    """Apply TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (0 = TensorFlow's default)."""
    intra = int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0") or 0)
    inter = int(os.environ.get("TF_NUM_INTEROP_THREADS", "0") or 0)
    if intra or inter:
        import tensorflow as tf

        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:  # already initialised: too late to change, keep going
            pass
    return intra, inter
