"""The state changelog's pure part: row encoding, incremental selection, the restore fold."""

from __future__ import annotations

import numpy as np
import pytest

from worker.checkpointing import changelog as cl
from worker.core.handover import VERSION_COLUMN
from worker.state.table import COLUMNS, NO_TS, StateTable


def _table(ids, seed=0, n_features=3, state_size=8) -> StateTable:
    t = StateTable(n_features=n_features, state_size=state_size, recent=4)
    t.add_many(list(ids), partition=2)
    rng = np.random.default_rng(seed)
    n = t.n_rows
    for name, (dtype, _) in COLUMNS.items():
        col = t.cols[name][:n]
        if dtype.startswith("float"):
            col[...] = rng.standard_normal(col.shape)
        elif dtype == "bool":
            col[...] = rng.random(col.shape) < 0.5
        elif name not in ("partition", "slot"):
            col[...] = rng.integers(-(2**40), 2**40, col.shape)
    t.cols["state"][0, 0] = np.nan  # bit for bit includes NaN payloads and -0.0
    t.cols["err_mean"][1 % n] = -0.0
    t.cols["ep_start_ts"][0] = NO_TS
    return t


def _export(t: StateTable, version="v1") -> dict[str, np.ndarray]:
    cols = t.export_rows(t.rows_of_partition(2))
    cols[VERSION_COLUMN] = np.array([version] * len(cols["sensor_id"]), dtype=object)
    return cols


def _by_sensor(cols):
    order = np.argsort(np.array(cols["sensor_id"].tolist(), dtype=str), kind="stable")
    return {k: v[order] for k, v in cols.items()}


def assert_same(a: dict, b: dict, restored: bool = True) -> None:
    """Equal bit for bit, except the slot (a placement; a restore has -1: see changelog.UNPLACED)."""
    a, b = _by_sensor(a), _by_sensor(b)
    assert set(a) == set(b)
    if restored and "slot" in a:
        assert (a["slot"] == -1).all() or (b["slot"] == -1).all()
    for k in a:
        if k == "slot":
            continue
        if a[k].dtype == object:
            assert a[k].tolist() == b[k].tolist(), k
        else:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), k


def test_round_trip_is_bit_for_bit_with_strings():
    t = _table(["pump-1", "pompe-é", "泵-3", "x" * 300])
    cols = _export(t, version="model-é 2")
    recs = cl.encode_round(2, 1000, cols, np.arange(4), model_version="model-é 2")
    assert [r.key for r in recs[1:5]] == [s.encode() for s in cols["sensor_id"]]
    hdr = dict(recs[1].headers)
    assert hdr == {cl.H_PARTITION: b"2", cl.H_OFFSET: b"1000", cl.H_VERSION: "model-é 2".encode()}
    res = cl.fold(recs, committed=1000)
    assert res.n_sensors == 4 and res.marker_next == 1000 and res.skipped_beyond == 0
    assert_same(res.columns, cols)
    # the columns are what import takes: a fresh table restores them
    t2 = StateTable(n_features=3, state_size=8, recent=4)
    t2.import_rows(res.columns)
    assert_same(_export(t2, "model-é 2"), cols)


def test_uncompacted_log_with_generations_and_rows_beyond_the_committed_offset():
    t = _table(["a", "b", "c"])
    log, written, snapshots = [], {}, {}
    for rnd, nxt in enumerate((100, 200, 300, 400)):
        if rnd:  # sensor "a" reads every round, "b" every other round, "c" only in the first
            ra = t.index["a"]
            t.cols["last_offset"][ra] = nxt - 1
            t.cols["state"][ra] += 1.0
            if rnd % 2 == 0:
                rb = t.index["b"]
                t.cols["last_offset"][rb] = nxt - 2
                t.cols["total"][rb] += 1
        cols = _export(t)
        rows = cl.select_changed(cols, written)
        log += cl.encode_round(2, nxt, cols, rows, "v1")
        cl.note_written(written, cols, rows)
        snapshots[nxt] = cols
    assert sum(r.key == b"a" for r in log) == 4 and sum(r.key == b"c" for r in log) == 1
    for committed in (100, 200, 300, 400):
        res = cl.fold(log, committed)
        assert_same(res.columns, snapshots[committed])
        assert res.marker_next == committed
    res = cl.fold(log, 250)  # between rounds: rows of round 300 and 400 belong to replayed readings
    assert_same(res.columns, snapshots[200])
    assert res.skipped_beyond == 3  # a@300, b@300, a@400
    assert res.written == dict(zip(snapshots[200]["sensor_id"].tolist(), snapshots[200]["last_offset"].tolist()))
    assert cl.fold(log, 99).n_sensors == 0 and cl.fold(log, 99).marker_next is None


