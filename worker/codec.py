"""Bytes of the Kafka topics <-> the core's values.  Pure: no Kafka, no I/O.

Input (readings topic, value; the key is only used for partitioning)::

    {"sensor_id": "pump-17", "ts": "2026-11-20T10:00:00Z", "values": {"temp": 71.2}}

``ts`` may be epoch milliseconds; ``"value": 71.2`` is accepted for one-feature models;
``"reset": true`` restarts the sensor's sequence before this reading.  Anything wrong
becomes a :class:`~worker.core.readings.Rejection` with a reason code, never an exception.

>>> c = ReadingCodec(["temp"], max_bytes=1024)
>>> r = c.decode(b'{"sensor_id": "p1", "ts": 1000, "value": 71.5}', partition=0, offset=7)
>>> r.sensor_id, r.ts_ms, r.values.tolist(), r.offset
('p1', 1000, [71.5], 7)
>>> c.decode(b'{"sensor_id": "p1", "ts": 1000, "values": {"temp": NaN}}').reason
'non_finite'
>>> c.decode(b'\\xff').reason
'not_json'

Output: :func:`encode_score` and :func:`encode_episode` are the one place a score and an
episode event become bytes, so a duplicate published after a restart carries exactly the
same bytes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np

from worker.core.attribution import top_features
from worker.core.episodes import EpisodeEvent
from worker.core.limits import FLOAT32_MAX, sensor_id_problem, ts_problem
from worker.core.readings import BadTimestamp, Reading, Rejection, Score, format_ts, parse_ts

_NUMBER = (int, float)


class ReadingCodec:
    """Decode readings for a model with ``features`` (in artifact order).

    Bounds (see :mod:`worker.core.limits`): the sensor id is at most ``max_sensor_id_bytes``
    of valid UTF-8; ``ts`` lies between 1970 and ``clock()`` + ``max_future_s`` (no upper
    bound but 9999 when ``max_future_s`` is None); feature values are finite and within
    float32 range.

    >>> c = ReadingCodec(["temp"], max_future_s=60, clock=lambda: 1000.0)
    >>> c.decode(b'{"sensor_id": "p1", "ts": 1061000, "value": 1}').reason
    'bad_timestamp'
    >>> c.decode(b'{"sensor_id": "p1", "ts": 1000, "value": 1e39}').reason
    'non_finite'
    >>> c.decode(b'{"sensor_id": "\\ud800", "ts": 1000, "value": 1}').reason
    'bad_sensor_id'
    """

    def __init__(self, features: list[str], max_bytes: int = 65536, *, max_sensor_id_bytes: int = 256,
                 max_future_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.features = list(features)
        self.max_bytes = int(max_bytes)
        self.max_sensor_id_bytes = int(max_sensor_id_bytes)
        self.max_future_ms = None if max_future_s is None else int(max_future_s * 1000)
        self.clock = clock

    def decode(self, raw: bytes | None, partition: int = -1, offset: int = -1) -> Reading | Rejection:
        def reject(reason: str, detail: str, sid: str | None = None) -> Rejection:
            return Rejection(reason, detail, sid, partition, offset, raw)

        if raw is None:
            return reject("not_json", "empty message (null value)")
        if len(raw) > self.max_bytes:
            return reject("too_large", f"{len(raw)} bytes, limit {self.max_bytes}")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return reject("not_json", f"not UTF-8: {e.reason} at byte {e.start}")
        except (ValueError, RecursionError) as e:  # JSONDecodeError, or an integer of more than 4300 digits
            return reject("not_json", f"not JSON: {e}")
        if not isinstance(obj, dict):
            return reject("not_object", f"JSON {type(obj).__name__}, expected an object")
        sid = obj.get("sensor_id")
        if not isinstance(sid, str) or not sid.strip():
            shown = "missing" if sid is None else f"{sid!r} is not a non-empty string"
            return reject("missing_sensor_id", f"sensor_id {shown}")
        why = sensor_id_problem(sid, self.max_sensor_id_bytes)
        if why is not None:
            return reject("bad_sensor_id", why)  # no sensor id on the dead letter: it cannot be encoded
        if "ts" not in obj:
            return reject("bad_timestamp", "ts missing", sid)
        try:
            ts_ms = parse_ts(obj["ts"])
        except BadTimestamp as e:
            return reject("bad_timestamp", str(e), sid)
        if self.max_future_ms is not None:
            why = ts_problem(ts_ms, int(self.clock() * 1000), self.max_future_ms)
            if why is not None:
                return reject("bad_timestamp", why, sid)
        values = obj.get("values")
        if values is None and "value" in obj:
            if len(self.features) != 1:
                return reject("missing_feature", f"'value' given, but the model takes {self.features}", sid)
            values = {self.features[0]: obj["value"]}
        if not isinstance(values, dict):
            return reject("missing_feature", f"no 'values' object with {self.features}", sid)
        out = np.empty(len(self.features), np.float64)
        for k, name in enumerate(self.features):
            if name not in values:
                return reject("missing_feature", f"feature {name!r} missing", sid)
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, _NUMBER):
                return reject("non_numeric", f"feature {name!r} is {v!r}", sid)
            try:
                fv = float(v)
            except OverflowError:
                return reject("non_finite", f"feature {name!r} overflows a float", sid)
            if not math.isfinite(fv):
                return reject("non_finite", f"feature {name!r} is {v!r}", sid)
            if abs(fv) > FLOAT32_MAX:
                return reject("non_finite", f"feature {name!r} ({fv:.3g}) is beyond the float32 range", sid)
            out[k] = fv
        reset = obj.get("reset", False) is True
        return Reading(sid, ts_ms, out, partition=partition, offset=offset, reset=reset)


def encode_reading(sensor_id: str, ts: str | int, values: dict[str, float], reset: bool = False) -> bytes:
    """The bytes of one reading as producers should send it (used by the demo, tests and benchmarks).

    >>> encode_reading("p1", 1000, {"temp": 1.5})
    b'{"sensor_id":"p1","ts":1000,"values":{"temp":1.5}}'
    """
    d: dict = {"sensor_id": sensor_id, "ts": ts, "values": values}
    if reset:
        d["reset"] = True
    return json.dumps(d, separators=(",", ":")).encode("utf-8")


def score_dict(s: Score, features: list[str], model_version: str, top_k: int = 3) -> dict:
    """The JSON object of a score (scores and anomalies topics).

    ``surprise`` separates scores near 1 (:func:`worker.core.attribution.surprise`); ``z`` is
    every feature's deviation in typical residuals; a flagged score also names the ``top_k``
    features that deviated most (``features``, most deviating first)."""
    d = {
        "sensor_id": s.sensor_id,
        "ts": format_ts(s.ts_ms),
        "ts_ms": int(s.ts_ms),
        "score": float(s.score),
        "surprise": float(s.surprise),
        "error": float(s.error),
        "is_anomaly": bool(s.is_anomaly),
        "threshold": float(s.threshold),
        "model_version": model_version,
        "warming_up": bool(s.warming_up),
        "values": {f: float(v) for f, v in zip(features, s.values)},
        "expected": {f: float(v) for f, v in zip(features, s.expected)},
    }
    if s.feature_z is not None:
        d["z"] = {f: float(v) for f, v in zip(features, s.feature_z)}
        if s.is_anomaly:
            d["features"] = top_features(features, s.values, s.expected, s.feature_z, top_k)
    d["partition"] = int(s.partition)
    d["offset"] = int(s.offset)
    d["type"] = "score"
    return d


def encode_score(s: Score, features: list[str], model_version: str, top_k: int = 3) -> bytes:
    """Deterministic bytes of a score: same score, same bytes.

    >>> s = Score("p1", 0, 0.5, 1.25, False, 0.999, True, np.array([1.0]), np.array([0.75]), 0, 3)
    >>> encode_score(s, ["temp"], "v1")[:60]
    b'{"sensor_id":"p1","ts":"1970-01-01T00:00:00.000Z","ts_ms":0,'
    """
    return _dumps(score_dict(s, features, model_version, top_k))


def episode_dict(e: EpisodeEvent, model_version: str) -> dict:
    """The JSON object of an episode event (the team's shared episode schema, anomalies topic)."""
    d = {
        "type": "episode",
        "event": e.event,
        "kind": e.kind,
        "sensor_id": e.sensor_id,
        "episode_id": e.episode_id,
        "start_ts": format_ts(e.start_ts_ms),
        "start_ts_ms": int(e.start_ts_ms),
        "ts": format_ts(e.ts_ms),
        "ts_ms": int(e.ts_ms),
        "model_version": model_version,
    }
    if e.event == "open":
        d["score"] = float(e.score)
        d["surprise"] = float(e.surprise)
    else:
        end = e.start_ts_ms if e.end_ts_ms is None else e.end_ts_ms
        d.update({
            "end_ts": format_ts(end),
            "end_ts_ms": int(end),
            "duration_s": float(e.duration_s),
            "readings_flagged": int(e.readings_flagged),
            "peak_score": float(e.peak_score),
            "peak_surprise": float(e.peak_surprise),
            "close_reason": e.close_reason,
        })
    d["features"] = [{"feature": f["feature"], "actual": float(f["actual"]), "expected": float(f["expected"]),
                      "z": float(f["z"])} for f in e.features]
    return d


def encode_episode(e: EpisodeEvent, model_version: str) -> bytes:
    """Deterministic bytes of an episode event: the same event after a restart, the same bytes.

    >>> from worker.core.episodes import EpisodeEvent
    >>> f = [{"feature": "temp", "actual": 71.0, "expected": 64.0, "z": 5.5}]
    >>> encode_episode(EpisodeEvent("open", "score", "p1", 0, 0, 0.9999, 4.0, f), "v1")[:65]
    b'{"type":"episode","event":"open","kind":"score","sensor_id":"p1",'
    """
    return _dumps(episode_dict(e, model_version))


def _dumps(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":"), allow_nan=False).encode("utf-8")


