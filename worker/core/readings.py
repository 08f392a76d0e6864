"""The values that flow through the scoring core: a reading in, a score or a rejection out.

These are plain data; the Kafka codec (``worker.codec``) and the file reader
(``worker.datafile``) turn bytes and rows into :class:`Reading`, and the sinks turn
:class:`Score` and :class:`Rejection` into messages and rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

#: Reason codes of rejected input (dead-letter topic, metrics label). One place for all.
REASONS = (
    "not_json",
    "not_object",
    "missing_sensor_id",
    "bad_timestamp",
    "missing_feature",
    "non_numeric",
    "non_finite",
    "too_large",
    "late",
    "no_free_slot",
    # hardening (issue 10): bounds and capacity
    "bad_sensor_id",
    "wrong_partition",
    "no_capacity",
    "internal_error",
)


@dataclass(slots=True)
class Reading:
    """One reading of one sensor: ``values`` holds the model's features in artifact order.

    ``partition``/``offset`` say where it came from (-1 outside Kafka); ``reset`` asks
    the core to zero the sensor's state before this reading.
    """

    sensor_id: str
    ts_ms: int
    values: np.ndarray
    partition: int = -1
    offset: int = -1
    reset: bool = False
    label: int | None = None


@dataclass(slots=True)
class Score:
    """The core's verdict on one reading (the contract of the scores topic)."""

    sensor_id: str
    ts_ms: int
    score: float
    error: float
    is_anomaly: bool
    threshold: float
    warming_up: bool
    values: np.ndarray
    expected: np.ndarray
    partition: int = -1
    offset: int = -1
    label: int | None = None
    # issue 9 episodes: how surprising the score is, per-feature deviation, episode events
    surprise: float = 0.0  # -log10 of the tail probability (worker.core.attribution.surprise)
    feature_z: np.ndarray | None = None  # per feature: (actual - expected) in typical residuals
    episodes: list | None = None  # EpisodeEvents this reading opened or closed (worker.core.episodes)
    accepted: bool = False  # this reading's deviation was accepted as the sensor's new normal (horizon, issue 9)


@dataclass(slots=True)
class Rejection:
    """A reading the core or the codec refused, with one of :data:`REASONS`."""

    reason: str
    detail: str
    sensor_id: str | None = None
    partition: int = -1
    offset: int = -1
    raw: bytes | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")


class BadTimestamp(ValueError):
    pass


def parse_ts(ts: object) -> int:
    """Epoch milliseconds from an ISO-8601 string or a number of epoch milliseconds.

    Only instants from 1970-01-01 to 9999-12-31 are accepted (what :func:`format_ts` can
    write back); anything else, including digits that are not ASCII, is a
    :class:`BadTimestamp`, never another exception.

    >>> parse_ts("2026-11-20T10:00:00Z")
    1795168800000
    >>> parse_ts(1795168800000)
    1795168800000
    >>> parse_ts("yesterday")
    Traceback (most recent call last):
    ...
    worker.core.readings.BadTimestamp: unparsable timestamp 'yesterday'
    >>> parse_ts(1e300)
    Traceback (most recent call last):
    ...
    worker.core.readings.BadTimestamp: timestamp 1e+300 is outside 1970-01-01 .. 9999-12-31
    """
    try:
        ms = _parse_ts(ts)
    except (ValueError, OverflowError, TypeError):
        raise BadTimestamp(f"unparsable timestamp {_shown(ts)}") from None
    if not (TS_MIN_MS <= ms <= TS_MAX_MS):
        raise BadTimestamp(f"timestamp {_shown(ts)} is outside 1970-01-01 .. 9999-12-31")
    return ms


#: 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z: the instants format_ts can write
TS_MIN_MS, TS_MAX_MS = 0, 253_402_300_799_999


def _shown(ts: object) -> str:
    text = repr(ts)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_ts(ts: object) -> int:
    if isinstance(ts, bool):
        raise BadTimestamp(f"unparsable timestamp {ts!r}")
    if isinstance(ts, (int, np.integer)):
        return int(ts)
    if isinstance(ts, (float, np.floating)):
        if not math.isfinite(ts):
            raise BadTimestamp(f"unparsable timestamp {ts!r}")
        return int(ts)
    if isinstance(ts, str):
        s = ts.strip()
        digits = s[1:] if s.startswith("-") else s
        if digits.isascii() and digits.isdigit():  # "²".isdigit() is true, int("²") is not
            if len(digits) > 19:
                raise OverflowError("too many digits")
            return int(s)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    raise BadTimestamp(f"unparsable timestamp {ts!r}")


def format_ts(ts_ms: int) -> str:
    """ISO-8601 UTC with milliseconds: ``format_ts(1795168800000) == '2026-11-20T10:00:00.000Z'``."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
