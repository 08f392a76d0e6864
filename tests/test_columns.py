"""Issue 11: the columnar path scores exactly like the per-reading detector it replaced.

``tests/reference_detector.py`` keeps the old per-reading ``process`` verbatim; every test here
runs the same batches through it and through :meth:`SlotDetector.process_columns` (and its
``process`` wrapper) and compares row for row (scores bit for bit, rejections with their details,
episode events) and the final state (every table column, engine slots, router, counters).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.message_path import snapshot
from tests.reference_detector import ReferenceDetector
from worker.core import artifact as art
from worker.core.columns import SCORED, ReadingColumns
from worker.core.detector import SlotDetector
from worker.core.readings import Reading, Rejection, Score
from worker.core.silence import SilenceTracker

MIN = 60_000
T0 = 1_795_168_800_000


@pytest.fixture(scope="module")
def a1(artifact_1f):
    return art.load(artifact_1f)


@pytest.fixture(scope="module")
def a3(artifact_3f):
    return art.load(artifact_3f)


def same_result(a, b) -> None:
    """Two results of one reading are identical (scores bit for bit)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, Rejection):
        assert (a.reason, a.detail, a.sensor_id, a.partition, a.offset) == (b.reason, b.detail, b.sensor_id, b.partition, b.offset)
        return
    assert (a.sensor_id, a.ts_ms, a.partition, a.offset, a.label) == (b.sensor_id, b.ts_ms, b.partition, b.offset, b.label)
    for k in ("score", "error", "surprise", "threshold"):
        assert np.float64(getattr(a, k)).tobytes() == np.float64(getattr(b, k)).tobytes(), k
    assert (a.is_anomaly, a.warming_up, a.accepted) == (b.is_anomaly, b.warming_up, b.accepted)
    assert np.asarray(a.expected, np.float64).tobytes() == np.asarray(b.expected, np.float64).tobytes()
    assert np.asarray(a.feature_z, np.float64).tobytes() == np.asarray(b.feature_z, np.float64).tobytes()
    assert np.asarray(a.values).tobytes() == np.asarray(b.values).tobytes()
    assert (a.episodes or []) == (b.episodes or [])


def same_state(ref, det) -> None:
    assert snapshot(ref) == snapshot(det)
    assert vars(ref.stats) == vars(det.stats)
    assert ref.drain_evicted() == det.drain_evicted()
    assert ref.drain_episode_events() == det.drain_episode_events()
    if ref.silence is not None:
        assert ref.silence.drain() == det.silence.drain()
        assert vars(ref.silence.stats) == vars(det.silence.stats)


