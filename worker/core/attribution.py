"""What a score says beyond [0, 1]: how surprising it is, and which features deviated.

*Surprise* separates scores that all print as 1.000000: ``surprise = -log10(tail)`` where
``tail`` is the probability of a deviation at least this large (``1 - score``).  A score
of 0.999 is surprise 3, 0.999999 is 6.  :func:`surprise` is the one place it is computed;
its input is ``1 - score`` floored at :data:`TAIL_FLOOR` (the smallest tail ``1 - score``
resolves in float64), so it is finite and capped at :data:`MAX_SURPRISE`.

>>> surprise(1.0 - np.array([0.0, 0.5, 0.999, 0.999999, 1.0])).round(3).tolist()
[0.0, 0.301, 3.0, 6.0, 16.0]

*Attribution*: per feature, ``z = (actual - expected) / typical residual`` in the sensor's
scaled units (the per-feature errors the scorer already computes); the features that
deviated most are the ones with the largest ``|z|``:

>>> top_features(["temp", "rpm", "vib"], [71.0, 1480.0, 0.2], [64.0, 1479.0, 0.2], [5.2, 0.4, -0.1], k=2)
[{'feature': 'temp', 'actual': 71.0, 'expected': 64.0, 'z': 5.2}, {'feature': 'rpm', 'actual': 1480.0, 'expected': 1479.0, 'z': 0.4}]
"""

from __future__ import annotations

import numpy as np

#: smallest tail probability ``1 - score`` can express in float64 (its spacing below 1 is 1.1e-16)
TAIL_FLOOR = 1e-16
MAX_SURPRISE = 16.0


def surprise(tail: np.ndarray | float) -> np.ndarray:
    """``-log10(tail)``, with ``tail`` floored at :data:`TAIL_FLOOR` (finite, at most 16), vectorised."""
    t = np.asarray(tail, dtype=np.float64)
    # np.minimum(np.maximum(..)) is np.clip's arithmetic (NaN passes) without its Python wrapper
    return -np.log10(np.minimum(np.maximum(t, TAIL_FLOOR), 1.0)) + 0.0  # + 0.0: no -0.0 for a tail of 1


def top_features(features, actual, expected, z, k: int) -> list[dict]:
    """The ``k`` features with the largest ``|z|`` (ties: feature order), most deviating first."""
    za = np.asarray(z, dtype=np.float64)
    order = np.argsort(-np.abs(za), kind="stable")[: max(int(k), 0)]
    return [{"feature": features[i], "actual": float(actual[i]), "expected": float(expected[i]), "z": float(za[i])}
            for i in order.tolist()]
