"""One tick of the detector: slots for its sensors (paging), sequence boundaries, scaling, the
compiled step, scoring, and the results written into the batch's score columns.  Pure.

A tick takes at most one reading per sensor and at most B sensors; the caller
(:meth:`worker.core.detector.SlotDetector.process_columns`) has validated them.  Everything
is one numpy operation over the tick's sensors; only sensors that get a slot in this tick
and readings that open or close an episode cost Python per reading.
"""

from __future__ import annotations

import time

import numpy as np

from worker.core.attribution import surprise
from worker.core.columns import ReadingColumns, ScoreColumns
from worker.core.limits import SCALED_LIMIT
from worker.core.scorer import feature_errors, reading_error

_MIN_STD_FRACTION = 1e-3  # an online-learned std never drops below this share of the fleet's


def run_tick(det, rows: np.ndarray, pos: np.ndarray, cols: ReadingColumns, out: ScoreColumns) -> None:
    """Apply the readings at ``pos`` of ``cols`` (one per sensor; ``rows``: their table rows, -1 for new sensors)."""
    t_start = time.perf_counter()
    table, engine = det.table, det.engine
    c = table.cols
    rows = np.asarray(rows, np.int64)
    pos = np.asarray(pos, np.int64)
    known = rows >= 0
    if np.count_nonzero(known) == len(rows):  # np.count_nonzero: no Python wrapper, unlike .all()/.any()
        slots = c["slot"].take(rows)
    else:
        slots = np.where(known, c["slot"][rows], -1)  # rows of -1 read a row that does not count
    fresh = np.flatnonzero(slots < 0)
    if len(fresh):
        rows = rows.copy()  # _acquire fills in new sensors' rows
        keep = _acquire(det, fresh, rows, slots, pos, cols, out)
        if keep is not None:
            rows, slots, pos = rows[keep], slots[keep], pos[keep]
    if len(rows) == 0:
        return
    det.router.touch_slots(slots)
    n = len(rows)
    ts = cols.ts_ms.take(pos)
    x = cols.values.take(pos, axis=0)
    if det._seq_rows is not None:  # for the silence tracker: what was applied where
        det._seq_rows[pos] = rows
        det._seq_ts[pos] = ts

    # sequence boundaries: explicit reset, or a gap longer than max_gap
    count = c["count"].take(rows)
    req = cols.reset.take(pos)
    gap = (count > 0) & (ts - c["last_ts"].take(rows) > det.max_gap_ms)
    events: list = []  # (position in tick, EpisodeEvent)
    need = gap | req
    if np.count_nonzero(need):
        at = np.flatnonzero(need)
        events = [(int(at[j]), e) for j, e in det.episodes.close(rows[need], ts[need], "reset")]
        det._reset_rows(rows[need], slots[need])
        det.stats.resets_gap += int(gap.sum())
        det.stats.resets_request += int((req & ~gap).sum())
        count = c["count"].take(rows)

    # scaling: artifact values, or learned online for unseen sensors during warm-up
    params = det.params
    trained = c["trained"].take(rows)
    if np.count_nonzero(trained) == n:
        warm_n = np.full(n, params.warmup, np.int64)
    else:
        warm_n = np.where(trained, params.warmup, 2 * params.warmup)
        learning = (~trained) & (count < params.warmup)
        if np.count_nonzero(learning):
            _learn_scaling(det, rows, x, count, learning)
    mean = c["mean"].take(rows, axis=0)
    std = c["std"].take(rows, axis=0)
    xs = (x - mean) / std
    np.minimum(np.maximum(xs, -SCALED_LIMIT, out=xs), SCALED_LIMIT, out=xs)  # finite in float32, and its squared error

    # the compiled step over all B slots (slots without a reading: zero input, masked out)
    X = np.zeros((det.slots, det.n_features), np.float32)  # fresh each tick: the step's input
    X[slots] = xs
    M = np.zeros(det.slots, bool)
    M[slots] = True
    exp_s = engine.step(X.reshape(det._x.shape), M).take(slots, axis=0).astype(np.float64)

    fz = feature_errors(xs, exp_s, det.residual_std)
    err = reading_error(fz)
    ring = table.recent
    rpos = c["recent_pos"].take(rows)
    prev = c["recent"].reshape(-1, det.n_features)[rows * ring + (rpos - 1) % ring]  # the previous raw reading
    score, anom, warming, tail, _ = det._score_rows(rows, x, xs, err, count, warm_n, prev)
    c["count"][rows] = count + 1
    c["total"][rows] += 1
    c["last_ts"][rows] = ts
    offs = cols.offset.take(pos)
    lo = offs.min()
    if lo >= 0:
        c["last_offset"][rows] = offs
    elif offs.max() >= 0:  # readings without an offset (-1) keep the last one applied
        c["last_offset"][rows] = np.where(offs >= 0, offs, c["last_offset"][rows])
    c["recent"][rows, rpos] = x
    c["recent_ts"][rows, rpos] = ts
    c["recent_pos"][rows] = (rpos + 1) % ring  # rpos is in [0, ring)
    expected = exp_s * std + mean
    surp = surprise(tail)  # the scorer's tail probability (1 - score without cancellation)
    accepted = det._accepted  # the horizon accepted this reading's deviation as the new normal
    step_events = det.episodes.step(rows, ts, score, surp, anom, accepted, x, expected, fz)
    if step_events:
        det._end_quiet_runs(rows, step_events)
        events += step_events

    st = det.stats
    if len(det._tick_log) < 100_000:  # bounded if nobody drains it
        det._tick_log.append((time.perf_counter() - t_start, n))
    st.ticks += 1
    st.readings += n
    st.anomalies += int(np.count_nonzero(anom))
    out.put(pos, score, err, anom, warming, surp, accepted, expected, fz)
    eps = out.episodes
    for p, event in events:  # in position order: a reset's close comes before this reading's open
        eps.setdefault(int(pos[p]), []).append(event)


