"""The scoring core on a real Keras model: DESIGN.md invariants 1 (parity), 2 (isolation)
and 5 (sequence boundaries), plus paging, unseen sensors, multivariate input and the
artifact contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import make_artifact, sine_fleet
from worker.core import artifact as art
from worker.core.detector import SlotDetector
from worker.core.readings import Reading, Rejection, Score
from worker.core.scorer import ScorerParams, feature_errors, reading_error, score_step

STEP_MS = 60_000


def readings_for(data: np.ndarray, ids: list[str], t0: int = 0, interleave: bool = True) -> list[Reading]:
    """Readings of (n_sensors, steps, F) data in time order (all sensors at step t, then t+1)."""
    n, steps, _ = data.shape
    out = []
    for t in range(steps):
        for i in range(n):
            out.append(Reading(ids[i], t0 + t * STEP_MS, data[i, t].astype(np.float64)))
    return out


def by_sensor(results) -> dict[str, list[Score]]:
    d: dict[str, list[Score]] = {}
    for r in results:
        assert isinstance(r, Score), r
        d.setdefault(r.sensor_id, []).append(r)
    return d


# ----------------------------------------------------------------------------- parity (1)
@pytest.mark.parametrize("which", ["artifact_1f", "artifact_3f"])
def test_parity_step_by_step_equals_whole_sequence(which, request):
    a = art.load(request.getfixturevalue(which))
    f = a.manifest.n_features
    data = sine_fleet(12, 60, f, seed=3)
    ids = [f"s{i}" for i in range(12)]  # s0..s9 have trained scaling in artifact_1f; s10, s11 do not
    det = SlotDetector(a, slots=8)  # fewer slots than sensors: paging happens too
    results = []
    rs = readings_for(data, ids)
    for start in range(0, len(rs), 37):  # odd-sized batches, as Kafka polls would be
        results += det.process(rs[start : start + 37])
    got = by_sensor(results)

    cal = a.manifest.calibration
    params = ScorerParams(cal.threshold, cal.warmup, cal.short_window, cal.long_window, cal.error_mean, cal.error_std**2)
    head_bias = a.model.get_layer("head").get_weights()[1]
    for i, sid in enumerate(ids):
        mean, std, trained = a.manifest.scaling.for_sensor(sid)
        if not trained:
            continue  # online scaling changes during warm-up; covered by test_unseen_sensor
        xs = (data[i] - mean) / std
        out = a.model(xs[None].astype("float32"), training=False).numpy()[0]  # whole sequence at once
        expected_s = np.vstack([head_bias[None, :], out[:-1]])  # before reading t: output after t-1
        err = reading_error(feature_errors(xs, expected_s, np.asarray(cal.residual_std)))
        # scores by the same scorer, one reading at a time
        cnt, m, v, s = np.zeros(1, np.int64), np.zeros(1), np.zeros(1), np.zeros(1)
        ref_scores = []
        for e in err:
            sc, _, _, m, v, s = score_step(params, np.array([e]), cnt, np.array([cal.warmup]), m, v, s)
            cnt = cnt + 1
            ref_scores.append(sc[0])
        mine = got[sid]
        assert len(mine) == 60
        np.testing.assert_allclose(np.array([r.expected for r in mine]), expected_s * std + mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose([r.error for r in mine], err, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose([r.score for r in mine], ref_scores, atol=1e-5)


# ----------------------------------------------------------------------------- isolation (2)
def test_tick_touches_only_slots_with_a_reading(artifact_1f):
    det = SlotDetector(art.load(artifact_1f), slots=8)
    data = sine_fleet(8, 5, 1, seed=1)
    det.process(readings_for(data, [f"s{i}" for i in range(8)]))
    before = det.engine.read_state(np.arange(8)).copy()
    det.process([Reading("s3", 10 * STEP_MS, np.array([0.7])), Reading("s5", 10 * STEP_MS, np.array([-0.2]))])
    after = det.engine.read_state(np.arange(8))
    s3, s5 = det.router.slot_of("s3"), det.router.slot_of("s5")
    untouched = [k for k in range(8) if k not in (s3, s5)]
    assert np.array_equal(before[untouched].view(np.uint32), after[untouched].view(np.uint32))  # bit for bit
    assert not np.array_equal(before[s3], after[s3]) and not np.array_equal(before[s5], after[s5])


def test_scores_do_not_depend_on_batch_mates(artifact_1f):
    a = art.load(artifact_1f)
    data = sine_fleet(16, 40, 1, seed=5)
    ids = [f"s{i}" for i in range(16)]
    alone = SlotDetector(a, slots=16)
    solo = by_sensor(alone.process(readings_for(data[:1], ids[:1])))["s0"]
    crowd = SlotDetector(a, slots=16)
    # other sensors with different data, some with extra readings between s0's
    mixed = readings_for(data, ids)
    noise = [Reading("noisy", r.ts_ms, np.array([9.0 * np.sin(r.ts_ms)])) for r in mixed[::3]]
    shared = by_sensor(crowd.process(sorted(mixed + noise, key=lambda r: r.ts_ms)))["s0"]
    np.testing.assert_allclose([r.score for r in solo], [r.score for r in shared], atol=1e-6)
    np.testing.assert_allclose([r.error for r in solo], [r.error for r in shared], atol=1e-6)


# ----------------------------------------------------------------------------- paging
def test_paging_2000_sensors_through_16_slots_equals_2048_slots(artifact_1f):
    a = art.load(artifact_1f)
    n, steps = 2000, 6
    rng = np.random.default_rng(11)
    data = rng.normal(size=(n, steps, 1)).cumsum(axis=1) * 0.3
    ids = [f"dev-{i}" for i in range(n)]
    rs = readings_for(data, ids)
    rng.shuffle(rs)  # arrival order mixes sensors; each sensor's own order must still be by time
    rs.sort(key=lambda r: r.ts_ms)
    small = SlotDetector(a, slots=16)
    big = SlotDetector(a, slots=2048)
    res_small = []
    for start in range(0, len(rs), 500):
        res_small += small.process(rs[start : start + 500])
    res_big = big.process(rs)
    assert small.stats.page_outs > 1000 and big.stats.page_outs == 0
    s, b = by_sensor(res_small), by_sensor(res_big)
    for sid in ids[::50]:
        np.testing.assert_allclose([r.score for r in s[sid]], [r.score for r in b[sid]], atol=1e-5)
        np.testing.assert_allclose(np.array([r.expected for r in s[sid]]), np.array([r.expected for r in b[sid]]), atol=1e-5)
    # the state after paging equals the state that never left its slot
    for sid in ids[:: 97]:
        np.testing.assert_allclose(small.sensor_state(sid), big.sensor_state(sid), atol=1e-5)


def test_reject_mode_refuses_when_full(artifact_1f):
    det = SlotDetector(art.load(artifact_1f), slots=2, when_full="reject")
    out = det.process([Reading(s, 0, np.array([0.0])) for s in ("a", "b", "c")])
    assert isinstance(out[0], Score) and isinstance(out[1], Score)
    assert isinstance(out[2], Rejection) and out[2].reason == "no_free_slot" and out[2].sensor_id == "c"
    assert isinstance(det.process([Reading("a", 1, np.array([0.1]))])[0], Score)  # slot holders carry on


# ----------------------------------------------------------------------------- boundaries (5)
def _fresh_scores(a, data, sid, t0=0):
    det = SlotDetector(a, slots=4)
    return by_sensor(det.process([Reading(sid, t0 + t * STEP_MS, data[t]) for t in range(len(data))]))[sid]


def test_reset_by_request_restarts_state_and_warmup(artifact_1f):
    a = art.load(artifact_1f)
    data = sine_fleet(1, 40, 1, seed=2)[0]
    det = SlotDetector(a, slots=4)
    det.process([Reading("s1", t * STEP_MS, data[t]) for t in range(20)])
    after = det.process([Reading("s1", (20 + t) * STEP_MS, data[20 + t], reset=(t == 0)) for t in range(20)])
    fresh = _fresh_scores(a, data[20:], "s1", 20 * STEP_MS)
    assert after[0].warming_up and all(r.warming_up for r in after[: a.manifest.calibration.warmup])
    np.testing.assert_allclose([r.score for r in after], [r.score for r in fresh], atol=1e-6)
    np.testing.assert_allclose([r.error for r in after], [r.error for r in fresh], atol=1e-6)
    assert det.stats.resets_request == 1
    # and the API call does the same
    assert det.reset("s1") and det.table.cols["count"][det.table.index["s1"]] == 0
    assert np.all(det.sensor_state("s1") == 0)


def test_gap_longer_than_max_resets(artifact_1f):
    a = art.load(artifact_1f)
    data = sine_fleet(1, 40, 1, seed=4)[0]
    det = SlotDetector(a, slots=4, max_gap_ms=10 * STEP_MS)
    det.process([Reading("s2", t * STEP_MS, data[t]) for t in range(20)])
    late_start = 19 * STEP_MS + 11 * STEP_MS  # 11 steps of silence > 10 allowed
    after = det.process([Reading("s2", late_start + t * STEP_MS, data[20 + t]) for t in range(20)])
    fresh = _fresh_scores(a, data[20:], "s2", late_start)
    np.testing.assert_allclose([r.score for r in after], [r.score for r in fresh], atol=1e-6)
    assert after[0].warming_up and det.stats.resets_gap == 1
    # a gap within the limit does not reset
    det2 = SlotDetector(a, slots=4, max_gap_ms=10 * STEP_MS)
    det2.process([Reading("s2", t * STEP_MS, data[t]) for t in range(20)])
    out = det2.process([Reading("s2", 29 * STEP_MS, data[20])])
    assert det2.stats.resets_gap == 0 and not out[0].warming_up


def test_late_reading_is_rejected_not_applied(artifact_1f):
    det = SlotDetector(art.load(artifact_1f), slots=4)
    det.process([Reading("s1", 5000, np.array([0.1]))])
    state = det.sensor_state("s1").copy()
    out = det.process([Reading("s1", 4000, np.array([0.2]), partition=0, offset=9)])
    assert isinstance(out[0], Rejection) and out[0].reason == "late" and out[0].offset == 9
    assert np.array_equal(state, det.sensor_state("s1"))


# ----------------------------------------------------------------------------- unseen / multivariate
def test_unseen_sensor_learns_scaling_and_is_not_flagged_while_warming(artifact_1f):
    a = art.load(artifact_1f)
    warm = a.manifest.calibration.warmup
    rng = np.random.default_rng(0)
    t = np.arange(200)
    x = 1500.0 + 40.0 * np.sin(2 * np.pi * t / 30) + rng.normal(0, 2, 200)  # far from the fleet's scale
    x[150] += 600.0  # an obvious spike after warm-up
    det = SlotDetector(a, slots=4)
    out = det.process([Reading("never-seen", int(k) * STEP_MS, np.array([x[k]])) for k in t])
    row = det.table.index["never-seen"]
    assert not det.table.cols["trained"][row]
    assert abs(det.table.cols["mean"][row][0] - 1500.0) < 60 and 5 < det.table.cols["std"][row][0] < 80
    assert all(r.warming_up and not r.is_anomaly for r in out[: 2 * warm])
    assert not any(r.warming_up for r in out[2 * warm :])
    assert out[150].is_anomaly and out[150].score > 0.999
    assert abs(out[149].expected[0] - x[149]) < 60  # expected values in the sensor's own units


def test_multivariate_reading_is_one_step(artifact_3f):
    a = art.load(artifact_3f)
    assert a.manifest.n_features == 3 and a.manifest.units == [12, 8]
    det = SlotDetector(a, slots=4)
    data = sine_fleet(2, 30, 3, seed=8)
    out = det.process(readings_for(data, ["m0", "m1"]))
    assert len(out) == 60 and det.stats.ticks == 30
    assert all(r.expected.shape == (3,) for r in out)
    # a value-count mismatch is a rejection (issue 10), not an exception, and changes nothing
    before = det.table.export_rows(np.arange(det.table.n_rows))
    bad = det.process([Reading("m0", 10**9, np.array([1.0, 2.0]))])[0]
    assert isinstance(bad, Rejection) and bad.reason == "missing_feature" and "the model takes (3,)" in bad.detail
    after = det.table.export_rows(np.arange(det.table.n_rows))
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- artifact contract
def test_artifact_roundtrip_and_latest_pointer(artifact_1f):
    a = art.load(artifact_1f.parent)  # the folder: follows `latest`
    assert a.path.parent == artifact_1f.parent
    assert (artifact_1f / "model.keras").is_file() and json.loads((artifact_1f / "manifest.json").read_text())["format_version"] == 1


def test_wrong_artifact_is_refused_with_what_differs(artifact_1f, tmp_path):
    with pytest.raises(art.ArtifactError, match=r"features \['temp'\].*expect \['temp', 'rpm'\]"):
        art.load(artifact_1f, features=["temp", "rpm"])
    with pytest.raises(art.ArtifactError, match="no model at"):
        art.load(tmp_path / "nothing")
    # a manifest that lies about the network
    bad = tmp_path / "bad"
    shutil.copytree(artifact_1f, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["units"] = [32]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match=r"LSTM units \[16\], the manifest says \[32\]"):
        art.load(bad)
    m["units"] = [16]
    m["features"] = ["temp", "rpm"]
    m["scaling"]["mean"] = [0, 0]
    m["scaling"]["std"] = [1, 1]
    m["calibration"]["residual_std"] = [0.5, 0.5]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match="takes 1 and gives 1 features, the manifest lists 2"):
        art.load(bad)
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match="format_version 99 is not supported"):
        art.load(bad)
    del m["calibration"]
    m["format_version"] = 1
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match="lacks the field 'calibration'"):
        art.load(bad)
    (bad / "model.keras").write_bytes(b"garbage")
    m2 = json.loads((artifact_1f / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(art.ArtifactError, match="does not load safely"):
        art.load(bad)


def test_artifact_versions_are_immutable(artifact_1f, tmp_path):
    a = art.load(artifact_1f)
    with pytest.raises(art.ArtifactError, match="immutable"):
        art.save(artifact_1f, a.model, a.manifest)