def dead_letter_headers(rej: Rejection, source_topic: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter message (its value is the original bytes).

    >>> dict(dead_letter_headers(Rejection("late", "old", "p1", 2, 40), "readings"))["reason"]
    b'late'
    """
    h = [
        ("reason", rej.reason.encode()),
        ("detail", rej.detail.encode("utf-8", "replace")[:1000]),  # "replace": a lone surrogate cannot break it
        ("source_topic", source_topic.encode()),
        ("source_partition", str(rej.partition).encode()),
        ("source_offset", str(rej.offset).encode()),
    ]
    if rej.sensor_id is not None:
        h.append(("sensor_id", rej.sensor_id.encode("utf-8", "replace")))
    return h


def silence_dict(ev, model_version: str) -> dict:
    """The episode message of a silent sensor (anomalies topic, key: the sensor id), in the
    shared episode schema with ``kind`` "silent" (README, "Message formats").

    ``ev`` is a :class:`worker.core.silence.SilenceEvent`.  A silent episode has no score:
    ``open`` carries the typical interval it was held to; ``close`` the duration and an
    estimate of the readings missed (from the typical interval).
    """
    d = {
        "type": "episode",
        "event": ev.event,
        "kind": "silent",
        "sensor_id": ev.sensor_id,
        "episode_id": ev.episode_id,
        "start_ts": format_ts(ev.start_ts_ms),
        "start_ts_ms": int(ev.start_ts_ms),
        "ts": format_ts(ev.ts_ms),
        "ts_ms": int(ev.ts_ms),
        "model_version": model_version,
        "expected_interval_s": float(ev.expected_interval_s),
    }
    if ev.event == "close":
        d.update({
            "end_ts": format_ts(ev.ts_ms),
            "end_ts_ms": int(ev.ts_ms),
            "duration_s": float(ev.duration_s),
            "readings_flagged": 0,
            "close_reason": ev.close_reason,
            "readings_missed": ev.readings_missed,
        })
    return d


def encode_silence(ev, model_version: str) -> bytes:
    """Deterministic bytes of a silent-sensor episode event: same event, same bytes.

    >>> from worker.core.silence import SilenceEvent
    >>> encode_silence(SilenceEvent("open", "p1", 0, 0, 300_000, 60.0), "v1")[:72]
    b'{"type":"episode","event":"open","kind":"silent","sensor_id":"p1","episo'
    >>> json.loads(encode_silence(SilenceEvent("close", "p1", 0, 0, 420_000, 60.0, 6, "returned"), "v1"))["duration_s"]
    420.0
    """
    return json.dumps(silence_dict(ev, model_version), separators=(",", ":"), allow_nan=False).encode("utf-8")
