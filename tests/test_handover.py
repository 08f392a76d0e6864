"""Warm handover of sensor state to another model version (worker/core/handover.py), without Kafka:
the warmed state equals stepping the ring through the new model offline; checkpoints of another
model version or ring length import; the string column of row versions round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import sine_fleet
from worker.checkpointing.format import Checkpoint, decode, encode
from worker.core import artifact as art
from worker.core import handover as ho
from worker.core.detector import SlotDetector
from worker.core.engine import SlotEngine
from worker.core.readings import Reading, Score


@pytest.fixture(scope="module")
def art_a(artifact_1f):
    return art.load(artifact_1f)


@pytest.fixture(scope="module")
def art_b(artifact_1f_b):
    return art.load(artifact_1f_b)


def _readings(data, ids, start=0, t0=0):
    n, steps, _ = data.shape
    return [Reading(ids[i], t0 + 60_000 * t, data[i, t].astype(np.float64), partition=i % 2, offset=t * n + i)
            for t in range(start, steps) for i in range(n)]


def _offline_state(artifact, ring_values: np.ndarray, mean, std) -> np.ndarray:
    """The reference: one slot, no XLA, the ring's readings stepped one by one from zero."""
    m = artifact.manifest
    eng = SlotEngine(artifact.model.get_weights(), m.n_features, m.units, slots=1, jit_compile=False)
    for v in ring_values:
        x = ((np.asarray(v, np.float64) - mean) / std).astype(np.float32).reshape(1, 1, -1)
        eng.step(x, np.array([True]))
    return eng.read_state(np.array([0]))[0]


def test_warmed_state_equals_stepping_the_ring_through_the_new_model(art_a, art_b):
    n, steps = 14, 40  # more sensors than slots: paging, and several handover batches
    ids = [f"s{i}" for i in range(n)]
    data = sine_fleet(n, steps, 1, seed=4)
    a = SlotDetector(art_a, slots=8)
    a.process(_readings(data, ids))
    b = SlotDetector(art_b, slots=8)
    assert ho.hand_over(a, b) == n
    ring = a.table.recent
    for i, sid in enumerate(ids):
        row = b.table.index[sid]
        mean, std = b.table.cols["mean"][row], b.table.cols["std"][row]
        if i % 2 == 0 and i < 10:  # in model B's per-sensor scaling
            assert b.table.cols["trained"][row] and mean[0] == pytest.approx(0.05 * i)
        else:  # kept what it had under model A (A's per-sensor scaling, or learned online)
            assert np.array_equal(mean, a.table.cols["mean"][a.table.index[sid]])
        want = _offline_state(art_b, data[i, steps - ring :].astype(np.float32), mean, std)
        got = b.sensor_state(sid)
        assert np.max(np.abs(got - want)) < 1e-6, sid
        assert not np.allclose(got, a.sensor_state(sid))  # really another model's state
        assert b.table.cols["count"][row] == steps  # no warm-up again
    # the next readings are scored by B, nobody warms up, and the ring goes on
    nxt = sine_fleet(n, steps + 3, 1, seed=4)
    out = b.process(_readings(nxt, ids, start=steps))
    assert all(isinstance(o, Score) and not o.warming_up for o in out)


def test_a_short_ring_warms_what_it_has_and_an_empty_one_stays_zero(art_a, art_b):
    a = SlotDetector(art_a, slots=4)
    data = sine_fleet(2, 5, 1, seed=1)
    a.process(_readings(data, ["x0", "x1"]))
    a.table.add("x2")  # known, never read
    b = SlotDetector(art_b, slots=4)
    ho.hand_over(a, b)
    r0 = b.table.index["x0"]
    want = _offline_state(art_b, data[0].astype(np.float32), b.table.cols["mean"][r0], b.table.cols["std"][r0])
    assert np.max(np.abs(b.sensor_state("x0") - want)) < 1e-6
    assert not b.sensor_state("x2").any()


def test_checkpoint_of_another_version_imports_warm(art_a, art_b):
    n, steps = 6, 30
    ids = [f"s{i}" for i in range(n)]
    data = sine_fleet(n, steps, 1, seed=6)
    a = SlotDetector(art_a, slots=4)
    a.process(_readings(data, ids))
    cols = a.export_partition(0)
    blob = encode(Checkpoint(0, 99, art_a.version, cols))  # an older checkpoint: no version column
    ck = decode(blob)
    assert ho.VERSION_COLUMN not in ck.columns
    b = SlotDetector(art_b, slots=4)
    rows, warmed = ho.import_warm(b, ck.columns, ck.model_version)
    assert rows == warmed == n // 2
    ref = SlotDetector(art_b, slots=4)
    ho.hand_over(a, ref, a.table.rows_of_partition(0))
    for sid in ck.columns["sensor_id"]:
        assert np.max(np.abs(b.sensor_state(sid) - ref.sensor_state(sid))) < 1e-6
    # rows already of the loaded version are taken as they are
    same = SlotDetector(art_a, slots=4)
    assert ho.import_warm(same, ck.columns, ck.model_version) == (n // 2, 0)
    assert np.array_equal(same.sensor_state("s0"), a.sensor_state("s0"))


def test_row_versions_round_trip_through_the_checkpoint_format():
    cols = {"sensor_id": np.array(["a", "b"], dtype=object), "count": np.array([1, 2]),
            ho.VERSION_COLUMN: np.array(["v1", "vé2"], dtype=object)}
    ck = decode(encode(Checkpoint(0, 5, "v1", cols)))
    assert ho.row_versions(ck.columns, ck.model_version).tolist() == ["v1", "vé2"]
    del cols[ho.VERSION_COLUMN]
    ck = decode(encode(Checkpoint(0, 5, "v1", cols)))
    assert ho.row_versions(ck.columns, ck.model_version).tolist() == ["v1", "v1"]


@pytest.mark.parametrize("ring", [8, 40])
def test_a_checkpoint_with_another_ring_length_restores_and_scores_the_same(art_a, ring):
    n, steps = 4, 30
    ids = [f"s{i}" for i in range(n)]
    data = sine_fleet(n, steps + 10, 1, seed=2)
    a = SlotDetector(art_a, slots=4, recent=16)
    a.process(_readings(data[:, :steps], ids))
    ck = decode(encode(Checkpoint(0, 1, art_a.version, a.export_partition(0))))
    b = SlotDetector(art_a, slots=4, recent=ring)
    assert ho.import_warm(b, ck.columns, ck.model_version) == (n // 2, 0)
    row = b.table.index["s0"]
    vals, ts = ho.ring_in_order(b.table.cols["recent"][[row]], b.table.cols["recent_ts"][[row]], b.table.cols["recent_pos"][[row]])
    keep = min(ring, 16)
    assert np.allclose(vals[0, -keep:, 0], data[0, steps - keep : steps, 0].astype(np.float32))
    nxt = [r for r in _readings(data, ids, start=steps) if r.partition == 0]
    for x, y in zip(a.process(nxt), b.process(nxt)):
        assert (x.score, x.error, x.is_anomaly) == (y.score, y.error, y.is_anomaly)
    assert np.array_equal(a.sensor_state("s0"), b.sensor_state("s0"))
