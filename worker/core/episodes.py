"""Alerts as episodes: one message when a sensor starts deviating, one when it stops.

An *episode* of a sensor opens at its first flagged reading and closes

* ``quiet``: after a quiet period — ``quiet_readings`` unflagged readings in a row, or an
  unflagged reading at least ``quiet_s`` seconds of stream time (reading time stamps)
  after the last flagged one, whichever comes first (0 turns either off);
* ``accepted``: when the scorer accepts the deviation as the sensor's new normal
  (``Score.accepted``, the adaptive scorer's horizon);
* ``reset``: when the sensor's sequence restarts (explicit reset, or a gap longer than
  ``max_gap``), before the reading that caused it is scored;
* ``evicted`` (or another reason a caller gives :meth:`EpisodeTracker.close`).

The close is decided on the sensor's own readings only, never on wall-clock time or on
other sensors, so a replay of the same readings after a crash yields the same events.
A sensor that stops sending keeps its episode open until it sends again.

The state is a few columns per sensor of the state table (``ep_*`` in
:data:`worker.state.table.COLUMNS`), so it is checkpointed with everything else; a tick
reads one column for all its sensors and does more only for the few in an episode.

>>> t = EpisodeTracker(["temp"], quiet_readings=2)
>>> def reading(ts, score, flagged, temp=70.0, z=0.5):
...     return dict(sensor_id="p1", ts_ms=ts, score=score, surprise=-np.log10(1 - score), flagged=flagged,
...                 values=[temp], expected=[70.0 - z], z=[z])
>>> t.learn_one(**reading(1000, 0.3, False))
[]
>>> [e.event for e in t.learn_one(**reading(2000, 0.9999, True, z=6.0))]
['open']
>>> t.learn_one(**reading(3000, 0.99999, True, z=8.0)) + t.learn_one(**reading(4000, 0.4, False))
[]
>>> (e,) = t.learn_one(**reading(5000, 0.2, False))
>>> e.event, e.close_reason, e.readings_flagged, e.duration_s, round(e.peak_surprise, 6), e.features[0]["z"]
('close', 'quiet', 2, 1.0, 5.0, 8.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.core.attribution import top_features
from worker.state.table import NO_TS, StateTable

#: close reasons of the shared episode schema (``returned`` is issue 16's: a silent sensor came back)
CLOSE_REASONS = ("quiet", "accepted", "returned", "reset", "evicted")
KINDS = ("score", "flatline", "silent")


@dataclass(frozen=True)
class EpisodeParams:
    """When an episode closes, and how many features its messages name."""

    quiet_readings: int = 30  # also ends the adaptive scorer's run (worker.core.adaptive)
    quiet_s: float = 0.0
    top_features: int = 3

    def __post_init__(self) -> None:
        if self.quiet_readings < 0 or self.quiet_s < 0 or self.top_features < 0:
            raise ValueError("episode settings must not be negative")
        if self.quiet_readings == 0 and self.quiet_s == 0:
            raise ValueError("an episode needs a quiet period: set quiet_readings or quiet_s above 0")


@dataclass(frozen=True)
class EpisodeEvent:
    """An episode opened or closed (the episode message of the anomalies topic, before encoding).

    ``score``/``surprise``/``features``: open — of the opening reading; close — at the peak.
    """

    event: str  # "open" | "close"
    kind: str
    sensor_id: str
    start_ts_ms: int
    ts_ms: int  # time stamp of the reading that opened / closed it
    score: float
    surprise: float
    features: list[dict] = field(default_factory=list)
    end_ts_ms: int | None = None  # close: the last flagged reading
    readings_flagged: int = 0
    close_reason: str | None = None

    @property
    def episode_id(self) -> str:
        return f"{self.sensor_id}@{self.start_ts_ms}"

    @property
    def duration_s(self) -> float:
        """Close: from the first to the last flagged reading, in seconds of stream time."""
        return 0.0 if self.end_ts_ms is None else (self.end_ts_ms - self.start_ts_ms) / 1000.0

    @property
    def peak_score(self) -> float:
        return self.score

    @property
    def peak_surprise(self) -> float:
        return self.surprise


class EpisodeTracker:
    """Episodes of every sensor of a :class:`~worker.state.table.StateTable` (``table``), or of
    its own small table when used alone (:meth:`learn_one`)."""

    def __init__(self, features: Sequence[str], quiet_readings: int = 30, quiet_s: float = 0.0, top_features: int = 3,
                 table: StateTable | None = None, kind: str = "score") -> None:
        self.params = EpisodeParams(int(quiet_readings), float(quiet_s), int(top_features))
        self.features = list(features)
        self.table = table if table is not None else StateTable(len(self.features), 1, 1, capacity=4)
        self.kind = kind
        self._quiet_ms = int(round(self.params.quiet_s * 1000))

    @classmethod
    def from_params(cls, features: Sequence[str], params: EpisodeParams | None, table: StateTable | None = None):
        p = params or EpisodeParams()
        return cls(features, p.quiet_readings, p.quiet_s, p.top_features, table=table)

    # ------------------------------------------------------------------ one stream
    def learn_one(self, sensor_id: str, ts_ms: int, score: float, surprise: float, flagged: bool, values, expected, z,
                  accepted: bool = False) -> list[EpisodeEvent]:
        """Feed one scored reading of one sensor; returns the events it caused."""
        row = self.table.index.get(sensor_id)
        if row is None:
            row = self.table.add(sensor_id)
        a = lambda v, dt=np.float64: np.asarray([v], dtype=dt)  # noqa: E731
        out = self.step(a(row, np.int64), a(ts_ms, np.int64), a(score), a(surprise), a(flagged, bool), a(accepted, bool),
                        np.asarray([values], np.float64), np.asarray([expected], np.float64), np.asarray([z], np.float64))
        return [e for _, e in out]

    # ------------------------------------------------------------------ a tick
    def step(self, rows: np.ndarray, ts: np.ndarray, score: np.ndarray, surprise: np.ndarray, flagged: np.ndarray,
             accepted: np.ndarray, values: np.ndarray, expected: np.ndarray, z: np.ndarray) -> list[tuple[int, EpisodeEvent]]:
        """Apply one scored reading per row (rows distinct); returns ``(position, event)`` in position order."""
        c = self.table.cols
        start_col = c["ep_start_ts"]
        was = start_col.take(rows) != NO_TS
        act = flagged | was
        if not np.count_nonzero(act):
            return []
        pos = np.nonzero(act)[0]
        r, f, w, t = rows[pos], flagged[pos], was[pos], ts[pos]
        su = surprise[pos]
        opening = f & ~w
        if np.count_nonzero(opening):
            o = r[opening]
            start_col[o] = t[opening]
            c["ep_flagged"][o] = 0
            c["ep_quiet"][o] = 0
        # flagged readings: count them, restart the quiet period, keep the peak (by surprise; first wins ties)
        peak = f & (opening | (su > c["ep_peak_surprise"][r]))
        if np.count_nonzero(f):
            fr = r[f]
            c["ep_flagged"][fr] += 1
            c["ep_quiet"][fr] = 0
            c["ep_last_ts"][fr] = t[f]
        if np.count_nonzero(peak):
            pr, pp = r[peak], pos[peak]
            c["ep_peak_score"][pr] = score[pp]
            c["ep_peak_surprise"][pr] = surprise[pp]
            c["ep_peak_ts"][pr] = ts[pp]
            c["ep_peak_actual"][pr] = values[pp]
            c["ep_peak_expected"][pr] = expected[pp]
            c["ep_peak_z"][pr] = z[pp]
        quiet = w & ~f
        closing = np.zeros(len(pos), bool)
        if np.count_nonzero(quiet):
            qr = r[quiet]
            q = c["ep_quiet"][qr] + 1
            c["ep_quiet"][qr] = q
            done = np.zeros(len(qr), bool)
            if self.params.quiet_readings:
                done |= q >= self.params.quiet_readings
            if self._quiet_ms:
                done |= t[quiet] - c["ep_last_ts"][qr] >= self._quiet_ms
            closing[np.nonzero(quiet)[0][done]] = True
        acc = accepted[pos]
        if not np.count_nonzero(opening | closing | acc):
            return []
        out: list[tuple[int, EpisodeEvent]] = []
        k, feats = self.params.top_features, self.features
        ids = self.table.ids
        closed: list[int] = []
        for j in np.nonzero(opening | closing | acc)[0].tolist():
            p, row = int(pos[j]), int(r[j])
            if opening[j]:
                out.append((p, EpisodeEvent("open", self.kind, ids[row], int(t[j]), int(t[j]), float(score[p]), float(su[j]),
                                            top_features(feats, values[p], expected[p], z[p], k))))
            if acc[j] or closing[j]:
                out.append((p, self._close_event(row, int(t[j]), "accepted" if acc[j] else "quiet")))
                closed.append(row)
        if closed:
            clear_episodes(self.table, np.asarray(closed, np.int64))
        return out

    def close(self, rows: np.ndarray, ts: np.ndarray, reason: str) -> list[tuple[int, EpisodeEvent]]:
        """Close the open episodes of ``rows`` now (at stream time ``ts`` each) for ``reason``."""
        if reason not in CLOSE_REASONS:
            raise ValueError(f"unknown close reason {reason!r}")
        rows = np.asarray(rows, np.int64).reshape(-1)
        ts = np.broadcast_to(np.asarray(ts, np.int64), rows.shape)
        open_ = np.nonzero(self.table.cols["ep_start_ts"][rows] != NO_TS)[0]
        out = [(j, self._close_event(int(rows[j]), int(ts[j]), reason)) for j in open_.tolist()]
        clear_episodes(self.table, rows[open_])
        return out

    def _close_event(self, row: int, ts_ms: int, reason: str) -> EpisodeEvent:
        """The close message of ``row``'s open episode (the caller then clears the rows it closed)."""
        c = self.table.cols
        ev = EpisodeEvent(
            "close", self.kind, self.table.ids[row], int(c["ep_start_ts"][row]), ts_ms,
            float(c["ep_peak_score"][row]), float(c["ep_peak_surprise"][row]),
            top_features(self.features, c["ep_peak_actual"][row], c["ep_peak_expected"][row], c["ep_peak_z"][row],
                         self.params.top_features),
            end_ts_ms=int(c["ep_last_ts"][row]), readings_flagged=int(c["ep_flagged"][row]), close_reason=reason,
        )
        return ev

    def open_count(self) -> int:
        """Sensors of the table with an episode open now."""
        n = self.table.n_rows
        return int(np.count_nonzero(self.table.cols["ep_start_ts"][:n] != NO_TS))


def clear_episodes(table: StateTable, rows: np.ndarray) -> None:
    """No episode open for ``rows`` (the columns' documented defaults)."""
    c = table.cols
    c["ep_start_ts"][rows] = NO_TS
    for name in ("ep_last_ts", "ep_quiet", "ep_flagged", "ep_peak_score", "ep_peak_surprise", "ep_peak_ts",
                 "ep_peak_actual", "ep_peak_expected", "ep_peak_z"):
        c[name][rows] = 0
