"""Checkpoint files: one folder per input partition, N generations, atomic and durable writes.

A write goes to a temporary file, is fsync'ed, renamed over its final name and the folder
is fsync'ed, so a crash leaves either the old set of generations or the new one.  Reading
takes the newest generation that decodes (:func:`worker.checkpointing.format.decode`
checks the checksum); a torn or corrupt newer one is skipped loudly (logged at ERROR and
reported to ``on_fallback``, which the worker counts in
``slotwatch_checkpoint_fallbacks_total``).

>>> import tempfile, numpy as np
>>> from worker.checkpointing.format import Checkpoint
>>> store = CheckpointStore(tempfile.mkdtemp(), "readings", generations=2)
>>> for off in (10, 20, 30):
...     _ = store.save(Checkpoint(0, off, "v1", {"sensor_id": np.array(["a"], dtype=object)}))
>>> [p.name for p in store.generations(0)]   # newest first, two kept
['000000000003.ckpt', '000000000002.ckpt']
>>> store.load(0).next_offset
30
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from worker.checkpointing.format import Checkpoint, CorruptCheckpoint, decode, encode

log = logging.getLogger("slotwatch.checkpoint")

_GEN = re.compile(r"^(\d{12})\.ckpt$")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class CheckpointStore:
    """Generations of checkpoints of one input topic under ``root/<topic>/p<partition>/``."""

    def __init__(self, root: str | os.PathLike, topic: str, generations: int = 3,
                 on_fallback: Callable[[int, Path, str], None] | None = None) -> None:
        if generations < 1:
            raise ValueError("generations must be >= 1")
        self.root = Path(root) / _safe(topic)
        self.keep = generations
        self.on_fallback = on_fallback

    def dir_of(self, partition: int) -> Path:
        return self.root / f"p{partition:05d}"

    def generations(self, partition: int) -> list[Path]:
        """Checkpoint files of ``partition``, newest first."""
        d = self.dir_of(partition)
        if not d.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _GEN.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, ck: Checkpoint) -> tuple[Path, int]:
        """Write ``ck`` durably as the newest generation; prune old ones.  Returns (path, bytes)."""
        d = self.dir_of(ck.partition)
        d.mkdir(parents=True, exist_ok=True)
        gens = self.generations(ck.partition)
        seq = int(_GEN.match(gens[0].name).group(1)) + 1 if gens else 1
        final = d / f"{seq:012d}.ckpt"
        tmp = d / f".{seq:012d}.ckpt.tmp"
        blob = encode(ck)
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(d)
        for old in ([final] + gens)[self.keep :]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
        return final, len(blob)

    def load(self, partition: int) -> Checkpoint | None:
        """The newest valid checkpoint of ``partition`` (None when there is none at all).

        Raises :class:`CorruptCheckpoint` when checkpoints exist but none is valid.
        """
        gens = self.generations(partition)
        problems = []
        for path in gens:
            try:
                ck = decode(path.read_bytes())
                if ck.partition != partition:
                    raise CorruptCheckpoint(f"holds partition {ck.partition}, expected {partition}")
            except (OSError, CorruptCheckpoint) as e:
                problems.append(f"{path.name}: {e}")
                log.error(
                    "checkpoint %s is unusable (%s); falling back to the previous generation", path, e,
                    extra={"partition": partition},
                )
                if self.on_fallback:
                    self.on_fallback(partition, path, str(e))
                continue
            if problems:
                log.error("partition %d restored from older checkpoint %s", partition, path.name,
                          extra={"partition": partition, "next_offset": ck.next_offset})
            return ck
        if problems:
            raise CorruptCheckpoint(f"partition {partition}: no valid checkpoint in {self.dir_of(partition)}: " + "; ".join(problems))
        return None

    def partitions(self) -> list[int]:
        """Partitions that have checkpoint folders."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self.root.iterdir() if p.is_dir() and re.fullmatch(r"p\d+", p.name))
