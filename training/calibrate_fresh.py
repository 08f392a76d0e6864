"""Level scales calibrated as sensors start live: from a fresh state, known or unseen.

The level channel's scales (:func:`training.calibrate.pick_feature_scales`: each feature alone
flags at most ``false_alarm_rate / F`` of the held-out normal readings) were calibrated on a
pass over each training sensor's whole sequence, so the level statistics the held-out readings
are judged against had learned for thousands of readings.  Live, a sensor starts from a fresh
state (a new deployment, a reset, a sensor that was evicted): its level statistics start from
the prior and have seen a few hundred readings, and a sensor unseen in training is also scaled
from its own first ``warmup`` readings (:func:`worker.core.tick._learn_scaling`).  Both judge
the same readings as more deviating than mature statistics do, so the mature calibration is too
strict for them (on the simulator it gave 0.41 and 3.5 false alarms per 1,000 readings of new
sensors; the constant floor ``LEVEL_SCALE_MIN`` = 0.6 stood in for the difference).

Here the rule is applied to what live scoring sees: each sensor's held-out part becomes a
sequence of its own, scored from a fresh state (network state too) through the core's
:func:`worker.core.adaptive.score_tick` (:func:`training.calibrate.run_adaptive`), once as a
sensor known to training (its training scaling) and once as an unseen sensor (scaled from its
first ``warmup`` readings as the core does, statistics restarting when that scaling freezes,
warm-up twice as long), with the same geometric-mean iteration as the mature live pass.  Each
kind gets, per feature, the larger of its fresh-state scale and the mature one (calibrated
without the floor): :func:`larger_scales`, into ``Calibration.level_feature_scale`` /
``level_feature_scale_unseen``.  The fresh rule alone is too lax where the held-out data is
short (SKAB: 1,117 quiet readings past warm-up, scales 0.24-0.45, 65% false alarm rate); the
mature rule alone too strict for sensors that start live (the simulator).

>>> import numpy as np
>>> raw = np.arange(12, dtype=float).reshape(1, 6, 2)
>>> xs = unseen_scaling(raw, np.ones((1, 6), bool), warmup=3, global_std=np.array([1.0, 1.0]))
>>> xs.shape, bool(abs(xs[0, :3, 0].mean()) < 1e-9)      # centred on its own first readings
((1, 6, 2), True)
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

log = logging.getLogger("slotwatch.train")

#: the fresh-state passes need at least this many normal held-out readings after warm-up (else: not used)
MIN_READINGS = 1000


def larger_scales(mature: list[float], known: list[float], unseen: list[float]) -> tuple[list[float], list[float]]:
    """``(known sensors', unseen sensors')`` per-feature scales: each the larger of the mature (whole-sequence,
    unfloored) scale and that kind's fresh-state one.  A kind without fresh-state scales (too few readings):
    known ones fall back to the mature scales floored at ``LEVEL_SCALE_MIN`` (as without these passes),
    unseen ones to none (unseen sensors use the known sensors' scales).

    >>> larger_scales([0.4, 1.2], [0.5, 1.0], [0.55, 0.9])
    ([0.5, 1.2], [0.55, 1.2])
    >>> larger_scales([0.4, 1.2], [], [])
    ([0.6, 1.2], [])
    """
    from training.calibrate import LEVEL_SCALE_MIN

    if not mature:
        return list(mature), []
    if not known:
        return [max(float(m), LEVEL_SCALE_MIN) for m in mature], []
    big = [max(float(m), float(k)) for m, k in zip(mature, known)]
    return big, ([max(float(m), float(u)) for m, u in zip(mature, unseen)] if unseen else [])


def held_out_parts(fleet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each sensor's held-out (validation) part as its own sequence from index 0:
    ``(x scaled, raw, normal, valid)``, (S, Tv[, F]), padded where a part is shorter."""
    n = fleet.lengths - fleet.val_start
    tv = int(max(n.max(), 1))
    s_, f_ = fleet.n_sensors, len(fleet.features)
    x = np.zeros((s_, tv, f_), np.float32)
    raw = np.zeros((s_, tv, f_), np.float64)
    normal = np.zeros((s_, tv), bool)
    for i in range(s_):
        a, k = int(fleet.val_start[i]), int(n[i])
        x[i, :k], raw[i, :k], normal[i, :k] = fleet.x[i, a : a + k], fleet.raw[i, a : a + k], fleet.normal[i, a : a + k]
    valid = np.arange(tv)[None, :] < n[:, None]
    return x, raw, normal, valid


def unseen_scaling(raw: np.ndarray, valid: np.ndarray, warmup: int, global_std: np.ndarray) -> np.ndarray:
    """(S, T, F) scaled as the core scales a sensor unseen in training: the mean and std of its first
    ``warmup`` readings, the std shrunk towards the fleet's (:func:`worker.core.tick._learn_scaling`)."""
    from worker.core.tick import shrunk_std

    w = max(int(warmup), 1)
    head = valid[:, :w, None]
    k = np.maximum(head.sum(axis=1), 1)
    mean = (raw[:, :w] * head).sum(axis=1) / k
    m2 = (((raw[:, :w] - mean[:, None]) ** 2) * head).sum(axis=1)
    std = shrunk_std(m2, k, global_std)
    return ((raw - mean[:, None]) / std[:, None]).astype(np.float32)


def _scales(p, adapt, err, x, raw, valid, mask, thr, far, flat_on, passes):
    """The per-feature scales the rule gives on a live pass, iterated as training.train does (geometric mean)."""
    from training import calibrate as cal

    scales = list(adapt.level_scales) or [adapt.level_scale] * x.shape[-1]
    n = 0
    for _ in range(max(passes, 1)):
        a = replace(adapt, level_scales=tuple(scales))
        res = cal.run_adaptive(p, a, err, x, raw, valid, level_on=True, flat_on=flat_on, with_level=True)
        use = mask & ~res[2]
        n = int(use.sum())
        if n < MIN_READINGS:
            return [], n
        new = cal.pick_feature_scales(res[5][use], thr, far, floor=cal.NO_FLOOR)
        old = np.array(scales)
        scales = [float(np.sqrt(s * v)) for s, v in zip(scales, new)]
        if np.all(np.abs(np.array(scales) / old - 1.0) < 0.01):
            break
    return scales, n


def fresh_level_scales(net, fleet, p, adapt, res_std, head_bias, global_std, far: float, flat_on: bool,
                       passes: int = 8) -> tuple[list[float], list[float], dict]:
    """``(known, unseen, info)``: per-feature level scales from the fresh-state passes over the
    held-out parts (empty when a pass has fewer than :data:`MIN_READINGS` normal readings to judge)."""
    from training import calibrate as cal
    from training.train import predict_sequences

    x, raw, normal, valid = held_out_parts(fleet)
    mask = cal.calibration_mask(normal, valid)
    exp = cal.expected_values(predict_sequences(net, x), head_bias)
    err = cal.errors(x.astype(np.float64), exp, res_std)
    known, n_known = _scales(p, adapt, err, x.astype(np.float64), raw, valid, mask, p.threshold, far, flat_on, passes)
    w = int(p.warmup)
    xu = unseen_scaling(raw, valid, w, np.asarray(global_std, np.float64))
    expu = cal.expected_values(predict_sequences(net, xu), head_bias)
    erru = cal.errors(xu.astype(np.float64), expu, res_std)
    sl = slice(w, None)  # the statistics restart when the unseen sensor's scaling freezes
    unseen, n_unseen = _scales(p, adapt, erru[:, sl], xu[:, sl].astype(np.float64), raw[:, sl], valid[:, sl], mask[:, sl],
                               p.threshold, far, flat_on, passes)
    info = {"known_readings": n_known, "unseen_readings": n_unseen}
    log.info("level calibration from a fresh state: known sensors %s (%d readings), unseen sensors %s (%d readings)",
             [round(v, 3) for v in known], n_known, [round(v, 3) for v in unseen], n_unseen)
    return known, unseen, info
