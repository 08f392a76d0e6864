"""Training data as per-sensor sequences: checks, time order, per-sensor scaling, time split.

:func:`prepare_fleet` turns a readings frame (``sensor_id``, ``ts_ms``, features[,
``label``]) into one padded array per fleet: ``x`` (S, T, F) in scaled units, ``normal``
(S, T) = True where a reading is real and not labeled anomalous, and per sensor its
length and the index where validation starts (the last ``val_fraction`` of its time).

>>> import pandas as pd
>>> df = pd.DataFrame({"sensor_id": ["a"] * 6 + ["b"] * 4, "ts_ms": list(range(6)) + list(range(4)),
...                    "temp": [1.0, 2, 3, 4, 5, 6, 10, 11, 12, 13]})
>>> f = prepare_fleet(df, ["temp"], val_fraction=0.25, min_readings=4)
>>> f.ids, f.lengths.tolist(), f.val_start.tolist(), f.x.shape
(['a', 'b'], [6, 4], [4, 3], (2, 6, 1))
>>> prepare_fleet(df, ["rpm"])
Traceback (most recent call last):
...
training.fleet.TrainingError: unknown feature(s) ['rpm']: the data has ['temp']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger("slotwatch.train")

_STD_FLOOR = 1e-6


class TrainingError(ValueError):
    """The training input cannot be used; the message says what and where."""


@dataclass
class Fleet:
    ids: list[str]
    features: list[str]
    x: np.ndarray  # (S, T, F) float32, scaled; zero-padded after each sensor's end
    normal: np.ndarray  # (S, T) bool: real reading and not labeled anomalous
    label: np.ndarray  # (S, T) int8 (0 where padded)
    ts: np.ndarray  # (S, T) int64 epoch ms (0 where padded)
    raw: np.ndarray  # (S, T, F) float64, original units
    lengths: np.ndarray  # (S,)
    val_start: np.ndarray  # (S,) first validation index per sensor
    mean: np.ndarray  # (S, F) per-sensor scaling
    std: np.ndarray  # (S, F)
    unsorted_fixed: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def n_sensors(self) -> int:
        return len(self.ids)

    def valid(self) -> np.ndarray:
        """(S, T) True where a reading exists."""
        return np.arange(self.x.shape[1])[None, :] < self.lengths[:, None]

    def in_validation(self) -> np.ndarray:
        """(S, T) True for readings in the validation (latest) part of each sensor."""
        t = np.arange(self.x.shape[1])[None, :]
        return (t >= self.val_start[:, None]) & (t < self.lengths[:, None])

    def fleet_scaling(self) -> tuple[list[float], list[float]]:
        """The default for sensors not seen in training: the median sensor's mean and std."""
        return np.median(self.mean, axis=0).tolist(), np.median(self.std, axis=0).tolist()

    def scaling_dict(self) -> dict[str, dict[str, list[float]]]:
        return {sid: {"mean": self.mean[i].tolist(), "std": self.std[i].tolist()} for i, sid in enumerate(self.ids)}


