"""TensorFlow thread pools from the environment: ``TF_NUM_INTRAOP_THREADS`` and
``TF_NUM_INTEROP_THREADS``.

A container gets a CPU limit, but TensorFlow sizes its thread pools from the host's cores, so
a worker limited to 2 CPUs on a 64-core node would start 64 threads that fight for 2 CPUs.
The image exposes both variables; the worker (and training) call :func:`apply_tf_threads`
once, right after importing TensorFlow and before building a model.  Unset or ``0`` leaves
TensorFlow's default.

>>> thread_settings({"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": ""})
(2, 0)
>>> thread_settings({"TF_NUM_INTRAOP_THREADS": "two"})
Traceback (most recent call last):
...
ValueError: TF_NUM_INTRAOP_THREADS must be a whole number >= 0 (0 = TensorFlow's default), got 'two'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

INTRA = "TF_NUM_INTRAOP_THREADS"
INTER = "TF_NUM_INTEROP_THREADS"

log = logging.getLogger(__name__)


def _count(env: Mapping[str, str], name: str) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{name} must be a whole number >= 0 (0 = TensorFlow's default), got {raw!r}")
    return n


def thread_settings(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(intra-op, inter-op) thread counts asked for by ``env``; 0 means TensorFlow's default."""
    env = os.environ if env is None else env
    return _count(env, INTRA), _count(env, INTER)


def apply_tf_threads(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Set TensorFlow's thread pools from ``env`` (default: ``os.environ``); returns what was asked.

    Must run before TensorFlow executes its first op; later it can no longer change the pools,
    and this logs a warning instead of failing the worker.
    """
    intra, inter = thread_settings(env)
    if not (intra or inter):
        return intra, inter
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as e:  # TensorFlow already initialised its runtime
        log.warning("TF thread settings not applied: %s", e, extra={INTRA: intra, INTER: inter})
    else:
        log.info("TF thread pools set", extra={"intra_op": intra, "inter_op": inter})
    return intra, inter
