"""What a checkpoint round writes to the changelog: the changed rows, tombstones, the marker
(see :mod:`worker.checkpointing.changelog`).  Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from worker.checkpointing.changelog_schema import (
    MAGIC, MARKER_KEY, SCHEMA_PREFIX, UNPLACED, ChangelogRecord, Schema, _U32, headers_for,
)

def select_changed(columns: dict[str, np.ndarray], written: dict[str, int]) -> np.ndarray:
    """Row numbers of ``columns`` (an export of a partition) whose sensor is not in the changelog yet
    or has applied a reading since it was last written (``last_offset`` differs from ``written``).

    A change not caused by a reading is not seen here: after a model swap (every row's
    ``model_version`` changes) write the whole partition (``np.arange(n)``).

    >>> cols = {"sensor_id": np.array(["a", "b", "c"], dtype=object), "last_offset": np.array([5, 9, 2])}
    >>> select_changed(cols, {"a": 5, "b": 4}).tolist()
    [1, 2]
    """
    ids = columns["sensor_id"]
    last = columns["last_offset"].tolist()
    get = written.get
    return np.fromiter((i for i, (s, o) in enumerate(zip(ids, last)) if get(s) != o), dtype=np.int64)


def removed_ids(columns: dict[str, np.ndarray], written: dict[str, int]) -> list[str]:
    """Sensors in the changelog that are no longer in the partition (they get tombstones).

    >>> removed_ids({"sensor_id": np.array(["a"], dtype=object)}, {"a": 1, "gone": 3})
    ['gone']
    """
    now = set(columns["sensor_id"].tolist())
    return sorted(s for s in written if s not in now)


def note_written(written: dict[str, int], columns: dict[str, np.ndarray], rows: np.ndarray,
                 removed: Iterable[str] = ()) -> None:
    """Record that ``rows`` (and the tombstones of ``removed``) are acknowledged by the broker."""
    ids = columns["sensor_id"]
    last = columns["last_offset"]
    for r in np.asarray(rows, dtype=np.int64).tolist():
        written[ids[r]] = int(last[r])
    for s in removed:
        written.pop(s, None)


def encode_rows(columns: dict[str, np.ndarray], rows: np.ndarray) -> tuple[Schema, list[bytes]]:
    """The value of each row in ``rows`` (vectorised: one structured copy, then slices)."""
    schema = Schema.of(columns)
    rows = np.asarray(rows, dtype=np.int64)
    packed = np.empty(len(rows), dtype=schema.dtype)
    for name, _, _ in schema.numeric:
        packed[name] = -1 if name in UNPLACED else np.asarray(columns[name])[rows]
    buf = packed.tobytes()
    size = schema.dtype.itemsize
    head = MAGIC + schema.digest
    tails: list[list[bytes]] = []
    for name in schema.strings:
        col = np.asarray(columns[name])[rows].tolist()
        if any(not isinstance(s, str) for s in col):
            raise TypeError(f"column {name} has dtype object and holds other things than strings")
        tails.append([_U32.pack(len(b)) + b for b in (s.encode("utf-8") for s in col)])
    out = []
    for i in range(len(rows)):
        parts = [head, buf[i * size:(i + 1) * size]]
        parts.extend(t[i] for t in tails)
        out.append(b"".join(parts))
    return schema, out


def encode_round(partition: int, next_offset: int, columns: dict[str, np.ndarray], rows: np.ndarray,
                 model_version: str, removed: Iterable[str] = (), *, full: bool = False,
                 snapshots: Sequence[Sequence[int]] = ()) -> list[ChangelogRecord]:
    """The records of one checkpoint round for one partition: schema, changed rows, tombstones, marker.

    ``full``: ``rows`` are every row of the partition (a full snapshot: the marker says so);
    ``snapshots``: the writer's newest full snapshots, ``[changelog offset, source offset]`` each,
    carried in the marker for restores to seek to (:mod:`worker.checkpointing.changelog`).

    ``next_offset`` is the partition's first offset not applied: each row reflects every
    reading below it.  Each row's header names its own model version (the
    ``model_version`` column when present, else ``model_version``).
    """
    schema, values = encode_rows(columns, rows)
    ids = columns["sensor_id"]
    versions = columns.get("model_version")
    recs = [ChangelogRecord(SCHEMA_PREFIX + schema.digest.hex().encode(), schema.json,
                            headers_for(partition, next_offset, model_version))]
    for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
        v = model_version if versions is None else str(versions[r])
        recs.append(ChangelogRecord(str(ids[r]).encode("utf-8"), values[i], headers_for(partition, next_offset, v)))
    for s in removed:
        recs.append(ChangelogRecord(s.encode("utf-8"), None, headers_for(partition, next_offset, model_version)))
    marker = json.dumps({"next_offset": next_offset, "model_version": model_version, "rows": len(values),
                         "full": bool(full), "snapshots": [[int(x), int(o)] for x, o in snapshots],
                         "records": len(recs) + 1},  # the round's records, this marker included
                        separators=(",", ":")).encode()
    recs.append(ChangelogRecord(MARKER_KEY, marker, headers_for(partition, next_offset, model_version)))
    return recs


