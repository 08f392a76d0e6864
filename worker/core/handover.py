"""Warm handover of sensor state to another model version.  Pure (no I/O).

A sensor's LSTM state (h, c) belongs to the weights that produced it: under retrained
weights it means nothing.  But every sensor keeps its recent readings in a ring (the
state table's ``recent``, ``recent_ts``, ``recent_pos``), so its state under the new
model can be *rebuilt*: start from zero and step the ring, oldest first, through the new
model.  That is what this module does, for many sensors at once, batched over the slots
of the new model's compiled step (:class:`worker.core.engine.SlotEngine`).

The same function serves a restore from a checkpoint written by another model version
and a live swap of the model (:mod:`worker.model_watch`).

What a handed-over row gets (:func:`warm_columns`):

* ``state``: the ring stepped through the new model from zero (rows with an empty ring: zero);
* scaling: the new artifact's per-sensor values where it has them (``trained``), otherwise
  the sensor's own (learned online, or an older artifact's) are kept;
* scorer statistics: the long-run error mean and variance are the *larger* of three
  estimates: learnt from the ring's errors under the new model starting from its
  calibration prior (:func:`scorer_from_ring`), the sensor's own under the old model, and
  the new prior; the short-term error is the ring's.  Measured on normal data (8 sensors,
  two fixture models, 3 data seeds x switches after 20/30/40 readings, neither model
  alone flagging anything): ring-learnt alone flagged 0-51 readings after a switch, carried
  over alone 0-20, the prior alone 18-51, the larger of the three 0 in 8 of 9 runs with a
  ring of 32 (3 readings in the ninth).  An underestimate would persist (flagged readings
  do not teach the scorer), an overestimate corrects itself;
* ``count`` (readings since reset) is kept: a handed-over sensor does not warm up again.

The ring has its own length setting (``SLOTWATCH_MODEL__RECENT_READINGS``);
:func:`fit_ring` pads or truncates rings of a checkpoint written with another length.

>>> import numpy as np
>>> recent = np.array([[[3.], [4.], [1.], [2.]]], np.float32)   # written 1, 2, 3, 4; next write at 2
>>> ts = np.array([[30, 40, 10, 20]])
>>> vals, when = ring_in_order(recent, ts, np.array([2]))
>>> vals[0, :, 0].tolist(), when[0].tolist()
([1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40])
>>> c = fit_ring({"recent": recent, "recent_ts": ts, "recent_pos": np.array([2], np.int32)}, 6)
>>> c["recent"][0, :, 0].tolist(), c["recent_pos"].tolist()
([0.0, 0.0, 1.0, 2.0, 3.0, 4.0], [0])
>>> fit_ring(c, 3)["recent"][0, :, 0].tolist()
[2.0, 3.0, 4.0]
"""

from __future__ import annotations

import numpy as np

from worker.core.scorer import ScorerParams, feature_errors, reading_error, score_step
from worker.state.table import NO_TS

#: the checkpoint column naming each row's model version (absent in older checkpoints)
VERSION_COLUMN = "model_version"


