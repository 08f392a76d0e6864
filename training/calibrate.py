"""Calibration: from the fitted network's residuals on held-out normal data to the scorer's
parameters (:class:`worker.core.artifact.Calibration`).

Everything here is numpy on whole-fleet arrays; the scores it computes use the core's own
:func:`worker.core.scorer.score_step`, reading by reading, exactly as
:class:`worker.core.detector.SlotDetector` does for a sensor seen in training (the
network's whole-sequence output equals the slot engine's step-by-step output: DESIGN.md
invariant 1).

>>> import numpy as np
>>> from worker.core.scorer import ScorerParams
>>> p = ScorerParams(0.999, 2, 4, 100, 1.0, 0.25)
>>> err = np.array([[1.0, 1.0, 1.0, 1.0, 9.0, 1.0]])
>>> score, flag, warming = run_scorer(p, err, np.ones_like(err, bool))
>>> flag.astype(int).tolist(), warming.astype(int).tolist()
([[0, 0, 0, 0, 1, 1]], [[1, 1, 0, 0, 0, 0]])
"""

from __future__ import annotations

import numpy as np

from worker.core.scorer import (
    ScorerParams,
    feature_errors,
    reading_error,
    score_step,
)

#: readings after a labeled window that do not count as normal for calibration
AFTER_ANOMALY = 10


def expected_values(outputs: np.ndarray, head_bias: np.ndarray) -> np.ndarray:
    """What the model expected *before* each reading: its output after the previous one.

    ``outputs`` (S, T, F) from the sequence network; at t = 0 (zero state) it is the
    head's bias, as in the engine.
    """
    exp = np.empty_like(outputs, dtype=np.float64)
    exp[:, 0, :] = head_bias
    exp[:, 1:, :] = outputs[:, :-1, :]
    return exp


def calibration_mask(normal: np.ndarray, in_validation: np.ndarray, after: int = AFTER_ANOMALY) -> np.ndarray:
    """Validation readings that are normal and not within ``after`` readings of an anomaly."""
    bad = ~normal
    near = bad.copy()
    for k in range(1, after + 1):
        near[:, k:] |= bad[:, :-k]
    return in_validation & ~near


