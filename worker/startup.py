"""One start-up path for every command that loads a model (run, replay, evaluate, demo, train).

:func:`begin` runs first, before any TensorFlow op: TensorFlow imported without its start-up
chatter (:mod:`worker.tf_quiet`) and its thread pools set from ``TF_NUM_INTRAOP_THREADS`` /
``TF_NUM_INTEROP_THREADS`` (:mod:`worker.tf_threads`).  :func:`loaded` runs once the command's
long-lived objects exist (the model loaded): Python's cyclic GC tuned (:mod:`worker.runtime`).
"""

from __future__ import annotations

import os


class StartupError(ValueError):
    """A start-up setting that cannot be applied (e.g. a TF thread count that is not a number)."""


def begin() -> None:
    """Before the command builds a model.  Raises :class:`StartupError` with a one-line reason."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from worker.tf_quiet import import_tensorflow_quietly
    from worker.tf_threads import apply_tf_threads

    import_tensorflow_quietly()
    try:
        apply_tf_threads()
    except ValueError as e:
        raise StartupError(str(e)) from e


def loaded() -> None:
    """After the command loaded its model: freeze it out of the collector's way."""
    from worker.runtime import tune_gc

    tune_gc()
