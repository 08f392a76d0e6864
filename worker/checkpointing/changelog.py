"""The state changelog: one sensor's checkpoint row per Kafka record, and the restore fold.  Pure (no Kafka).

A changelog partition follows its readings partition (changelog partition N holds the
sensors of readings partition N).  A checkpoint round writes, per partition:

* one **schema record** (key ``b"__schema__<digest>"``, value the JSON list of the row's
  columns: name, dtype, trailing shape, the same dtype strings and C-order bytes as
  :mod:`worker.checkpointing.format`; string columns as UTF-8 with a length, like the
  format's ``.len``/``.utf8`` pair).  Its key is unique per schema, so compaction keeps
  the schema of every row still in the log;
* one **row record** per sensor changed since the last round (key = sensor id, value =
  ``MAGIC + schema digest + fixed-size numeric bytes + (u32 length + UTF-8) per string
  column``; the ``model_version`` column is one of those strings).  A sensor that left the
  partition (evicted) gets a **tombstone** (value ``None``);
* one **marker record** (key ``b"__partition__"``) with the partition's next offset.

Every record carries headers ``slotwatch.partition``, ``slotwatch.offset`` and
``slotwatch.model_version``.  ``slotwatch.offset`` is the source position the record
reflects: the round's next offset, i.e. the row holds every reading of its partition
*below* it and none at or beyond it.  The ``slot`` column is written as -1 (see :data:`UNPLACED`).  (The row's own ``last_offset`` column, the offset of
the sensor's last reading, is in the value.)

Restore (:func:`fold`): given the records of a changelog partition in log order and the
committed offset ``C`` of the readings partition, keep for each sensor the row with the
highest ``slotwatch.offset`` that is ``<= C`` (later in the log wins a tie); rows stamped
beyond ``C`` belong to readings that will be replayed from ``C`` and are skipped.  The log
need not be compacted: every generation of a sensor may be present.  Records with keys
starting ``b"__"`` that are not rows (markers, schemas, a restorer's fence record) never
become sensors.

>>> import numpy as np
>>> cols = {"sensor_id": np.array(["a", "b"], dtype=object), "last_offset": np.array([3, 7]),
...         "state": np.array([[0.5, 1.0], [2.0, 3.0]], dtype=np.float32),
...         "model_version": np.array(["v1", "v1"], dtype=object)}
>>> written = {}                                   # sensor -> last_offset already in the changelog
>>> rows = select_changed(cols, written); rows.tolist()
[0, 1]
>>> recs = encode_round(0, 8, cols, rows, model_version="v1")
>>> recs[0].key.startswith(SCHEMA_PREFIX), [r.key for r in recs[1:]]
(True, [b'a', b'b', b'__partition__'])
>>> note_written(written, cols, rows); select_changed(cols, written).tolist()   # nothing new
[]
>>> res = fold(recs, committed=8)
>>> list(res.columns["sensor_id"]), res.columns["state"].tolist(), res.marker_next
(['a', 'b'], [[0.5, 1.0], [2.0, 3.0]], 8)
>>> fold(recs, committed=5).n_sensors, fold(recs, committed=5).skipped_beyond    # written at 8 > 5
(0, 2)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from worker.checkpointing.format import _strings

MAGIC = b"SWCL1\x00"  # row value: magic, then the 8-byte schema digest
MARKER_KEY = b"__partition__"
SCHEMA_PREFIX = b"__schema__"
FENCE_KEY = b"__restore__"  # written by a restorer to bound its read (see worker.kafka.changelog)
H_PARTITION = "slotwatch.partition"
H_OFFSET = "slotwatch.offset"
H_VERSION = "slotwatch.model_version"
_DIGEST = 8
#: columns written as -1: a slot is the writing worker's placement, which changes without a
#: reading (paging) and means nothing to the worker that restores; restored sensors start paged out
UNPLACED = ("slot",)
_HEAD = len(MAGIC) + _DIGEST
_U32 = struct.Struct("<I")


class ChangelogRecord(NamedTuple):
    """One record to produce / as read (kafka-python's ConsumerRecord has the same attributes)."""

    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]


class CorruptChangelog(ValueError):
    pass