def mixed_batches(seed: int, n_batches: int, n_features: int = 1, hostile: bool = True):
    """Batches with paging (many sensors), several readings per sensor, late readings, resets, gaps,
    unseen and trained sensors, wrong partitions and (``hostile``) values and ids the core must refuse."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(10)] + [f"new-{i}" for i in range(14)]
    part_of = {s: k % 3 for k, s in enumerate(ids)}
    clock = {s: T0 - 500 * MIN for s in ids}
    off = 0
    for _ in range(n_batches):
        batch = []
        for _ in range(int(rng.integers(1, 60))):
            s = ids[int(rng.integers(len(ids)))]
            step = int(rng.choice([1] * 12 + [2, 90])) * MIN  # 90 min: longer than max_gap
            clock[s] += step
            ts = clock[s]
            kind = int(rng.integers(40))
            reset, part = False, part_of[s]
            vals = np.sin(ts / 7e6 + np.arange(n_features)) + 0.1 * rng.normal(size=n_features)
            if kind == 0:
                ts -= 5 * MIN  # late
            elif kind == 1:
                ts -= 5 * MIN
                reset = True  # late but a reset: applied
            elif kind == 2:
                reset = True
            elif kind == 3:
                part = (part + 1) % 3  # wrong partition
            elif kind == 4:
                vals = vals + 40.0  # an anomaly now and then
            elif hostile and kind == 5:
                vals = vals.copy()
                vals[0] = [np.nan, np.inf, 1e39, -3.5e38][int(rng.integers(4))]
            elif hostile and kind == 6:
                ts = [10**20, -5, 1.5, True][int(rng.integers(4))]
            elif hostile and kind == 7:
                vals = [np.ones(n_features + 1), np.array(["x"] * n_features, dtype=object), [1.0] * n_features,
                        np.ones(n_features, np.float32)][int(rng.integers(4))]
            elif hostile and kind == 8:
                s = ["\ud800", "x" * 300, "", " ", 17][int(rng.integers(5))]
            off += 1
            batch.append(Reading(s, ts, vals, partition=part, offset=off, reset=reset, label=int(kind == 4)))
        yield batch


def pair(a, **kw):
    return ReferenceDetector(a, **kw), SlotDetector(a, **kw)


@pytest.mark.parametrize("seed,kw", [
    (0, dict(slots=4)),  # paging every batch
    (1, dict(slots=4, max_sensors=12, max_gap_ms=30 * MIN)),  # capacity: idle evictions, no_capacity
    (2, dict(slots=64)),  # every sensor holds a slot
    (3, dict(slots=3, when_full="reject")),  # no_free_slot
    (4, dict(slots=6, max_sensor_id_bytes=8)),
])
def test_process_equals_the_per_reading_detector(a1, seed, kw):
    ref, det = pair(a1, **kw)
    for batch in mixed_batches(seed, 40):
        want = ref.process(batch)
        cols = ReadingColumns.from_readings(batch, det.n_features)
        got = det.process_columns(cols).to_objects(batch)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            same_result(g, w)
    same_state(ref, det)
    kinds = {o.reason if isinstance(o, Rejection) else "score" for o in want}
    assert "score" in kinds


def test_the_batches_reach_every_path(a1):
    """The batches above are only worth something if they hit paging, resets, late, hostile input and episodes."""
    det = SlotDetector(a1, slots=4, max_sensors=12, max_gap_ms=30 * MIN)
    reasons, episodes = set(), 0
    for batch in mixed_batches(1, 25):
        for o in det.process(batch):
            reasons.add("score" if isinstance(o, Score) else o.reason)
            episodes += bool(isinstance(o, Score) and o.episodes)
    assert {"score", "late", "wrong_partition", "non_finite", "bad_timestamp", "bad_sensor_id", "missing_feature",
            "non_numeric", "no_capacity"} <= reasons, reasons
    st = det.stats
    assert st.page_outs and st.resets_gap and st.resets_request and st.evicted_idle and st.anomalies and episodes, (st, episodes)


def test_three_features_and_silence_tracking(a3):
    kw = dict(slots=5, max_gap_ms=60 * MIN)
    ref, det = pair(a3, **kw)
    ref.silence, det.silence = SilenceTracker(floor_s=30.0), SilenceTracker(floor_s=30.0)
    for batch in mixed_batches(5, 20, n_features=3):
        for g, w in zip(det.process(batch), ref.process(batch)):
            same_result(g, w)
    same_state(ref, det)


def test_process_columns_rows_equal_process(a1):
    """Objects made from the score columns alone (no reading objects) equal what ``process`` returns."""
    a, b = SlotDetector(a1, slots=4), SlotDetector(a1, slots=4)
    for batch in mixed_batches(7, 10, hostile=False):
        cols = ReadingColumns.from_readings(batch, 1)
        sc = b.process_columns(cols)
        want = a.process(batch)
        assert sc.counts().get("scored", 0) == sum(isinstance(w, Score) for w in want)
        for i, w in enumerate(want):
            g = sc.row(i)
            assert (sc.status[i] == SCORED) == isinstance(w, Score)
            same_result(g, w)
    assert snapshot(a) == snapshot(b)


def test_readings_of_one_sensor_become_successive_ticks_in_any_cut(a1):
    """However a stream is cut into batches, the scores are the same (one batch vs one reading at a time)."""
    stream = [r for batch in mixed_batches(11, 6, hostile=False) for r in batch]
    whole, single = SlotDetector(a1, slots=4), SlotDetector(a1, slots=4)
    got = whole.process(stream)
    want = [single.process([r])[0] for r in stream]
    for g, w in zip(got, want):
        same_result(g, w)


def test_empty_batch(a1):
    det = SlotDetector(a1, slots=4)
    sc = det.process_columns(ReadingColumns.from_readings([], 1))
    assert len(sc) == 0 and sc.counts() == {} and det.process([]) == []
