"""The level calibration's live-matched pass (training.calibrate.run_adaptive with_level): the
level z it returns is the one the live scorer judges, whose statistics freeze while flagged."""

from __future__ import annotations

import numpy as np

from training import calibrate as cal
from worker.core.adaptive import AdaptParams
from worker.core.scorer import ScorerParams


def _series(shift: float):
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(2, 1200, 1)) * 0.3
    xs[0, 600:900, 0] += shift  # sensor 0: an excursion of its level for 300 readings, then back
    err = np.abs(rng.normal(size=(2, 1200)))
    return xs, err, np.ones((2, 1200), bool)


def _live(xs, err, valid, level_scale):
    p = ScorerParams(1.0 - 1e-9, 32, 8, 1000, 0.8, 0.36)
    a = AdaptParams(accept_after=0, quiet=30, level_window=8, level_scale=level_scale)
    return cal.run_adaptive(p, a, err, xs, xs, valid, level_on=True, flat_on=False, with_level=True)


def test_with_nothing_flagged_the_live_pass_sees_the_same_level_z_as_the_learning_pass():
    xs, err, valid = _series(0.0)
    learn_all = cal.level_z_series(xs, valid, 32, 1000, 8)
    res = _live(xs, err, valid, level_scale=1e6)  # the level channel never flags
    assert not res[1].any()
    np.testing.assert_allclose(res[5][:, 1:], learn_all[:, 1:], rtol=1e-9, atol=1e-12)


def test_while_flagged_the_live_pass_keeps_the_earlier_baseline():
    xs, err, valid = _series(3.0)
    learn_all = cal.level_z_series(xs, valid, 32, 1000, 8)
    res = _live(xs, err, valid, level_scale=1.0)
    flag, z_live = res[1], res[5]
    assert flag[0, 600:900].mean() > 0.9  # the excursion is flagged throughout
    # late in the excursion the learning pass has drifted its mean towards the new level; the live one has not
    assert z_live[0, 850:900, 0].mean() > 1.5 * learn_all[0, 850:900, 0].mean()
    # the other sensor, never flagged, sees the same z in both passes
    np.testing.assert_allclose(z_live[1, 1:], learn_all[1, 1:], rtol=1e-9, atol=1e-12)


def test_the_level_scales_are_per_feature_the_larger_of_the_mature_and_the_fresh_rule():
    """Mature statistics judge feature 0 quieter than a fresh state does, feature 1 the other way round:
    each feature keeps the larger scale, with no floor (a scale below LEVEL_SCALE_MIN survives)."""
    from training.calibrate_fresh import larger_scales

    rng = np.random.default_rng(0)
    z = np.abs(rng.normal(size=(200_000, 2)))
    thr, far = 0.999, 1e-3
    mature = cal.pick_feature_scales(z * [0.3, 0.9], thr, far, cal.NO_FLOOR)
    fresh = cal.pick_feature_scales(z * [0.45, 0.5], thr, far, cal.NO_FLOOR)
    unseen = cal.pick_feature_scales(z * [0.5, 0.2], thr, far, cal.NO_FLOOR)
    assert mature[0] < fresh[0] < cal.LEVEL_SCALE_MIN and fresh[1] < mature[1]
    known, un = larger_scales(mature, fresh, unseen)
    assert known == [fresh[0], mature[1]]
    assert un == [unseen[0], mature[1]]
    assert larger_scales(mature, fresh, []) == (known, [])  # no unseen pass: unseen sensors use the known scales
    # no fresh-state pass (too few held-out readings): the mature scales with the floor, as before
    assert larger_scales(mature, [], []) == ([cal.LEVEL_SCALE_MIN, max(mature[1], cal.LEVEL_SCALE_MIN)], [])