def ring_in_order(recent: np.ndarray, recent_ts: np.ndarray, recent_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rings rotated oldest first: ``(values (n, R, F), time stamps (n, R))``; empty entries
    (time ``NO_TS``) come first."""
    n, r = recent_ts.shape
    idx = (np.asarray(recent_pos, np.int64)[:, None] + np.arange(r)[None, :]) % max(r, 1)
    rows = np.arange(n)[:, None]
    return recent[rows, idx], recent_ts[rows, idx]


def fit_ring(cols: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Columns with their rings re-laid to ``length`` entries (oldest first, newest last, next write at 0).

    Longer rings keep their newest ``length`` readings; shorter ones are padded with empty
    entries in front.  Circular order is what the detector relies on, so the result reads
    the same as the original.  Returns a new dict (other columns shared).
    """
    vals, ts = ring_in_order(cols["recent"], cols["recent_ts"], cols["recent_pos"])
    n, r, f = vals.shape
    out = dict(cols)
    if length >= r:
        new_vals = np.zeros((n, length, f), np.float32)
        new_ts = np.full((n, length), NO_TS, np.int64)
        new_vals[:, length - r :] = vals
        new_ts[:, length - r :] = ts
    else:
        new_vals = np.ascontiguousarray(vals[:, r - length :], dtype=np.float32)
        new_ts = np.ascontiguousarray(ts[:, r - length :], dtype=np.int64)
    out["recent"], out["recent_ts"] = new_vals, new_ts
    out["recent_pos"] = np.zeros(n, np.int32)
    return out


def step_rings(engine, xs: np.ndarray, valid: np.ndarray, residual_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step scaled rings from zero state through ``engine``, ``engine.slots`` sensors at a time.

    ``xs`` (n, R, F) scaled readings oldest first, ``valid`` (n, R).  Returns the final
    states (n, state_size) and each reading's error under the model (n, R; NaN where not
    valid).  One compiled call per ``engine.slots`` sensors (:meth:`SlotEngine.warm`); the
    engine's live slot states are left as they were, so this may run between ticks.
    """
    n, r, f = xs.shape
    b = engine.slots
    states = np.zeros((n, engine.state_size), np.float32)
    errs = np.full((n, r), np.nan)
    if n == 0:
        return states, errs
    x = np.zeros((b, r, f), np.float32)
    m = np.zeros((b, r), bool)
    for start in range(0, n, b):
        k = min(b, n - start)
        blk_v = valid[start : start + k]
        if not blk_v.any():
            continue
        x[:k], m[:k] = xs[start : start + k], blk_v  # always the whole ring: one shape, one compilation
        x[k:], m[k:] = 0.0, False
        final, expected = engine.warm(x, m)
        states[start : start + k] = final[:k]
        e = reading_error(feature_errors(xs[start : start + k].astype(np.float64), expected[:k].astype(np.float64), residual_std))
        errs[start : start + k] = np.where(blk_v, e, np.nan)
    return states, errs


def scorer_from_ring(errs: np.ndarray, params: ScorerParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scorer statistics ``(err_mean, err_var, err_short)`` learnt from the ring's errors under the new model.

    Each row starts from the new calibration's prior and learns
    (:func:`worker.core.scorer.score_step`) from every valid error of its ring, oldest
    first, as a sensor scored by the new model since the ring's start would have (its
    first errors come from a cold state, as they do after a reset).  Rows without errors
    keep the prior.
    """
    n, r = errs.shape
    valid = ~np.isnan(errs)
    use = valid
    count = np.zeros(n, np.int64)
    mean = np.full(n, params.prior_mean)
    var = np.full(n, params.prior_var)
    short = np.full(n, params.prior_mean)
    warm = np.full(n, params.warmup)
    for t in range(r):
        sel = use[:, t]
        if not sel.any():
            continue
        _, _, _, m, v, sh = score_step(params, errs[sel, t], count[sel], warm[sel], mean[sel], var[sel], short[sel])
        mean[sel], var[sel], short[sel] = m, v, sh
        count[sel] += 1
    return mean, var, short


def warm_columns(cols: dict[str, np.ndarray], engine, scaling, params: ScorerParams, residual_std: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of state-table rows (``export_rows`` form) handed over to the model behind ``engine``.

    ``scaling``: the new artifact's :class:`~worker.core.artifact.Scaling`; ``params`` and
    ``residual_std``: its scorer parameters.  The ring must already have the table's length
    (:func:`fit_ring`).  Returns a new dict (``slot`` as given: the slot the row asks for).
    """
    out = {k: (v.copy() if isinstance(v, np.ndarray) and v.dtype != object else v) for k, v in cols.items()}
    ids = [str(s) for s in cols["sensor_id"]]
    n = len(ids)
    for j, sid in enumerate(ids):
        s = scaling.sensors.get(sid)
        if s is not None:
            out["mean"][j] = s["mean"]
            out["std"][j] = s["std"]
            out["trained"][j] = True
    vals, ts = ring_in_order(out["recent"], out["recent_ts"], out["recent_pos"])
    valid = ts != NO_TS
    std = np.where(out["std"] > 0, out["std"], 1.0)  # a row never read has no scaling yet (and an empty ring)
    xs = ((vals.astype(np.float64) - out["mean"][:, None, :]) / std[:, None, :]).astype(np.float32)
    states, errs = step_rings(engine, xs, valid, np.asarray(residual_std, np.float64))
    out["state"] = states
    counted = out["count"] > 0
    # conservative: the larger of what the ring teaches, what the sensor had, and the prior.  Too
    # small a mean/variance would flag readings the new model merely predicts less well, and
    # flagged readings do not teach the scorer, so that would persist; too large corrects itself.
    rm, rv, es = scorer_from_ring(errs, params)
    em = np.maximum.reduce([rm, out["err_mean"], np.full(n, params.prior_mean)])
    ev = np.maximum.reduce([rv, out["err_var"], np.full(n, params.prior_var)])
    out["err_mean"] = np.where(counted, em, 0.0)
    out["err_var"] = np.where(counted, ev, 0.0)
    out["err_short"] = np.where(counted, es, 0.0)
    out.pop(VERSION_COLUMN, None)
    return out


def row_versions(cols: dict[str, np.ndarray], file_version: str) -> np.ndarray:
    """Each row's model version: the checkpoint's column, or the file's version for older checkpoints."""
    n = len(cols["sensor_id"])
    v = cols.get(VERSION_COLUMN)
    if v is None or len(v) != n:
        return np.array([file_version] * n, dtype=object)
    return np.asarray([str(x) for x in v], dtype=object)


def take_rows(cols: dict[str, np.ndarray], which: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows of every column."""
    return {k: v[which] for k, v in cols.items()}


def import_warm(detector, cols: dict[str, np.ndarray], file_version: str) -> tuple[int, int]:
    """Load checkpointed rows into ``detector``; rows of another model version are warmed first.

    Rings of another length are fitted to the detector's.  Returns ``(rows, rows warmed)``.
    """
    if not len(cols.get("sensor_id", ())):
        return 0, 0
    versions = row_versions(cols, file_version)
    cols = {k: v for k, v in cols.items() if k != VERSION_COLUMN}
    if cols["recent"].shape[1] != detector.table.recent:
        cols = fit_ring(cols, detector.table.recent)
    other = versions != detector.model_version
    n_warm = int(other.sum())
    if n_warm:
        cols = {k: np.array(v, copy=True) for k, v in cols.items()}  # checkpoint arrays are read-only views
        warmed = warm_columns(take_rows(cols, other), detector.engine, detector.scaling, detector.params, detector.residual_std)
        for k, v in warmed.items():
            if k in cols:
                cols[k][other] = v
    return detector.import_partition(cols), n_warm


def hand_over(old, new, rows: np.ndarray | None = None) -> int:
    """Warm rows of detector ``old`` (all if None) into detector ``new`` (another model); returns how many.

    ``old``'s slot states are synced first; rows ``new`` already holds are overwritten.
    """
    old.sync_state()
    if rows is None:
        rows = np.arange(old.table.n_rows)
    if len(rows) == 0:
        return 0
    cols = old.table.export_rows(rows)
    if cols["recent"].shape[1] != new.table.recent:
        cols = fit_ring(cols, new.table.recent)
    warmed = warm_columns(cols, new.engine, new.scaling, new.params, new.residual_std)
    return new.import_partition(warmed)
