"""The silence tracker's episode events and counters (:mod:`worker.core.silence`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SilenceEvent:
    """An episode message to publish: a sensor went silent (``open``) or came back (``close``)."""

    event: str  # "open" | "close"
    sensor_id: str
    partition: int
    start_ts_ms: int  # the sensor's last reading before the silence
    ts_ms: int  # open: the stream time it was due by; close: its returning reading (or when forgotten)
    expected_interval_s: float
    readings_missed: int | None = None  # close: an estimate from the typical interval
    close_reason: str | None = None  # close: "returned" | "evicted"

    @property
    def episode_id(self) -> str:
        return f"{self.sensor_id}@{self.start_ts_ms}"

    @property
    def duration_s(self) -> float:
        return (self.ts_ms - self.start_ts_ms) / 1000.0


@dataclass
class SilenceStats:
    """Counters the edges turn into metrics (by kind, never per sensor)."""

    opened: int = 0
    closed: int = 0
    forgotten: int = 0  # evicted sensors dropped from the full last-seen table