def prepare_fleet(
    df: pd.DataFrame,
    features: list[str],
    *,
    val_fraction: float = 0.2,
    min_readings: int = 8,
    unsorted: str = "sort",
) -> Fleet:
    """Check a readings frame and build the padded per-sensor arrays (see module doc).

    ``unsorted``: a sensor whose readings are not in time order is sorted with a warning
    (``"sort"``) or refused (``"refuse"``).  Readings of one sensor with the same time
    stamp (real exports have them) are kept in file order, with a warning that counts them;
    sorting is stable, so it never reorders them.
    """
    if df is None or len(df) == 0:
        raise TrainingError("no training rows: the data is empty (check the file, or the time range of --from-kafka)")
    for col in ("sensor_id", "ts_ms"):
        if col not in df.columns:
            raise TrainingError(f"training data needs a {col!r} column, has {list(df.columns)}")
    have = [c for c in df.columns if c not in ("sensor_id", "ts", "ts_ms", "label", "anomaly_kind")]
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise TrainingError(f"unknown feature(s) {missing}: the data has {have}")
    if not features:
        raise TrainingError(f"no features to train on; the data has {have}")
    if not 0.0 < val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be in (0, 1), got {val_fraction}")
    vals = df[features].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise TrainingError(
            f"{int(bad.any(axis=1).sum())} row(s) have a missing or non-finite value, the first: sensor "
            f"{df['sensor_id'].iloc[i]!r} at ts {int(df['ts_ms'].iloc[i])}, feature {features[j]!r} = {vals[i, j]}; "
            "fill or drop them before training"
        )
    ids_col = df["sensor_id"].astype(str).to_numpy()
    ts_col = df["ts_ms"].to_numpy(dtype=np.int64)
    lab_col = df["label"].to_numpy().astype(np.int8) if "label" in df.columns else np.zeros(len(df), np.int8)

    # group rows by sensor, keeping file order inside a sensor
    order = np.argsort(ids_col, kind="stable")
    sid_sorted = ids_col[order]
    cuts = np.flatnonzero(sid_sorted[1:] != sid_sorted[:-1]) + 1
    groups = np.split(order, cuts)
    ids = [str(ids_col[g[0]]) for g in groups]
    lengths = np.array([len(g) for g in groups])
    short = [(ids[k], int(lengths[k])) for k in range(len(ids)) if lengths[k] < min_readings]
    if short:
        shown = ", ".join(f"{s!r} ({n})" for s, n in short[:5]) + (" ..." if len(short) > 5 else "")
        raise TrainingError(
            f"{len(short)} sensor(s) have fewer than {min_readings} readings, too few for a sequence with a "
            f"validation part: {shown}; drop them or give them more history"
        )
    n_fixed = 0
    n_repeated = 0
    repeated_sensors = 0
    for k, g in enumerate(groups):
        t = ts_col[g]
        d = np.diff(t)
        if (d < 0).any():
            if unsorted == "refuse":
                pos = int(np.argmax(d < 0))
                raise TrainingError(f"readings of sensor {ids[k]!r} are not in time order (ts {int(t[pos + 1])} after {int(t[pos])})")
            g = g[np.argsort(t, kind="stable")]
            groups[k] = g
            n_fixed += 1
            d = np.diff(ts_col[g])
        same = int((d == 0).sum())
        if same:
            n_repeated += same
            repeated_sensors += 1
    if n_fixed:
        log.warning("%d sensor(s) had readings out of time order; sorted them by ts", n_fixed)
    if n_repeated:
        log.warning("%d reading(s) of %d sensor(s) repeat the time stamp of the reading before; kept in file order",
                    n_repeated, repeated_sensors)

    s_, t_, f_ = len(ids), int(lengths.max()), len(features)
    raw = np.zeros((s_, t_, f_))
    label = np.zeros((s_, t_), np.int8)
    ts = np.zeros((s_, t_), np.int64)
    for k, g in enumerate(groups):
        n = len(g)
        raw[k, :n] = vals[g]
        label[k, :n] = lab_col[g]
        ts[k, :n] = ts_col[g]
    valid = np.arange(t_)[None, :] < lengths[:, None]
    normal = valid & (label == 0)
    val_start = np.maximum(1, np.floor(lengths * (1.0 - val_fraction)).astype(int))
    val_start = np.minimum(val_start, lengths - 1)

    # per-sensor scaling from the normal readings of the training part
    fit = normal & (np.arange(t_)[None, :] < val_start[:, None])
    mean = np.zeros((s_, f_))
    std = np.ones((s_, f_))
    for k in range(s_):
        m = fit[k] if fit[k].sum() >= 2 else valid[k]
        mean[k] = raw[k, m].mean(axis=0)
        std[k] = np.maximum(raw[k, m].std(axis=0), _STD_FLOOR * np.maximum(np.abs(mean[k]), 1.0))
    x = ((raw - mean[:, None, :]) / std[:, None, :]) * valid[:, :, None]
    summary = {
        "rows": int(len(df)),
        "sensors": s_,
        "features": list(features),
        "labeled_anomalous_rows": int(lab_col.sum()),
        "first_ts": int(ts_col.min()),
        "last_ts": int(ts_col.max()),
        "val_fraction": val_fraction,
        "sensors_sorted_by_time": n_fixed,
        "repeated_timestamps": n_repeated,
        # silent sensors (issue 16): each sensor's median interval seeds the worker's cadence
        "typical_interval_s": {ids[k]: round(float(np.median(np.diff(ts[k, : lengths[k]]))) / 1000.0, 3)
                               for k in range(s_)},
    }
    return Fleet(ids, list(features), x.astype(np.float32), normal, label, ts, raw, lengths, val_start, mean, std, n_fixed, summary)
