"""Bounds on what one reading may carry, checked before anything is stored.  Pure.

The codec (Kafka input) and the detector (every input, also ``slotwatch replay``) both
use these checks, so a reading that would overflow a column, break an encoder or poison a
sensor's state is rejected with a reason instead of crashing the worker later.

>>> sensor_id_problem("pump-17", 256) is None
True
>>> sensor_id_problem("\\ud800", 256)
'sensor_id is not valid UTF-8 (lone surrogate at 0)'
>>> sensor_id_problem("x" * 300, 256)
'sensor_id has 300 bytes, limit 256'
>>> ts_problem(1_795_168_800_000, now_ms=1_795_168_800_000, max_future_ms=60_000) is None
True
>>> ts_problem(1_795_168_900_000, now_ms=1_795_168_800_000, max_future_ms=60_000)
'ts 2026-11-20T10:01:40.000Z is 100.0 s in the future (limit 60.0 s)'
>>> values_problem(np.array([1.0, 1e39]), 2)
('non_finite', 'value 1 (1e+39) is beyond the float32 range')
"""

from __future__ import annotations

import math

import numpy as np

from worker.core.readings import TS_MAX_MS, TS_MIN_MS, format_ts

#: the largest float32: values are stored and stepped in float32
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: scaled inputs are clipped to +-this before the LSTM step and the error (1e6 standard deviations
#: is an anomaly either way; beyond it float32 inputs and squared errors could overflow)
SCALED_LIMIT = 1e6


def sensor_id_problem(sensor_id: object, max_bytes: int) -> str | None:
    """Why ``sensor_id`` cannot be stored (None when it can): a non-empty str of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(sensor_id, str) or not sensor_id.strip():
        return "sensor_id is not a non-empty string"
    try:
        n = len(sensor_id.encode("utf-8"))
    except UnicodeEncodeError as e:
        return f"sensor_id is not valid UTF-8 (lone surrogate at {e.start})"
    if n > max_bytes:
        return f"sensor_id has {n} bytes, limit {max_bytes}"
    return None


def ts_problem(ts_ms: int, now_ms: int | None = None, max_future_ms: int | None = None) -> str | None:
    """Why ``ts_ms`` is refused (None when it is fine): outside [1970, 9999], or further than
    ``max_future_ms`` ahead of ``now_ms`` (when both are given)."""
    if not (TS_MIN_MS <= ts_ms <= TS_MAX_MS):
        return f"ts {ts_ms} ms is outside 1970-01-01 .. 9999-12-31"
    if now_ms is not None and max_future_ms is not None and ts_ms > now_ms + max_future_ms:
        return (f"ts {format_ts(ts_ms)} is {(ts_ms - now_ms) / 1000:.1f} s in the future "
                f"(limit {max_future_ms / 1000:.1f} s)")
    return None


def values_problem(values: object, n_features: int) -> tuple[str, str] | None:
    """(reason, detail) when ``values`` is not ``n_features`` finite numbers within float32 range."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return "non_numeric", "values are not numbers"
    if v.shape != (n_features,):
        return "missing_feature", f"reading has values of shape {v.shape}, the model takes ({n_features},)"
    for k, x in enumerate(v.tolist()):
        if not math.isfinite(x):
            return "non_finite", f"value {k} is {x!r}"
        if abs(x) > FLOAT32_MAX:
            return "non_finite", f"value {k} ({x:.3g}) is beyond the float32 range"
    return None
