"""The settle test: an open episode whose level has moved on from the anomaly's and then held still
is accepted before the horizon (issue 9, the post-anomaly state).

A plant does not always return to where it was before an anomaly: after it the level may rest
somewhere new, so a level test against the frozen pre-anomaly statistics keeps flagging until
the horizon (:mod:`worker.core.adaptive`).  Within an open episode this module keeps

* ``adapt_peak`` / ``adapt_peak_lvl``: the episode's largest level z and the level (per
  feature) at that reading — *the anomaly's level*;
* ``settle_lvl`` / ``settle_run``: the level where the current still stretch began and how many
  readings the level has stayed within the *band* of it.

The band is what the level channel itself calls normal: a per-feature movement of the short-term
level that, tested as the level channel tests a deviation (the feature's long-run sd and
calibrated scale, two-sided, Bonferroni over features, at the threshold), would not flag.  An
episode is accepted as the new normal at a flagged reading when the level has stayed within the
band for ``settle`` readings **and** lies outside the band of the anomaly's level: a second
change (away from the anomaly) followed by settling.  One lasting change is never accepted
this way (its level *is* the peak's), so it waits for the horizon; an incident that returns to
the old level closes by the quiet period as before.

>>> import numpy as np
>>> sd = np.ones((1, 1)); sc = (1.0,)
>>> moved_beyond(np.array([[9.0]]), np.array([[0.0]]), sd, sc, 1, 0.999).tolist()
[True]
>>> moved_beyond(np.array([[1.0]]), np.array([[0.0]]), sd, sc, 1, 0.999).tolist()
[False]
"""

from __future__ import annotations

import numpy as np

#: state-table columns of this module (per sensor; settle_lvl and settle_prev per feature)
SETTLE_COLUMNS = ("settle_lvl", "settle_run", "settle_prev", "settle_has_prev")


def moved_beyond(lvl: np.ndarray, ref: np.ndarray, lvl_var: np.ndarray, scales: tuple, scale: float, thr: float,
                 floor: float = 0.0625) -> np.ndarray:
    """(n,) whether the level lies outside the band of ``ref`` (a level flag's worth on some feature)."""
    from worker.core.adaptive import level_tail, scaled_max

    d = np.abs(lvl - ref) / np.sqrt(np.maximum(lvl_var, floor))
    return level_tail(scaled_max(d, scales, scale), lvl.shape[-1]) <= 1.0 - thr


def settle_step(a, st: dict, lvl: np.ndarray, lvl_var: np.ndarray, ep_len: np.ndarray, flagged: np.ndarray, thr: float):
    """(accept (n,) bool, new settle state): the settle test of the readings whose episode is open (``ep_len`` > 0)."""
    open_ = ep_len > 0
    run0 = np.where(ep_len <= 1, 0, st["settle_run"])  # readings of the still stretch before this one
    mean0 = st["settle_lvl"]
    band = (a.level_scales, a.level_scale, thr)
    moved = (run0 > 0) & moved_beyond(lvl, mean0, lvl_var, *band)
    ended = moved & (run0 >= a.settle)  # a settled stretch ends: it is the level the next one must differ from
    prev = np.where(ended[:, None], mean0, st["settle_prev"])
    has_prev = np.where(ep_len <= 1, 0, st["settle_has_prev"]) | ended
    restart = moved | (run0 == 0)
    run = np.where(restart, 1, run0 + 1)
    mean = np.where(restart[:, None], lvl, mean0 + (lvl - mean0) / np.maximum(run, 1)[:, None])
    accept = open_ & flagged & (has_prev > 0) & (run >= a.settle) & moved_beyond(mean, prev, lvl_var, *band)
    o, o1 = open_[:, None], open_
    return accept, {"settle_lvl": np.where(o, mean, 0.0), "settle_run": np.where(o1, run, 0),
                    "settle_prev": np.where(o, prev, 0.0), "settle_has_prev": np.where(o1, has_prev, 0).astype(np.int64)}


def settle_tick(a, st: dict, lvl, lvl_var, ep_len, ep_quiet, flagged, accept, thr: float, level_on: bool):
    """:func:`settle_step` inside :func:`worker.core.adaptive.score_tick`: returns (accept, ep_len, ep_quiet, new settle state)."""
    if a.settle <= 0 or not level_on:
        return accept, ep_len, ep_quiet, {k: st[k] for k in SETTLE_COLUMNS}
    acc, new = settle_step(a, st, lvl, lvl_var, ep_len, flagged, thr)
    acc = acc | accept
    return acc, np.where(acc, 0, ep_len), np.where(acc, 0, ep_quiet), new


def fresh(n: int, n_features: int) -> dict:
    """The settle columns of ``n`` sensors that have seen nothing."""
    return {"settle_lvl": np.zeros((n, n_features)), "settle_run": np.zeros(n, np.int64),
            "settle_prev": np.zeros((n, n_features)), "settle_has_prev": np.zeros(n, np.int64)}
