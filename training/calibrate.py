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
    flatline_score,
    normal_quantile,
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


def stillness_series(raw: np.ndarray, std: np.ndarray, res_std: np.ndarray, k: int) -> np.ndarray:
    """(S, T) :func:`worker.core.scorer.stillness` of every reading and the ``k`` before it
    (inf where fewer than ``k`` came before), as the detector computes it from its ring of
    recent readings (float32).

    >>> raw = np.array([[[0.0], [1.0], [0.0], [1.0], [1.0], [1.0]]])
    >>> stillness_series(raw, np.ones((1, 1)), np.ones(1), 2).tolist()
    [[inf, inf, 1.0, 1.0, 0.5, 0.0]]
    """
    v = raw.astype(np.float32).astype(np.float64)
    d = np.abs(np.diff(v, axis=1)) / (std[:, None, :] * res_std[None, None, :])  # change into reading t+1
    c = np.cumsum(d, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)  # c[:, t] = sum of changes into readings 1..t
    out = np.full(raw.shape[:2], np.inf)
    if raw.shape[1] > k:
        out[:, k:] = ((c[:, k:] - c[:, :-k]) / k).min(axis=-1)
    return out


def flat_scores(still: np.ndarray, flat_limit: float, threshold: float) -> np.ndarray:
    """The detector's flatline scores of a stillness array."""
    return flatline_score(still, flat_limit, normal_quantile(threshold))


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
