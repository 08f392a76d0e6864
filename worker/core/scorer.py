"""Scoring: from a reconstruction error to a score in [0, 1] and a flag.

The error of a reading is measured against the value the model expected *before* it saw
the reading (the output of the sensor's state after its previous reading), so the model
cannot copy what it scores.  Per feature the difference is taken in the sensor's scaled
units and divided by the model's typical residual for that feature (from calibration);
the error is the root mean square over features.

The score is an anomaly likelihood (after Numenta's HTM detector): the probability, under
the sensor's long-run error distribution, that the short-term mean error is as small as it
is; ``score = Phi((short - mean) / sd(short))`` where ``short`` is an EWMA of the last few
errors, ``mean``/``var`` an exponentially weighted long-run estimate that starts from the
calibration prior, and ``sd(short)`` follows from ``var`` and the EWMA weight.  Readings
scored as anomalies do not update the long-run estimate, so an incident does not teach the
detector that it is normal.  A sensor is *warming up* for its first ``warmup`` readings
after a (re)start and is never flagged then.

What a next-reading predictor cannot see (a stuck sensor, a lasting change of level) and
the horizon after which a deviation is the new normal are :mod:`worker.core.adaptive`'s.

Everything here works on numpy arrays (one element per sensor of a tick); the class
:class:`AnomalyLikelihood` wraps it for one stream with the tiny ``learn_one``/``score_one``
protocol:

>>> det = AnomalyLikelihood(threshold=0.999, warmup=5, short_window=2, long_window=100)
>>> for e in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02]:
...     det.learn_one(e)
>>> round(det.score_one(1.0), 2) < 0.9, det.score_one(25.0) > 0.999
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SQRT1_2 = 0.7071067811865476

#: a sensor's long-run error variance counts as at least this share of the calibrated prior's:
#: a sensor that was perfectly predictable for a while (flat, stepwise) would otherwise find
#: every later change of its error level infinitely surprising
ERR_VAR_FLOOR = 0.25


def _erfc_abs(x: np.ndarray) -> np.ndarray:
    """erfc(|x|) with a *relative* error < 1.2e-7 everywhere (Numerical Recipes erfcc)."""
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = -x * x - 1.26551223 + t * (
        1.00002368
        + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))
    )
    return t * np.exp(poly)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (W. J. Cody's erfc via numpy's exp; |error| < 1.2e-7)."""
    return normal_cdf_sf(z)[0]


