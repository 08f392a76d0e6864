"""The adaptive scorer through the real core (worker/core/adaptive.py): horizon, level channel,
stillness against a sensor's own history, older checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.conftest import sine_fleet
from worker.core import artifact as art
from worker.core.adaptive import AdaptParams
from worker.core.detector import SlotDetector
from worker.core.readings import Reading

STEP_MS = 1000


def _artifact(path, **cal):
    a = art.load(path)
    m = copy.deepcopy(a.manifest)
    for k, v in cal.items():
        setattr(m.calibration, k, v)
    return art.Artifact(a.path, m, a.model)


def _run(det, sid, values, start=0):
    return det.process([Reading(sid, (start + t) * STEP_MS, np.atleast_1d(np.float64(v))) for t, v in enumerate(values)])


def test_a_step_change_is_flagged_at_once_then_accepted_within_the_horizon(artifact_1f):
    a = _artifact(artifact_1f, level_window=8, level_scale=1.0)
    horizon, quiet = 150, 10
    det = SlotDetector(a, slots=4, scoring=AdaptParams(accept_after=horizon, quiet=quiet))
    base = sine_fleet(1, 900, 1, seed=4)[0, :, 0]
    values = base.copy()
    shift_at = 300
    values[shift_at:] += 6.0  # a lasting change of level
    out = _run(det, "s1", values)
    flags = np.array([o.is_anomaly for o in out])
    acc = np.array([o.accepted for o in out])
    assert not flags[100:shift_at].any()  # quiet before
    assert flags[shift_at]  # flagged from its first reading
    assert flags[shift_at : shift_at + 100].mean() > 0.9  # and kept flagged: not learned away within a few readings
    assert acc.sum() >= 1 and not acc[:shift_at].any()
    first_acc = int(np.argmax(acc))
    assert first_acc <= shift_at + horizon + quiet  # accepted within the horizon ...
    assert out[first_acc].is_anomaly
    assert not flags[first_acc + 50 :].any()  # ... and the new level is normal from then on (never flagged for ever)
    # the same detector without a horizon keeps flagging the new level
    never = SlotDetector(a, slots=4, scoring=AdaptParams(accept_after=0, quiet=quiet))
    f2 = np.array([o.is_anomaly for o in _run(never, "s1", values)])
    assert f2[first_acc + 50 :].mean() > 0.9


def test_an_incident_shorter_than_the_horizon_is_not_accepted(artifact_1f):
    a = _artifact(artifact_1f, level_window=8, level_scale=1.0)
    det = SlotDetector(a, slots=4, scoring=AdaptParams(accept_after=150, quiet=10))
    values = sine_fleet(1, 600, 1, seed=5)[0, :, 0]
    values[300:400] += 6.0  # a 100-reading incident, then back
    out = _run(det, "s1", values)
    flags = np.array([o.is_anomaly for o in out])
    assert flags[300:400].mean() > 0.9 and not any(o.accepted for o in out)
    assert flags[420:].mean() < 0.05  # back to normal: quiet again, nothing was learned from the incident


def test_a_flat_sensor_is_not_stuck_but_one_that_stops_moving_is(artifact_1f):
    a = _artifact(artifact_1f, flat_window=8)
    det = SlotDetector(a, slots=4, scoring=AdaptParams(flat_min_run=4))
    flat = _run(det, "flat", [3.25] * 600)  # flat from its first reading (unseen sensor, zero-shot)
    assert not any(o.is_anomaly for o in flat)
    step = np.repeat([0.2, 0.6, 0.2, 0.6, 0.4, 0.2], 100)  # stepwise by nature: changes once every 100 readings
    sf = np.array([o.is_anomaly for o in _run(det, "s2", step)])
    between = np.ones(600, bool)
    for k in range(0, 600, 100):
        between[k : k + 10] = False  # a step itself may surprise the next-reading error for a few readings
    assert not sf[between].any() and sf.sum() <= 12
    moving = sine_fleet(1, 300, 1, seed=6)[0, :, 0]
    stuck = np.concatenate([moving, np.full(60, moving[-1])])  # moved for 300 readings, then stuck
    out = _run(det, "s3", stuck)
    flags = np.array([o.is_anomaly for o in out])
    assert not flags[100:300].any()
    assert flags[300:310].any() and flags[310:360].all()  # flagged within a few readings, and stays flagged


def test_checkpoint_without_the_adaptive_columns_restores_with_defaults(artifact_1f):
    from worker.state.table import COLUMN_DEFAULTS
    from worker.core.adaptive import ADAPT_COLUMNS

    a = art.load(artifact_1f)
    det = SlotDetector(a, slots=4)
    _run(det, "s1", sine_fleet(1, 50, 1, seed=1)[0, :, 0])
    data = det.export_partition(-1)
    old = {k: v for k, v in data.items() if k not in ADAPT_COLUMNS}  # as written before the columns existed
    det2 = SlotDetector(a, slots=4)
    assert det2.import_partition(old) == 1
    row = det2.table.index["s1"]
    assert det2.table.cols["lvl_var"][row].tolist() == [COLUMN_DEFAULTS["lvl_var"]]
    assert det2.table.cols["move_rate"][row].tolist() == [COLUMN_DEFAULTS["move_rate"]]
    assert det2.table.cols["adapt_len"][row] == 0
    more = _run(det2, "s1", sine_fleet(1, 60, 1, seed=1)[0, 50:, 0], start=50)
    assert all(np.isfinite(o.score) for o in more)
    with pytest.raises(KeyError):  # a column that always existed is still required
        det2.import_partition({k: v for k, v in data.items() if k != "err_mean"})


def _level_flags(a, values, horizon=0):
    from worker.settings import ScoringSettings

    # scoring from settings, so the level channel takes the artifact's calibration (as the worker builds it)
    det = SlotDetector(a, slots=4, scoring=ScoringSettings(accept_after=horizon, flat_min_run=0))
    return np.array([o.is_anomaly for o in det.process([Reading("s0", t * STEP_MS, v) for t, v in enumerate(values)])])


def test_level_scale_per_feature_keeps_a_steady_feature_sensitive(artifact_3f):
    """A wandering feature's calibrated scale no longer makes the level channel blind to a lasting
    change of a feature that holds still (SKAB: temperature drifts, flow rate drops)."""
    base = sine_fleet(1, 700, 3, seed=8)[0]
    shift_at = 300
    values = base.copy()
    values[shift_at:, 0] += 2.0  # a lasting change of feature 0 only
    one = _artifact(artifact_3f, level_window=8, level_scale=4.0)  # one scale for all, set by the most wandering feature
    per = _artifact(artifact_3f, level_window=8, level_scale=4.0, level_feature_scale=[0.5, 4.0, 4.0])
    f_one, f_per = _level_flags(one, values), _level_flags(per, values)
    assert not f_per[150:shift_at].any()  # quiet before
    assert f_per[shift_at + 20 : shift_at + 200].mean() > 0.95  # the steady feature's own scale keeps the change flagged
    assert f_one[shift_at + 20 : shift_at + 200].mean() < 0.8  # with the one scale only the error channel sees it, now and then
    # the same change on the feature whose own scale is large: the level channel lets it through
    wander = base.copy()
    wander[shift_at:, 1] += 2.0
    assert _level_flags(per, wander)[shift_at + 20 : shift_at + 200].mean() < 0.8


def test_an_artifact_without_per_feature_level_scales_uses_its_one_scale(artifact_3f, tmp_path):
    import json

    a = _artifact(artifact_3f, level_window=8, level_scale=1.5, level_feature_scale=[1.0, 2.0, 3.0])
    d = art.save(tmp_path / "new", a.model, a.manifest, set_latest=False)
    m = json.loads((d / "manifest.json").read_text())
    assert m["calibration"]["level_feature_scale"] == [1.0, 2.0, 3.0]
    del m["calibration"]["level_feature_scale"]  # as written before the field existed
    (d / "manifest.json").write_text(json.dumps(m))
    old = art.load(d)
    assert old.manifest.calibration.level_feature_scale == []
    det = SlotDetector(old, slots=4)
    assert det.adapt.level_scales == () and det.adapt.level_scale == 1.5
    assert SlotDetector(art.load(artifact_3f), slots=4).adapt.level_scales == ()
    bad = copy.deepcopy(a.manifest)
    with pytest.raises(art.ArtifactError):
        bad.calibration.level_feature_scale = [1.0, 0.0, 1.0]
        bad.calibration.__post_init__()


def _scores(a, sid, values):
    """(T, 2): each reading's surprise (all channels' tail) and flag."""
    from worker.settings import ScoringSettings

    det = SlotDetector(a, slots=4, scoring=ScoringSettings(flat_min_run=0))  # the level channel from the artifact
    return np.array([(o.surprise, o.is_anomaly) for o in det.process([Reading(sid, t * STEP_MS, np.atleast_1d(np.float64(v)) if np.ndim(v) == 0 else v) for t, v in enumerate(values)])])


def test_an_artifact_without_unseen_level_scales_scores_as_before(artifact_3f, tmp_path):
    """Older artifacts (no ``level_feature_scale_unseen``) score every sensor by ``level_feature_scale``,
    exactly as before; an artifact with unseen scales scores a sensor unseen in training by them."""
    import json

    base = sine_fleet(1, 500, 3, seed=8)[0]
    values = base.copy()
    values[250:, 0] += 2.0  # a lasting change of feature 0
    now = _artifact(artifact_3f, level_window=8, level_scale=4.0, level_feature_scale=[0.5, 4.0, 4.0])
    d = art.save(tmp_path / "old", now.model, now.manifest, set_latest=False)
    m = json.loads((d / "manifest.json").read_text())
    assert m["calibration"].pop("level_feature_scale_unseen") == []
    (d / "manifest.json").write_text(json.dumps(m))
    old = art.load(d)
    assert old.manifest.calibration.level_feature_scale_unseen == []
    det = SlotDetector(old, slots=4)
    assert det.adapt.level_scales == (0.5, 4.0, 4.0) and det.adapt.level_scales_unseen == ()
    np.testing.assert_array_equal(_scores(old, "s0", values), _scores(now, "s0", values))
    # the same artifact with its own scales for unseen sensors (artifact_3f has no trained sensors)
    un = _artifact(artifact_3f, level_window=8, level_scale=4.0, level_feature_scale=[0.5, 4.0, 4.0],
                   level_feature_scale_unseen=[4.0, 4.0, 4.0])
    f_now, f_un = _level_flags(now, values), _level_flags(un, values)
    assert f_now[270:450].mean() > 0.95  # the known scale 0.5 keeps the change flagged
    assert f_un[270:450].mean() < 0.8  # the unseen scale 4.0 lets it through
    with pytest.raises(art.ArtifactError):
        bad = copy.deepcopy(un.manifest)
        bad.calibration.level_feature_scale_unseen = [1.0, 0.0, 1.0]
        bad.calibration.__post_init__()


def test_a_sensor_known_to_training_keeps_the_known_level_scales(artifact_1f):
    values = sine_fleet(1, 500, 1, seed=4)[0, :, 0].copy()
    values[250:] += 3.0
    known = _artifact(artifact_1f, level_window=8, level_scale=0.5, level_feature_scale=[0.5])
    both = _artifact(artifact_1f, level_window=8, level_scale=0.5, level_feature_scale=[0.5], level_feature_scale_unseen=[5.0])
    np.testing.assert_array_equal(_scores(both, "s1", values), _scores(known, "s1", values))  # s1: trained scaling
    assert not np.array_equal(_scores(both, "new", values), _scores(known, "new", values))  # unseen: its own scales
