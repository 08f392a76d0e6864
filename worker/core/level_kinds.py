"""The level channel's scales per kind of sensor: known to training, or unseen.

A sensor the model saw in training is scaled by its training scaling; one it never saw is scaled
from its own first ``warmup`` readings and its statistics restart when that scaling freezes
(:mod:`worker.core.tick`), so the same normal behaviour deviates more in its level z.  The
calibration (:mod:`training.calibrate_fresh`) gives each kind its own per-feature scales by the
level channel's rule, each scored as it starts live; the artifact's
``level_feature_scale_unseen`` holds the unseen kind's (empty in older artifacts: every sensor
uses ``level_feature_scale``, as before).  An unseen sensor is one whose warm-up is longer than
the calibration's (twice as long, :mod:`worker.core.tick`), so nothing new is kept per sensor.

>>> from worker.core.adaptive import AdaptParams
>>> a = AdaptParams(level_scale=0.6, level_scales=(0.5, 1.0), level_scales_unseen=(0.7, 2.0))
>>> row_scales(a, np.array([False, True]), 2).tolist()
[[0.5, 1.0], [0.7, 2.0]]
>>> row_scales(a, np.array([False, False]), 2), row_scales(AdaptParams(level_scales=(0.5,)), np.array([True]), 1)
((0.5, 1.0), (0.5,))
"""

from __future__ import annotations

import numpy as np


def row_scales(a, unseen: np.ndarray | None, n_features: int):
    """The level scales of each sensor: ``a.level_scales`` (a tuple, the same for all) unless some of the
    sensors are ``unseen`` and the artifact has scales for them: then an (n, F) array."""
    if not a.level_scales_unseen or unseen is None or not unseen.any():
        return a.level_scales
    known = np.asarray(a.level_scales or (a.level_scale,) * n_features, dtype=np.float64)
    return np.where(unseen[:, None], np.asarray(a.level_scales_unseen, dtype=np.float64), known)