def normal_cdf_sf(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(normal_cdf(z), normal_sf(z))`` from one evaluation of the error function."""
    z = np.asarray(z, dtype=np.float64)
    half = 0.5 * _erfc_abs(z * _SQRT1_2)
    pos = z >= 0
    return np.where(pos, 1.0 - half, half), np.where(pos, half, 1.0 - half)


def normal_sf(z: np.ndarray) -> np.ndarray:
    """``1 - normal_cdf(z)`` computed directly (no cancellation): the tail probability of a score.

    Scores near 1 all print as 1.000000; their tails stay distinguishable, so
    ``-log10(normal_sf(z))`` (the *surprise*, :func:`worker.core.attribution.surprise`) separates them.

    >>> [f"{float(normal_sf(z)):.3g}" for z in (0.0, 3.0, 10.0, 30.0)]
    ['0.5', '0.00135', '7.62e-24', '4.91e-198']
    >>> float(1.0 - normal_cdf(10.0))   # the same through the CDF: cancelled to 0
    0.0
    """
    return normal_cdf_sf(z)[1]


@dataclass(frozen=True)
class ScorerParams:
    threshold: float
    warmup: int
    short_window: int
    long_window: int
    prior_mean: float
    prior_var: float

    @property
    def short_alpha(self) -> float:
        return 2.0 / (self.short_window + 1.0)

    @property
    def short_var_factor(self) -> float:
        """Var(EWMA of iid errors) / Var(error)."""
        a = self.short_alpha
        return a / (2.0 - a)


def feature_errors(x_scaled: np.ndarray, expected_scaled: np.ndarray, residual_std: np.ndarray) -> np.ndarray:
    """Per-feature error in units of the model's typical residual, shape (n, F)."""
    return (x_scaled - expected_scaled) / residual_std


def reading_error(feature_err: np.ndarray) -> np.ndarray:
    """One error per reading: RMS over features, shape (n,).

    ``np.add.reduce(.., axis) / n`` is what ``np.mean`` computes for float64, without its
    Python wrapper (a large share of a tick's cost at B=256)."""
    sq = np.square(feature_err)
    return np.sqrt(np.add.reduce(sq, axis=-1) / sq.shape[-1])


def long_alpha(warmup: int, count: np.ndarray, long_window: int) -> np.ndarray:
    """Learning rate of the long-run statistics: the prior counts as ``warmup`` readings, then a window."""
    return np.maximum(1.0 / (max(warmup, 1) + count + 1.0), 1.0 / long_window)


def score_step(
    p: ScorerParams,
    err: np.ndarray,
    count: np.ndarray,
    warmup: np.ndarray,
    err_mean: np.ndarray,
    err_var: np.ndarray,
    err_short: np.ndarray,
    threshold: float | None = None,
    with_tail: bool = False,
    alpha: np.ndarray | None = None,
):
    """Score one reading per element.  ``count``: readings since reset *before* this one.

    Returns ``(score, is_anomaly, warming_up, new_mean, new_var, new_short)``, and the tail
    probability ``1 - score`` computed without cancellation (:func:`normal_sf`) as a seventh
    element when ``with_tail``.  ``alpha``: :func:`long_alpha` of ``count`` if the caller has
    it already.  Pure.
    """
    thr = p.threshold if threshold is None else threshold
    first = count == 0
    short = err_short + p.short_alpha * (err - err_short)
    if first.any():  # the skipped np.where calls would change nothing
        err_mean = np.where(first, p.prior_mean, err_mean)
        err_var = np.where(first, p.prior_var, err_var)
        short = np.where(first, err, short)
    mean, var = err_mean, err_var
    sd = np.sqrt(np.maximum(var, ERR_VAR_FLOOR * p.prior_var) * p.short_var_factor + 1e-12)
    z = (short - mean) / sd
    score, tail = normal_cdf_sf(z)
    warming = count < warmup
    is_anom = (~warming) & (score >= thr)
    # long-run estimate: prior counts as `warmup` readings, then a window of long_window
    if alpha is None:
        alpha = long_alpha(p.warmup, count, p.long_window)
    delta = err - mean
    new_mean = mean + alpha * delta
    new_var = (1.0 - alpha) * (var + alpha * delta * delta)
    if is_anom.any():  # flagged readings do not learn
        new_mean = np.where(is_anom, mean, new_mean)
        new_var = np.where(is_anom, var, new_var)
    if with_tail:
        return score, is_anom, warming, new_mean, new_var, short, tail
    return score, is_anom, warming, new_mean, new_var, short


class AnomalyLikelihood:
    """One stream's scorer with the ``learn_one``/``score_one`` protocol (see module doc)."""

    def __init__(self, threshold: float = 0.999, warmup: int = 32, short_window: int = 4, long_window: int = 1000, prior_mean: float = 1.0, prior_std: float = 0.5) -> None:
        self.params = ScorerParams(threshold, warmup, short_window, long_window, prior_mean, prior_std**2)
        self._state = (np.zeros(1, np.int64), np.zeros(1), np.zeros(1), np.zeros(1))

    def _step(self, err: float):
        count, m, v, s = self._state
        return score_step(self.params, np.array([err], dtype=np.float64), count, np.array([self.params.warmup]), m, v, s)

    def score_one(self, err: float) -> float:
        """The score the error would get now (does not learn)."""
        return float(self._step(err)[0][0])

    def learn_one(self, err: float) -> None:
        count = self._state[0]
        _, _, _, m, v, s = self._step(err)
        self._state = (count + 1, m, v, s)
