"""The worker's per-message path without Kafka, for the hardening tests and the fault campaign:
bytes -> codec -> detector -> the bytes that would be produced (a score, or a dead letter).

It uses exactly the functions the worker uses (``ReadingCodec.decode``, ``SlotDetector.process``,
``encode_score``, ``dead_letter_headers``), with no exception handling of its own: an
exception escaping :func:`handle` is a bug the tests must see.
"""

from __future__ import annotations

import numpy as np

from worker.codec import dead_letter_headers, encode_score
from worker.core.readings import REASONS, Rejection, Score


def handle(codec, det, raw: bytes | None, partition: int, offset: int, topic: str = "readings"):
    """("score", key, value) or ("dead", key, headers, value) for one message."""
    r = codec.decode(raw, partition, offset)
    if not isinstance(r, Rejection):
        r = det.process([r])[0]
    if isinstance(r, Score):
        return "score", r.sensor_id.encode("utf-8"), encode_score(r, det.features, det.model_version)
    assert isinstance(r, Rejection) and r.reason in REASONS, r
    key = r.sensor_id.encode("utf-8", "replace") if r.sensor_id else None
    headers = dead_letter_headers(r, topic)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    return "dead", key, headers, raw if raw is not None else b""


def snapshot(det) -> dict:
    """Everything a reading can change in a detector: every sensor's table row (all columns),
    the engine's state of every slot, the router's assignment and clock."""
    t = det.table
    n = t.n_rows
    cols = t.export_rows(np.arange(n))
    order = np.argsort(np.array(t.ids[:n], dtype=object)) if n else np.arange(0)
    rows = {name: cols[name][order].tobytes() if name != "sensor_id" else tuple(cols[name][order]) for name in cols}
    r = det.router
    return {
        "rows": rows,
        "engine": det.engine.read_state(np.arange(det.slots)).tobytes(),
        "router": (dict(r.slot_of_sensor), tuple(r.owner), r.last_used.tobytes(), r.clock, sorted(r._free)),  # noqa: SLF001
    }