def _acquire(det, fresh: np.ndarray, rows: np.ndarray, slots: np.ndarray, pos: np.ndarray, cols: ReadingColumns,
             out: ScoreColumns) -> np.ndarray | None:
    """Slots (and, for new sensors, table rows) for the tick's sensors at ``fresh``; pages out their victims.

    Fills ``rows``/``slots`` in place; returns the mask of sensors that got a slot (None: all did)."""
    c = det.table.cols
    index = det.table.index
    sids = cols.sensor_id
    got = det.router.acquire_many([sids[pos[j]] for j in fresh.tolist()], slots[slots >= 0])
    keep = None
    out_rows: list[int] = []
    out_slots: list[int] = []
    in_rows: list[int] = []
    in_slots: list[int] = []
    for j, g in zip(fresh.tolist(), got):
        i = int(pos[j])
        if g is None:
            out.reject(i, "no_free_slot", f"all {det.slots} slots are taken")
            if keep is None:
                keep = np.ones(len(rows), bool)
            keep[j] = False
            continue
        slot, victim = g
        slots[j] = slot
        if victim is not None:
            out_rows.append(index[victim])
            out_slots.append(slot)
        if rows[j] < 0:
            rows[j] = det._new_sensor(sids[i], int(cols.partition[i]))
        in_rows.append(int(rows[j]))
        in_slots.append(slot)
    engine = det.engine
    if out_rows:  # page out before the slots are overwritten
        orow = np.array(out_rows)
        c["state"][orow] = engine.read_state(np.array(out_slots))
        c["slot"][orow] = -1
        det.stats.page_outs += len(out_rows)
    if in_rows:
        irow = np.array(in_rows)
        engine.write_state(np.array(in_slots), c["state"][irow])
        c["slot"][irow] = in_slots
        det.stats.page_ins += len(in_rows)
    return keep


def shrunk_std(m2: np.ndarray, k: np.ndarray, global_std: np.ndarray) -> np.ndarray:
    """An unseen sensor's std from ``k`` readings (sum of squared deviations ``m2``), shrunk towards the
    fleet's ``global_std`` as one more reading of that spread, and never below a small share of it."""
    std = np.sqrt((m2 + global_std**2) / (k + 1.0))
    return np.maximum(std, global_std * _MIN_STD_FRACTION)


def _learn_scaling(det, rows: np.ndarray, x: np.ndarray, count: np.ndarray, learning: np.ndarray) -> None:
    """Welford's mean and variance of an unseen sensor's values during its warm-up (shrunk towards the fleet's)."""
    c = det.table.cols
    params = det.params
    lr = rows[learning]
    xl = x[learning]
    k = (count[learning] + 1).astype(np.float64)[:, None]
    mean = c["mean"][lr]
    first = count[learning] == 0
    mean = np.where(first[:, None], xl, mean)
    delta = xl - mean
    mean = mean + delta / k
    m2 = np.where(first[:, None], 0.0, c["m2"][lr]) + delta * (xl - mean)
    std = shrunk_std(m2, k, det._global_std)
    c["mean"][lr], c["m2"][lr], c["std"][lr] = mean, m2, std
    ending = learning & (count + 1 >= params.warmup)
    if ending.any():  # scaling freezes now: errors and levels so far were on moving scales
        er = rows[ending]
        c["err_mean"][er] = params.prior_mean
        c["err_var"][er] = params.prior_var
        c["lvl_mean"][er] = 0.0
        c["lvl_var"][er] = 1.0
