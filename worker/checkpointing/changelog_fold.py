"""The restore fold: each sensor's newest changelog row at or below the committed offset
(see :mod:`worker.checkpointing.changelog`).  Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.checkpointing.changelog_schema import (
    _HEAD, _U32, H_OFFSET, MAGIC, MARKER_KEY, SCHEMA_PREFIX, CorruptChangelog, Schema,
)
from worker.checkpointing.format import _strings

# ---------------------------------------------------------------- restoring
@dataclass
class Restored:
    """What :func:`fold` found: the columns to import (``import_partition`` takes them) and counts."""

    columns: dict[str, np.ndarray]
    records: int = 0  # records read
    skipped_beyond: int = 0  # rows stamped beyond the committed offset (their readings are replayed)
    tombstoned: int = 0  # sensors whose newest eligible record is a tombstone
    marker_next: int | None = None  # newest eligible marker's next offset (None: no marker <= committed)
    snapshots: list[list[int]] = field(default_factory=list)  # the last marker's (at or below committed) snapshots
    written: dict[str, int] = field(default_factory=dict)  # sensor -> last_offset (for select_changed)

    @property
    def n_sensors(self) -> int:
        return len(self.columns.get("sensor_id", ()))


def _header(rec: Any, name: str) -> bytes | None:
    for k, v in rec.headers or ():
        if k == name:
            return v
    return None


def marker_of(value: bytes) -> dict:
    """A marker record's value: ``next_offset``, ``model_version``, ``rows``, ``full``, ``snapshots``."""
    return json.loads(value)


def fold(records: Iterable[Any], committed: int) -> Restored:
    """Restore one changelog partition: each sensor's newest row stamped ``<= committed``.

    ``records``: objects with ``key``, ``value`` and ``headers`` in log order.  Rows are
    decoded only for the winners, grouped by schema (one ``np.frombuffer`` per schema).
    Columns missing from an older schema's rows get the state table's documented default
    (:data:`worker.state.table.COLUMN_DEFAULTS`, else 0; strings: empty).
    """
    from worker.state.table import COLUMN_DEFAULTS

    best: dict[bytes, tuple[int, Any]] = {}
    schemas: dict[bytes, Schema] = {}
    n = skipped = 0
    marker: int | None = None
    snapshots: list[list[int]] = []
    round_start: int | None = None
    for rec in records:
        n += 1
        key = rec.key
        if key is None:
            continue
        if key.startswith(b"__"):
            if key.startswith(SCHEMA_PREFIX) and rec.value is not None:
                s = Schema.from_json(rec.value)
                schemas[s.digest] = s
                round_start = getattr(rec, "offset", None)  # a round's first record (changelog_write)
            elif key == MARKER_KEY and rec.value is not None:
                m = marker_of(rec.value)
                nxt = int(m["next_offset"])
                if nxt <= committed and (marker is None or nxt >= marker):
                    marker, snapshots = nxt, list(m.get("snapshots", []))
                    if m.get("full") and round_start is not None:  # this round is a snapshot itself
                        snapshots.append([round_start, nxt])
            continue
        raw = _header(rec, H_OFFSET)
        if raw is None:
            raise CorruptChangelog(f"record {key!r} has no {H_OFFSET} header")
        off = int(raw)
        if off > committed:
            skipped += 1
            continue
        old = best.get(key)
        if old is None or off >= old[0]:
            best[key] = (off, rec.value)

    groups: dict[bytes, list[tuple[bytes, bytes]]] = {}
    tomb = 0
    for key, (_, value) in best.items():
        if value is None:
            tomb += 1
            continue
        if not value.startswith(MAGIC) or len(value) < _HEAD:
            raise CorruptChangelog(f"row {key!r}: not a slotwatch changelog row")
        groups.setdefault(value[len(MAGIC):_HEAD], []).append((key, value))

    parts: list[dict[str, np.ndarray]] = []
    for digest, items in groups.items():
        schema = schemas.get(digest)
        if schema is None:
            raise CorruptChangelog(f"rows with schema {digest.hex()} but no schema record in the changelog")
        dt = schema.dtype
        size = dt.itemsize
        fixed = b"".join(v[_HEAD:_HEAD + size] for _, v in items)
        if len(fixed) != size * len(items):
            raise CorruptChangelog(f"rows with schema {digest.hex()} are shorter than the schema says")
        packed = np.frombuffer(fixed, dtype=dt)
        cols: dict[str, np.ndarray] = {"sensor_id": _strings(np.array([len(k) for k, _ in items]),
                                                             b"".join(k for k, _ in items))}
        for name, _, _ in schema.numeric:
            cols[name] = packed[name].copy()
        if schema.strings:
            lens: list[list[int]] = [[] for _ in schema.strings]
            bufs: list[list[bytes]] = [[] for _ in schema.strings]
            for _, v in items:
                pos = _HEAD + size
                for j in range(len(schema.strings)):
                    (ln,) = _U32.unpack_from(v, pos)
                    pos += 4
                    lens[j].append(ln)
                    bufs[j].append(v[pos:pos + ln])
                    pos += ln
            for j, name in enumerate(schema.strings):
                cols[name] = _strings(np.array(lens[j], dtype=np.int64), b"".join(bufs[j]))
        parts.append(cols)

    columns: dict[str, np.ndarray] = {}
    if len(parts) == 1:
        columns = parts[0]
    elif parts:
        names: dict[str, np.ndarray] = {}
        for p in parts:
            for k, v in p.items():
                names.setdefault(k, v)
        for name, like in names.items():
            pieces = []
            for p in parts:
                if name in p:
                    pieces.append(p[name])
                    continue
                m = len(p["sensor_id"])
                if like.dtype == object:
                    fill = np.empty(m, dtype=object)
                    fill[:] = ""
                else:
                    fill = np.full((m,) + like.shape[1:], COLUMN_DEFAULTS.get(name, 0), dtype=like.dtype)
                pieces.append(fill)
            columns[name] = np.concatenate(pieces)
    written = {}
    if "last_offset" in columns:
        written = dict(zip(columns["sensor_id"].tolist(), columns["last_offset"].tolist()))
    return Restored(columns, records=n, skipped_beyond=skipped, tombstoned=tomb, marker_next=marker, written=written,
                    snapshots=[list(t) for t in sorted({(int(x), int(o)) for x, o in snapshots if int(o) <= committed},
                                                       key=lambda t: t[1])[-2:]])
