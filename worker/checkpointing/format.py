"""The checkpoint format: one partition's state as bytes, with a checksum.  Pure (no files).

Layout::

    b"SLOTWCK1"                      magic and format version
    u32 little-endian                length of the header
    header (UTF-8 JSON)              partition, next_offset, model_version, created_ms, meta,
                                     and for each array: name, dtype, shape, offset, nbytes
    array bytes                      C order, concatenated
    32 bytes                         SHA-256 of everything before it

The arrays are the state table's columns for the partition's sensors (see
:mod:`worker.state.table`); string columns (the sensor ids, and each row's model version
``model_version``, see :mod:`worker.core.handover`) are stored as UTF-8 bytes plus their
lengths (``<name>.len``, ``<name>.utf8``).  Older checkpoints have no ``model_version``
column: their rows belong to the header's ``model_version``.

>>> import numpy as np
>>> cols = {"sensor_id": np.array(["a", "b"], dtype=object), "count": np.array([3, 4])}
>>> blob = encode(Checkpoint(partition=0, next_offset=42, model_version="v1", columns=cols))
>>> ck = decode(blob); ck.next_offset, list(ck.columns["sensor_id"]), ck.columns["count"].tolist()
(42, ['a', 'b'], [3, 4])
>>> decode(blob[:-1])
Traceback (most recent call last):
...
worker.checkpointing.format.CorruptCheckpoint: checksum mismatch (torn or corrupt checkpoint)
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"SLOTWCK1"
_DIGEST = 32


class CorruptCheckpoint(ValueError):
    pass


@dataclass
class Checkpoint:
    partition: int
    next_offset: int  # first offset not yet applied
    model_version: str
    columns: dict[str, np.ndarray]
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_sensors(self) -> int:
        ids = self.columns.get("sensor_id")
        return 0 if ids is None else len(ids)


def encode(ck: Checkpoint) -> bytes:
    arrays: list[tuple[str, np.ndarray]] = []
    for name, arr in ck.columns.items():
        a = np.asarray(arr)
        if name == "sensor_id" or a.dtype == object:
            if any(not isinstance(s, str) for s in a.tolist()):
                raise TypeError(f"column {name} has dtype object and holds other things than strings")
            raw = [s.encode("utf-8") for s in a.tolist()]
            arrays.append((f"{name}.len", np.array([len(b) for b in raw], dtype=np.int32)))
            arrays.append((f"{name}.utf8", np.frombuffer(b"".join(raw), dtype=np.uint8)))
        else:
            arrays.append((name, np.ascontiguousarray(a)))
    specs = []
    off = 0
    for name, a in arrays:
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": off, "nbytes": a.nbytes})
        off += a.nbytes
    header = json.dumps(
        {
            "partition": ck.partition,
            "next_offset": ck.next_offset,
            "model_version": ck.model_version,
            "created_ms": ck.created_ms,
            "meta": ck.meta,
            "arrays": specs,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    h = hashlib.sha256()
    parts = [MAGIC, struct.pack("<I", len(header)), header] + [memoryview(a).cast("B") if a.nbytes else b"" for _, a in arrays]
    for p in parts:
        h.update(p)
    parts.append(h.digest())
    return b"".join(parts)


def _strings(lens: np.ndarray, buf: bytes) -> np.ndarray:
    ends = np.cumsum(lens).tolist()
    starts = [0] + ends[:-1]
    if buf.isascii():  # byte offsets are character offsets: slice one decoded string
        text = buf.decode("ascii")
        ids = [text[a:b] for a, b in zip(starts, ends)]
    else:
        ids = [buf[a:b].decode("utf-8") for a, b in zip(starts, ends)]
    arr = np.empty(len(ids), dtype=object)
    arr[:] = ids
    return arr


def decode(blob: bytes) -> Checkpoint:
    if len(blob) < len(MAGIC) + 4 + _DIGEST or not blob.startswith(MAGIC):
        raise CorruptCheckpoint("not a slotwatch checkpoint (bad magic or too short)")
    view = memoryview(blob)
    body, digest = view[:-_DIGEST], bytes(view[-_DIGEST:])
    if hashlib.sha256(body).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch (torn or corrupt checkpoint)")
    (hlen,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(body[start : start + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"unreadable header: {e}") from None
    data = body[start + hlen :]
    raw: dict[str, np.ndarray] = {}
    for s in header["arrays"]:
        a = np.frombuffer(data[s["offset"] : s["offset"] + s["nbytes"]], dtype=np.dtype(s["dtype"]))
        raw[s["name"]] = a.reshape(s["shape"])  # read-only views of the blob; importing copies them
    cols: dict[str, np.ndarray] = {}
    for name in [k[: -len(".len")] for k in raw if k.endswith(".len") and k[: -len(".len")] + ".utf8" in raw]:
        cols[name] = _strings(raw.pop(f"{name}.len"), raw.pop(f"{name}.utf8").tobytes())
    cols.update(raw)
    return Checkpoint(
        partition=int(header["partition"]),
        next_offset=int(header["next_offset"]),
        model_version=str(header["model_version"]),
        columns=cols,
        created_ms=int(header["created_ms"]),
        meta=dict(header.get("meta", {})),
    )