# ---------------------------------------------------------------- schema
@dataclass(frozen=True)
class Schema:
    """Layout of a row value: numeric columns (name, dtype string, trailing shape) then string columns."""

    numeric: tuple[tuple[str, str, tuple[int, ...]], ...]
    strings: tuple[str, ...]

    @property
    def json(self) -> bytes:
        return json.dumps({"numeric": [[n, d, list(s)] for n, d, s in self.numeric], "strings": list(self.strings)},
                          separators=(",", ":")).encode("utf-8")

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.json).digest()[:_DIGEST]

    @property
    def dtype(self) -> np.dtype:
        """A packed structured dtype: one element is the fixed-size part of a row value."""
        return np.dtype([(n, np.dtype(d), s) for n, d, s in self.numeric])

    @classmethod
    def from_json(cls, raw: bytes) -> Schema:
        d = json.loads(raw.decode("utf-8"))
        return cls(tuple((n, dt, tuple(s)) for n, dt, s in d["numeric"]), tuple(d["strings"]))

    @classmethod
    def of(cls, columns: dict[str, np.ndarray]) -> Schema:
        numeric, strings = [], []
        for name, arr in columns.items():
            if name == "sensor_id":
                continue  # the record key
            a = np.asarray(arr)
            if a.dtype == object:
                strings.append(name)
            else:
                numeric.append((name, a.dtype.str, tuple(a.shape[1:])))
        return cls(tuple(numeric), tuple(strings))


def _headers(partition: int, offset: int, version: str) -> list[tuple[str, bytes]]:
    return [(H_PARTITION, str(partition).encode()), (H_OFFSET, str(offset).encode()), (H_VERSION, version.encode("utf-8"))]


# ---------------------------------------------------------------- writing
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
                 model_version: str, removed: Iterable[str] = ()) -> list[ChangelogRecord]:
    """The records of one checkpoint round for one partition: schema, changed rows, tombstones, marker.

    ``next_offset`` is the partition's first offset not applied: each row reflects every
    reading below it.  Each row's header names its own model version (the
    ``model_version`` column when present, else ``model_version``).
    """
    schema, values = encode_rows(columns, rows)
    ids = columns["sensor_id"]
    versions = columns.get("model_version")
    recs = [ChangelogRecord(SCHEMA_PREFIX + schema.digest.hex().encode(), schema.json,
                            _headers(partition, next_offset, model_version))]
    for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
        v = model_version if versions is None else str(versions[r])
        recs.append(ChangelogRecord(str(ids[r]).encode("utf-8"), values[i], _headers(partition, next_offset, v)))
    for s in removed:
        recs.append(ChangelogRecord(s.encode("utf-8"), None, _headers(partition, next_offset, model_version)))
    marker = json.dumps({"next_offset": next_offset, "model_version": model_version, "rows": len(values)},
                        separators=(",", ":")).encode()
    recs.append(ChangelogRecord(MARKER_KEY, marker, _headers(partition, next_offset, model_version)))
    return recs


# ---------------------------------------------------------------- restoring
@dataclass
class Restored:
    """What :func:`fold` found: the columns to import (``import_partition`` takes them) and counts."""

    columns: dict[str, np.ndarray]
    records: int = 0  # records read
    skipped_beyond: int = 0  # rows stamped beyond the committed offset (their readings are replayed)
    tombstoned: int = 0  # sensors whose newest eligible record is a tombstone
    marker_next: int | None = None  # newest eligible marker's next offset (None: no marker <= committed)
    written: dict[str, int] = field(default_factory=dict)  # sensor -> last_offset (for select_changed)

    @property
    def n_sensors(self) -> int:
        return len(self.columns.get("sensor_id", ()))


def _header(rec: Any, name: str) -> bytes | None:
    for k, v in rec.headers or ():
        if k == name:
            return v
    return None


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
    for rec in records:
        n += 1
        key = rec.key
        if key is None:
            continue
        if key.startswith(b"__"):
            if key.startswith(SCHEMA_PREFIX) and rec.value is not None:
                s = Schema.from_json(rec.value)
                schemas[s.digest] = s
            elif key == MARKER_KEY and rec.value is not None:
                nxt = int(json.loads(rec.value)["next_offset"])
                if nxt <= committed and (marker is None or nxt >= marker):
                    marker = nxt
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
    return Restored(columns, records=n, skipped_beyond=skipped, tombstoned=tomb, marker_next=marker, written=written)
