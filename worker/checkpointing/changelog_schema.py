"""The changelog's record layout: keys, headers, the row schema (see :mod:`worker.checkpointing.changelog`).  Pure."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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


def headers_for(partition: int, offset: int, version: str) -> list[tuple[str, bytes]]:
    return [(H_PARTITION, str(partition).encode()), (H_OFFSET, str(offset).encode()), (H_VERSION, version.encode("utf-8"))]