def residual_std(x: np.ndarray, expected: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-feature RMS residual (scaled units) over ``mask``."""
    r = (x - expected)[mask]
    if r.shape[0] == 0:
        raise ValueError("no normal validation readings to calibrate on")
    return np.maximum(np.sqrt(np.mean(r * r, axis=0)), 1e-6)


def errors(x: np.ndarray, expected: np.ndarray, res_std: np.ndarray) -> np.ndarray:
    """(S, T) error of every reading, by the core's functions."""
    return reading_error(feature_errors(x, expected, res_std))


def run_scorer(p: ScorerParams, err: np.ndarray, valid: np.ndarray, threshold: float | None = None):
    """Score (S, T) errors reading by reading from a fresh state; returns (score, flag, warming)."""
    s_, t_ = err.shape
    count = np.zeros(s_, np.int64)
    warm = np.full(s_, p.warmup)
    m = np.zeros(s_)
    v = np.zeros(s_)
    sh = np.zeros(s_)
    score = np.zeros((s_, t_))
    flag = np.zeros((s_, t_), bool)
    warming = np.zeros((s_, t_), bool)
    for t in range(t_):
        live = valid[:, t]
        sc, an, wu, m2, v2, sh2 = score_step(p, err[:, t], count, warm, m, v, sh, threshold)
        score[:, t], flag[:, t], warming[:, t] = sc, an & live, wu
        m, v, sh = np.where(live, m2, m), np.where(live, v2, v), np.where(live, sh2, sh)
        count = count + live
    return score, flag, warming


def pick_threshold(normal_scores: np.ndarray, false_alarm_rate: float, floor: float = 0.99, cap: float = 1.0 - 1e-12) -> float:
    """The smallest threshold that flags at most ``false_alarm_rate`` of normal readings.

    >>> pick_threshold(np.linspace(0, 0.9999, 10001), 0.001) > 0.998
    True
    """
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if s.size == 0:
        return 0.999
    k = int(np.floor(false_alarm_rate * s.size))
    top = s[s.size - 1 - k] if k < s.size else s[0]
    # just above the (k+1)-th largest normal score: at most k normal readings are flagged
    thr = float(np.nextafter(top, 2.0))
    return float(min(max(thr, floor), cap))


def run_adaptive(p: ScorerParams, a, err: np.ndarray, xs: np.ndarray, raw: np.ndarray, valid: np.ndarray,
                 level_on: bool, flat_on: bool, threshold: float | None = None, with_level: bool = False):
    """Score (S, T) readings with every channel of the core (:func:`worker.core.adaptive.score_tick`),
    reading by reading from a fresh state, as the detector does for sensors seen in training.

    ``xs`` (S, T, F) scaled and ``raw`` (S, T, F) original readings.  Returns
    ``(score, flag, warming, tail, accepted)``, each (S, T); with ``with_level`` also the
    (S, T, F) raw level z per feature (scale 1) against the statistics as this pass left them
    (frozen while flagged, as live): the live-matched level calibration (``training.train``).
    """
    from worker.core import adaptive

    s_, t_ = err.shape
    f_ = xs.shape[-1]
    st = adaptive.fresh_state(s_, f_)
    count = np.zeros(s_, np.int64)
    warm = np.full(s_, p.warmup)
    raw32 = raw.astype(np.float32)
    prev = np.zeros((s_, f_), np.float32)
    out = {k: np.zeros((s_, t_), bool) for k in ("flag", "warming", "accepted")}
    score = np.zeros((s_, t_))
    tail = np.ones((s_, t_))
    z = np.zeros((s_, t_, f_)) if with_level else None
    for t in range(t_):
        live = valid[:, t]
        if with_level:  # the level's long-run statistics before this reading (a fresh sensor's prior: 0 and 1)
            first = (count == 0)[:, None]
            lm, lv = np.where(first, 0.0, st["lvl_mean"]), np.where(first, 1.0, st["lvl_var"])
        sc, an, wu, ta, acc, new = adaptive.score_tick(p, a, st, err[:, t], xs[:, t].astype(np.float64), raw32[:, t], prev,
                                                       count, warm, level_on, flat_on, threshold)
        score[:, t], tail[:, t] = sc, ta
        if with_level:
            z[:, t] = adaptive.level_dev(new["lvl"], lm, lv)
        out["flag"][:, t], out["warming"][:, t], out["accepted"][:, t] = an & live, wu, acc & live
        for k, v in new.items():
            lv = live if v.ndim == 1 else live[:, None]
            st[k] = np.where(lv, v, st[k])
        prev = np.where(live[:, None], raw32[:, t], prev)
        count = count + live
    if with_level:
        return score, out["flag"], out["warming"], tail, out["accepted"], z
    return score, out["flag"], out["warming"], tail, out["accepted"]


def level_z_series(xs: np.ndarray, valid: np.ndarray, warmup: int, long_window: int, level_window: int) -> np.ndarray:
    """(S, T, F) raw level z per feature (scale 1) of every reading, learning from every reading (no flags yet)."""
    from worker.core import adaptive

    s_, t_, f_ = xs.shape
    a = adaptive.AdaptParams(level_window=level_window, level_scale=1.0)
    lvl = np.zeros((s_, f_))
    lm = np.zeros((s_, f_))
    lv = np.ones((s_, f_))
    count = np.zeros(s_, np.int64)
    z = np.zeros((s_, t_, f_))
    for t in range(t_):
        live = valid[:, t]
        lvl2, _ = adaptive.level_step(a, xs[:, t].astype(np.float64), count == 0, lvl, lm, lv)
        z[:, t] = adaptive.level_dev(lvl2, lm, lv)
        lm2, lv2 = adaptive.level_learn(adaptive.long_alpha(warmup, count, long_window), live, lvl2, lm, lv)
        lvl = np.where(live[:, None], lvl2, lvl)
        lm, lv = lm2, lv2
        count = count + live
    return z


def normal_isf(tail: float) -> float:
    """The z whose :func:`worker.core.scorer.normal_sf` is ``tail`` (bisection, so the two agree).

    >>> round(normal_isf(0.001), 3), round(normal_isf(1e-12), 2)
    (3.09, 7.03)
    """
    from worker.core.scorer import normal_sf

    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(normal_sf(np.array(mid))) > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


#: the level scale never goes below this (artifacts calibrated without the fresh-state passes,
#: ``--no-level-fresh``, and before them): held-out readings of training sensors (whose level
#: statistics have learned for thousands of readings) are quieter than sensors that are new or
#: changed regime.  Measured on the simulator (scale as calibrated 0.41: 3.5 false alarms per
#: 1,000 readings on the new fleet; 0.5: 0.17; 0.6: 0.04, window F1 0.947; 1.0: as if off,
#: 0.931); SKAB calibrates to 0.90, above it.
LEVEL_SCALE_MIN = 0.6
#: "no floor" for :func:`pick_feature_scales` (a scale must stay > 0): used when the scales are also
#: calibrated from a fresh state (:mod:`training.calibrate_fresh`), which replaces the floor
NO_FLOOR = 1e-9


def pick_level_scale(z_normal: np.ndarray, threshold: float, n_features: int, false_alarm_rate: float) -> float:
    """The level scale at which the level channel alone flags at most ``false_alarm_rate`` of
    normal readings with ``threshold``, at least :data:`LEVEL_SCALE_MIN` (0 = off, when there
    is nothing to calibrate on).

    >>> s = pick_level_scale(np.abs(np.random.default_rng(0).normal(size=100_000)), 0.999, 1, 1e-3)
    >>> 0.9 < s < 1.3
    True
    """
    z = np.asarray(z_normal, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size == 0:
        return 0.0
    z_at = normal_isf((1.0 - threshold) / (2.0 * n_features))
    q = float(np.quantile(z, 1.0 - false_alarm_rate))
    return max(q / z_at, LEVEL_SCALE_MIN)


def pick_feature_scales(z_normal: np.ndarray, threshold: float, false_alarm_rate: float,
                        floor: float = LEVEL_SCALE_MIN) -> list[float]:
    """Per feature, the level scale at which that feature alone flags at most ``false_alarm_rate / F``
    of normal readings (so all of them together at most ``false_alarm_rate``), at least ``floor``.

    ``z_normal`` (N, F): the raw per-feature level z of normal readings.  A feature that wanders
    in normal operation (a temperature that drifts while the plant warms up) gets a larger scale
    than one that holds still, instead of one scale for all set by the most wandering feature.

    >>> z = np.abs(np.random.default_rng(0).normal(size=(200_000, 2))) * [1.0, 3.0]
    >>> [round(s, 1) for s in pick_feature_scales(z, 0.999, 1e-3, 0.1)]
    [1.0, 3.0]
    """
    z = np.asarray(z_normal, dtype=np.float64)
    f_ = z.shape[-1]
    z_at = normal_isf((1.0 - threshold) / (2.0 * f_))
    out = []
    for f in range(f_):
        zf = z[:, f][np.isfinite(z[:, f])]
        if zf.size == 0:
            return []
        out.append(max(float(np.quantile(zf, 1.0 - false_alarm_rate / f_)) / z_at, floor))
    return out