def test_incremental_rounds_write_only_changed_rows_and_tombstones():
    ids = [f"s{i:04d}" for i in range(1000)]
    t = _table(ids)
    written: dict[str, int] = {}
    cols = _export(t)
    full = cl.encode_round(2, 10, cols, cl.select_changed(cols, written), "v1")
    cl.note_written(written, cols, np.arange(1000))
    changed = np.arange(0, 1000, 10)  # 1% ... 10% of the rows
    t.cols["last_offset"][changed] += 1
    t.cols["count"][changed] += 1
    gone = [t.ids[r] for r in (1, 2)]
    t.remove_rows(np.array([1, 2]))
    cols = _export(t)
    rows = cl.select_changed(cols, written)
    assert sorted(cols["sensor_id"][rows].tolist()) == sorted(ids[i] for i in changed)
    removed = cl.removed_ids(cols, written)
    assert removed == sorted(gone)
    inc = cl.encode_round(2, 20, cols, rows, "v1", removed=removed)
    size = lambda recs: sum(len(r.key) + len(r.value or b"") for r in recs)  # noqa: E731
    assert len(inc) == 1 + len(changed) + 2 + 1
    assert size(inc) < 0.15 * size(full)
    cl.note_written(written, cols, rows, removed)
    assert cl.select_changed(cols, written).size == 0 and cl.removed_ids(cols, written) == []
    res = cl.fold(full + inc, committed=20)
    assert res.tombstoned == 2
    assert_same(res.columns, cols)
    assert cl.fold(full + inc, committed=10).n_sensors == 1000  # the removal is beyond 10


def test_a_late_lower_stamp_does_not_override_a_newer_row():
    """A zombie writer's late record (stamped at an older round) loses against the newer stamp."""
    t = _table(["a"])
    old = _export(t)
    t.cols["last_offset"][0] += 5
    t.cols["state"][0] += 2
    new = _export(t)
    log = cl.encode_round(2, 50, new, np.arange(1), "v1") + cl.encode_round(2, 40, old, np.arange(1), "v1")
    assert_same(cl.fold(log, 60).columns, new)
    assert_same(cl.fold(log, 45).columns, old)


def test_rows_of_an_older_schema_get_the_documented_defaults():
    t = _table(["a", "b"])
    cols = _export(t)
    older = {k: v for k, v in cols.items() if k not in ("ep_start_ts", "ep_quiet")}
    log = cl.encode_round(2, 10, {k: v[:1] for k, v in older.items()}, np.arange(1), "v1")
    log += cl.encode_round(2, 20, {k: v[1:] for k, v in cols.items()}, np.arange(1), "v1")
    res = _by_sensor(cl.fold(log, 20).columns)
    assert res["sensor_id"].tolist() == ["a", "b"]
    assert res["ep_start_ts"].tolist() == [NO_TS, cols["ep_start_ts"][1]]
    assert res["ep_quiet"].tolist() == [0, cols["ep_quiet"][1]]
    assert res["state"].tobytes() == cols["state"].tobytes()


def test_fence_and_unknown_internal_keys_are_not_sensors_and_a_missing_schema_is_loud():
    t = _table(["a"])
    recs = cl.encode_round(2, 10, _export(t), np.arange(1), "v1")
    fence = cl.ChangelogRecord(cl.FENCE_KEY, b"token", [])
    assert cl.fold(recs + [fence], 10).columns["sensor_id"].tolist() == ["a"]
    with pytest.raises(cl.CorruptChangelog, match="no schema record"):
        cl.fold(recs[1:], 10)
    with pytest.raises(cl.CorruptChangelog, match="header"):
        cl.fold([cl.ChangelogRecord(b"a", recs[1].value, [])], 10)


def test_the_worker_side_writes_changed_rows_and_every_row_after_a_model_swap():
    from worker.kafka.changelog import ChangelogStore

    store = ChangelogStore(None, None, "unused")  # prepare/acked touch no broker
    t = _table([f"s{i}" for i in range(20)])
    rows_of = lambda rnd: [r.key for r in rnd[1] if not r.key.startswith(b"__")]  # noqa: E731
    rnd = store.prepare(2, _export(t, "v1"), 100, "v1")
    assert len(rows_of(rnd)) == 20  # first round: everything
    store.acked([rnd])
    t.cols["last_offset"][[3, 7]] += 1
    rnd = store.prepare(2, _export(t, "v1"), 110, "v1")
    assert rows_of(rnd) == [b"s3", b"s7"]
    store.acked([rnd])
    rnd = store.prepare(2, _export(t, "v2"), 120, "v2")  # a live swap: every row's state changed
    assert len(rows_of(rnd)) == 20 and {dict(r.headers)[cl.H_VERSION] for r in rnd[1]} == {b"v2"}
    rnd_unacked = store.prepare(2, _export(t, "v2"), 120, "v2")
    assert len(rows_of(rnd_unacked)) == 20  # not acknowledged yet: still to write
    store.acked([rnd_unacked])
    assert rows_of(store.prepare(2, _export(t, "v2"), 130, "v2")) == []
    store.forget(2)
    assert len(rows_of(store.prepare(2, _export(t, "v2"), 140, "v2"))) == 20
