"""What the scorer adds to the next-reading error: a level channel, stillness against the
sensor's own history, and a bounded horizon after which a lasting deviation is the new normal.

All pure numpy over the sensors of one tick (one element per sensor); the per-sensor state
lives in the state table (columns ``lvl``, ``lvl_mean``, ``lvl_var``, ``move_rate``,
``still_run``, ``adapt_len``, ``adapt_quiet``, ``adapt_err_mean``, ``adapt_err_var``).

**Level channel.**  A next-reading predictor follows a lasting change of level within a few
readings (it sees the new level as input), so its error says "something changed" only at
the change.  The level channel asks the other question — *is the sensor still where it
normally is?* — per feature: an EWMA over ``level_window`` readings of the scaled value,
against the sensor's own long-run mean and variance of that EWMA (learned like the error
statistics, from a prior of 0 and 1 in scaled units; frozen while the sensor is flagged).
Its z is the largest |deviation| over features, each divided by that feature's
``level_scales`` entry (from calibration: the scale at which that feature's level alone flags
``false_alarm_rate / F`` of normal held-out readings, so a feature that wanders in normal
operation does not make the channel blind to one that holds still; artifacts without them
divide every feature by the one ``level_scale``); its tail probability is Bonferroni-corrected
for two sides and F features.

**Stillness against own history.**  Per feature, ``move_rate`` is the sensor's own share of
readings that changed the value (a Laplace estimate, then an EWMA over ``move_window``),
and ``still_run`` the readings since it last changed.  A run of ``r`` unchanged readings
has probability ``(1 - p) ** r`` under the sensor's own history (``p`` capped at
``flat_p_max``: readings are not independent).  A feature that was always flat has ``p``
about ``1 / n`` after ``n`` readings and a run of ``n``, probability about ``e ** -1``: never
stuck; one that always moved and stops is flagged after a handful of readings.

**Horizon.**  An *episode* is a run of flags, ended by ``quiet`` unflagged readings (0: not by
a count).  :class:`~worker.core.detector.SlotDetector` takes ``quiet`` from the episode
tracker's ``quiet_readings`` and also ends the run wherever the tracker closes an episode for
its quiet period (``quiet_s`` too), so the scorer's run and the episode message are one
episode.  While
an episode is open the long-run statistics do not learn; the errors of the episode are
averaged (``adapt_err_mean``/``adapt_err_var``).  When an episode reaches ``accept_after``
readings its deviation is accepted as the new normal: the error statistics take the
episode's, the level means take the current levels, a still feature's move rate is reset
as if it had always been flat, and the reading says ``accepted``.  So a lasting change is
flagged for at most ``accept_after`` readings (plus the quiet gaps), never for ever, and an
incident shorter than that is never learned away.

>>> a = AdaptParams(level_scale=1.0, level_scales=(1.0, 3.0))  # feature 1 wanders three times as far when normal
>>> d = np.array([[5.0, 0.0], [0.0, 5.0]])                       # 5 sd on feature 0, then on feature 1
>>> scaled_max(d, a.level_scales, a.level_scale).round(2).tolist()
[5.0, 1.67]
>>> lv = LevelDeviation(level_window=4, warmup=10)
>>> for v in [0.1, -0.2, 0.0, 0.15, -0.1, 0.05, -0.05, 0.1, 0.0, -0.1, 0.05, 0.0]:
...     lv.learn_one(v)
>>> lv.score_one(0.1) < 0.9, lv.score_one(8.0) > 0.999
(True, True)
>>> st = OwnStillness(min_run=3)
>>> for v in [5.0] * 50:                  # flat from its first reading: that is what it is
...     st.learn_one(v)
>>> st.score_one(5.0) < 0.9
True
>>> mv = OwnStillness(min_run=3)
>>> for v in range(50):                   # always moved ...
...     mv.learn_one(float(v))
>>> for _ in range(8):                    # ... and stops
...     mv.learn_one(49.0)
>>> mv.score_one(49.0) > 0.999
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.core.level_kinds import row_scales
from worker.core.scorer import ScorerParams, long_alpha, normal_sf, score_step

#: the level channel's variance counts as at least this (scaled units, i.e. (1/4 of the sensor's std)**2)
LEVEL_VAR_FLOOR = 0.0625

#: state-table columns of this module, and all the columns a tick's scoring reads and writes
ADAPT_COLUMNS = ("lvl", "lvl_mean", "lvl_var", "move_rate", "still_run", "adapt_len", "adapt_quiet", "adapt_err_mean", "adapt_err_var")
STATE_COLUMNS = ("err_mean", "err_var", "err_short", *ADAPT_COLUMNS)


@dataclass(frozen=True)
class AdaptParams:
    """The settings of this module (``SLOTWATCH_SCORING__*`` and the artifact's calibration)."""

    accept_after: int = 600  # readings of an episode before its deviation is the new normal (0 = never)
    quiet: int = 30  # unflagged readings that end an episode (0 = never by count); the detector takes EpisodeParams.quiet_readings
    level_window: int = 8  # EWMA window of the level channel (0 = off)
    level_scale: float = 0.0  # from calibration; 0 = level channel off (older artifacts)
    move_window: int = 1000  # window of a sensor's own move rate
    flat_min_run: int = 4  # unchanged readings before stillness can flag (0 = off)
    flat_p_max: float = 0.9  # cap of the move rate (readings are not independent)
    hold: float = 1.0  # within an open episode a reading stays flagged down to this share of the threshold's surprise
    level_scales: tuple = ()  # per feature, from calibration (empty: level_scale for every feature, older artifacts)
    level_scales_unseen: tuple = ()  # per feature, for sensors unseen in training (empty: level_scales; worker.core.level_kinds)

    @property
    def level_alpha(self) -> float:
        return 2.0 / (self.level_window + 1.0) if self.level_window > 0 else 1.0


def level_step(a: AdaptParams, xs: np.ndarray, first: np.ndarray, lvl: np.ndarray, lvl_mean: np.ndarray,
               lvl_var: np.ndarray, unseen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new EWMA level (n, F), z (n,)): the level channel's largest |deviation| in units of its sd / level_scale
    (``unseen`` (n,): sensors unseen in training, judged by ``level_scales_unseen`` when the artifact has them)."""
    lvl = lvl + a.level_alpha * (xs - lvl)
    if first.any():
        lvl = np.where(first[:, None], xs, lvl)
    if a.level_scale <= 0 or a.level_window <= 0:
        return lvl, np.zeros(len(xs))
    return lvl, scaled_max(level_dev(lvl, lvl_mean, lvl_var), row_scales(a, unseen, xs.shape[-1]), a.level_scale)


def level_dev(lvl: np.ndarray, lvl_mean: np.ndarray, lvl_var: np.ndarray) -> np.ndarray:
    """(n, F) |deviation| of the level from its long-run mean, in its sd (scale 1)."""
    return np.abs(lvl - lvl_mean) / np.sqrt(np.maximum(lvl_var, LEVEL_VAR_FLOOR))


def scaled_max(d: np.ndarray, scales: tuple, scale: float) -> np.ndarray:
    """(n,) the largest deviation over features, each divided by its calibrated scale (or all by ``scale``)."""
    if len(scales):  # a tuple (F,) or, per sensor, an (n, F) array
        return (d / np.asarray(scales, dtype=np.float64)).max(axis=-1)
    return d.max(axis=-1) / scale


def level_tail(z: np.ndarray, n_features: int) -> np.ndarray:
    """Tail probability of a level z: two-sided, Bonferroni over features, at most 1."""
    return np.minimum(1.0, 2.0 * n_features * normal_sf(z))


def level_learn(alpha: np.ndarray, learn: np.ndarray, lvl: np.ndarray, lvl_mean: np.ndarray, lvl_var: np.ndarray):
    """Long-run mean/var of the level where ``learn`` (not flagged)."""
    al = alpha[:, None]
    delta = lvl - lvl_mean
    m = lvl_mean + al * delta
    v = (1.0 - al) * (lvl_var + al * delta * delta)
    if learn.all():
        return m, v
    lm = learn[:, None]
    return np.where(lm, m, lvl_mean), np.where(lm, v, lvl_var)


def movement_step(a: AdaptParams, x32: np.ndarray, prev32: np.ndarray, has_prev: np.ndarray, count: np.ndarray,
                  move_rate: np.ndarray, still_run: np.ndarray):
    """(new move_rate, new still_run, tail (n,)) of stillness judged against the sensor's own history.

    ``x32``/``prev32`` (n, F) this and the previous reading in float32 (as the ring stores
    them); ``has_prev`` (n,) whether there is a previous reading since the last reset.
    """
    moved = x32 != prev32
    run = np.where(moved, 0, still_run + 1)
    # Laplace estimate (moves + 1) / (changes + 2) from a prior of 1/2, then an EWMA over move_window
    alpha = np.maximum(1.0 / (count.astype(np.float64) + 2.0), 1.0 / a.move_window)[:, None]
    rate = move_rate + alpha * (moved - move_rate)
    if not has_prev.all():
        hp = has_prev[:, None]
        run = np.where(hp, run, 0)
        rate = np.where(hp, rate, np.where(count[:, None] == 0, 0.5, move_rate))
    if a.flat_min_run <= 0:
        return rate, run, np.ones(len(x32))
    long_run = run >= a.flat_min_run
    if not long_run.any():  # every run counts as probability 1: exp(0)
        return rate, run, np.ones(len(x32))
    p = np.minimum(rate, a.flat_p_max)
    with np.errstate(divide="ignore"):
        logq = run * np.log1p(-p)
    logq = np.where(long_run, logq, 0.0)
    return rate, run, np.exp(logq.min(axis=-1))


def episode_step(a: AdaptParams, flagged: np.ndarray, err: np.ndarray, ep_len: np.ndarray, ep_quiet: np.ndarray,
                 ep_mean: np.ndarray, ep_var: np.ndarray):
    """Advance the episode counters; returns (ep_len, ep_quiet, ep_mean, ep_var, accept (n,) bool).

    ``adapt_len`` counts the readings since the episode's first flag (0 = none open).
    """
    open_ = (ep_len > 0) | flagged
    if not open_.any():  # no episode open nor opening: everything is reset
        none = np.zeros(len(err))
        return np.zeros_like(ep_len), np.zeros_like(ep_quiet), none, none.copy(), np.zeros(len(err), bool)
    n = np.where(open_, ep_len + 1, 0)
    quiet = np.where(flagged, 0, np.where(open_, ep_quiet + 1, 0))
    k = np.maximum(n, 1).astype(np.float64)
    starts = n == 1
    delta = err - np.where(starts, err, ep_mean)
    m = np.where(starts, err, ep_mean + delta / k)
    v = np.where(starts, 0.0, ep_var + (delta * (err - m) - ep_var) / k)  # running (population) variance
    ended = open_ & (a.quiet > 0) & (quiet >= a.quiet)
    accept = open_ & flagged & (a.accept_after > 0) & (n >= a.accept_after)
    done = ended | accept
    return np.where(done, 0, n), np.where(done, 0, quiet), np.where(open_, m, 0.0), np.where(open_, v, 0.0), accept


def score_tick(p: ScorerParams, a: AdaptParams, st: dict, err: np.ndarray, xs: np.ndarray, x32: np.ndarray,
               prev32: np.ndarray, count: np.ndarray, warm_n: np.ndarray, level_on: bool, flat_on: bool,
               threshold: float | None = None):
    """Score one reading per sensor with every channel; pure.

    ``st``: the sensors' :data:`STATE_COLUMNS` (arrays); ``err`` (n,) the next-reading error;
    ``xs`` (n, F) the scaled reading; ``x32``/``prev32`` this and the previous raw reading in
    float32; ``count`` readings since reset before this one.  Returns ``(score, anomaly,
    warming, tail, accepted, new_state)``; ``tail = 1 - score`` without cancellation.
    """
    thr = p.threshold if threshold is None else threshold
    em0, ev0 = st["err_mean"], st["err_var"]
    alpha = long_alpha(p.warmup, count, p.long_window)
    score, anom, warming, em, ev, es, tail = score_step(p, err, count, warm_n, em0, ev0, st["err_short"], thr,
                                                        with_tail=True, alpha=alpha)
    first = count == 0
    any_first = bool(first.any())  # the np.where(first, ...) below change nothing otherwise
    lm, lv = st["lvl_mean"], st["lvl_var"]
    if any_first:
        lm = np.where(first[:, None], 0.0, lm)
        lv = np.where(first[:, None], 1.0, lv)
        em0 = np.where(first, p.prior_mean, em0)
        ev0 = np.where(first, p.prior_var, ev0)
    lvl, z_lvl = level_step(a, xs, first, st["lvl"], lm, lv, unseen=warm_n > p.warmup)  # unseen sensors warm up twice as long
    if level_on:
        tail = np.minimum(tail, level_tail(z_lvl, xs.shape[-1]))
    rate, run, flat_tail = movement_step(a, x32, prev32, ~first, count, st["move_rate"], st["still_run"])
    if flat_on:
        tail = np.minimum(tail, flat_tail)
    if level_on or flat_on:
        score = 1.0 - tail
        anom = (~warming) & (score >= thr)
    in_episode = st["adapt_len"] > 0
    if a.hold < 1.0:  # hysteresis: an open episode needs less surprise to go on than to start
        hold_tail = (1.0 - thr) ** a.hold
        anom = anom | ((~warming) & in_episode & (tail <= hold_tail))
    # the long-run statistics learn only outside episodes, and never from a flagged reading
    learn = ~(anom | in_episode)
    if not learn.all():
        em = np.where(learn, em, em0)
        ev = np.where(learn, ev, ev0)
    lm, lv = level_learn(alpha, learn, lvl, lm, lv)
    n_, q_, epm, epv, acc = episode_step(a, anom, err, st["adapt_len"], st["adapt_quiet"], st["adapt_err_mean"], st["adapt_err_var"])
    if acc.any():  # the horizon: this deviation is the new normal
        em = np.where(acc, epm, em)
        ev = np.where(acc, np.maximum(ev, epv), ev)
        lm = np.where(acc[:, None], lvl, lm)
        still = acc[:, None] & (run >= max(a.flat_min_run, 1))
        rate = np.where(still, 1.0 / (run + 2.0), rate)
        epm, epv = np.where(acc, 0.0, epm), np.where(acc, 0.0, epv)
    new = {"err_mean": em, "err_var": ev, "err_short": es, "lvl": lvl, "lvl_mean": lm, "lvl_var": lv, "move_rate": rate,
           "still_run": run, "adapt_len": n_, "adapt_quiet": q_, "adapt_err_mean": epm, "adapt_err_var": epv}
    return score, anom, warming, tail, acc, new


def fresh_state(n: int, n_features: int) -> dict:
    """:data:`STATE_COLUMNS` of ``n`` sensors that have seen nothing (what a reset gives)."""
    st = {k: np.zeros(n) for k in ("err_mean", "err_var", "err_short", "adapt_err_mean", "adapt_err_var")}
    st.update(adapt_len=np.zeros(n, np.int64), adapt_quiet=np.zeros(n, np.int64), lvl=np.zeros((n, n_features)),
              lvl_mean=np.zeros((n, n_features)), lvl_var=np.ones((n, n_features)),
              move_rate=np.full((n, n_features), 0.5), still_run=np.zeros((n, n_features), np.int64))
    return st


class LevelDeviation:
    """One feature's level channel with the ``learn_one``/``score_one`` protocol (see module doc)."""

    def __init__(self, level_window: int = 8, warmup: int = 32, long_window: int = 1000, level_scale: float = 1.0) -> None:
        self.p = AdaptParams(level_window=level_window, level_scale=level_scale)
        self.warmup, self.long_window = warmup, long_window
        self._s = (np.zeros(1, np.int64), np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)))

    def _z(self, v: float):
        count, lvl, m, var = self._s
        lvl2, z = level_step(self.p, np.array([[v]]), count == 0, lvl, m, var)
        return lvl2, z

    def score_one(self, v: float) -> float:
        return float(1.0 - level_tail(self._z(v)[1], 1)[0])

    def learn_one(self, v: float) -> None:
        count, _, m, var = self._s
        lvl2, _ = self._z(v)
        m2, v2 = level_learn(long_alpha(self.warmup, count, self.long_window), np.array([True]), lvl2, m, var)
        self._s = (count + 1, lvl2, m2, v2)


class OwnStillness:
    """One feature's stillness against its own history (``learn_one``/``score_one``; see module doc)."""

    def __init__(self, min_run: int = 4, move_window: int = 1000, p_max: float = 0.9) -> None:
        self.p = AdaptParams(flat_min_run=min_run, move_window=move_window, flat_p_max=p_max)
        self._s = (np.zeros(1, np.int64), np.zeros((1, 1), np.float32), np.full((1, 1), 0.5), np.zeros((1, 1), np.int64))

    def _step(self, v: float):
        count, prev, rate, run = self._s
        return movement_step(self.p, np.array([[v]], np.float32), prev, count > 0, count, rate, run)

    def score_one(self, v: float) -> float:
        return float(1.0 - self._step(v)[2][0])

    def learn_one(self, v: float) -> None:
        count = self._s[0]
        rate, run, _ = self._step(v)
        self._s = (count + 1, np.array([[v]], np.float32), rate, run)
