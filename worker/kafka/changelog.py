"""The state changelog's Kafka edge: write a round's records and wait for acknowledgement;
read a changelog partition to its end without a consumer group, and restore from it.

Record layout and the restore rule: :mod:`worker.checkpointing.changelog` (pure).

**How a restore knows it has read everything.**  The test broker answers end-offset
queries low (the first offset of the last write batch + 1, see DESIGN.md), and on a real
cluster an end offset read before the read starts says nothing about records a zombie may
still append.  So the restorer does not trust ``end_offsets``: it first produces a *fence*
record of its own (key ``b"__restore__"``, a fresh token as value) to the changelog partition
and waits for its acknowledgement; the acknowledged offset ``F`` is a true bound (every
record acknowledged before it is at an offset below it).  It then reads from the beginning
until it has seen the record at ``F`` (and checks the token).  A read that makes no
progress for ``stall_s`` seconds raises :class:`ChangelogStalled` instead of hanging
(a missing tail record must not hang the restore; Quix Streams issue 1017).  Fences share
one key, so compaction keeps only the newest; the fold ignores them.

>>> cfg = changelog_topic_config()
>>> cfg["cleanup.policy"]
'compact'
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from worker.checkpointing.changelog import (FENCE_KEY, H_OFFSET, MARKER_KEY, SCHEMA_PREFIX, ChangelogRecord,
                                             Restored, fold)
from worker.kafka.changelog_topic import (  # noqa: F401 - the topic's admin side, re-exported
    ChangelogError,
    changelog_topic_config,
    create_changelog_topic,
    ensure_changelog_topic,
)

log = logging.getLogger("slotwatch.changelog")


class ChangelogStalled(ChangelogError):
    pass


class ChangelogWriter:
    """Produces a round's records to the changelog partition of their source partition and waits for acks."""

    def __init__(self, producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def send(self, partition: int, records: list[ChangelogRecord]) -> list[Any]:
        send = self.producer.send
        return [send(self.topic, key=r.key, value=r.value, headers=r.headers, partition=partition) for r in records]

    def wait(self, futures: list[Any], timeout_s: float) -> None:
        """Block until every record is acknowledged; raises :class:`ChangelogError` on any failure or timeout."""
        deadline = time.monotonic() + timeout_s
        self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        for f in futures:
            try:
                f.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - KafkaError or timeout: the round is not durable
                raise ChangelogError(f"changelog record not acknowledged: {e}") from e

    def write(self, partition: int, records: list[ChangelogRecord], timeout_s: float = 30.0) -> int:
        """Send and wait; returns the bytes of keys and values written."""
        self.wait(self.send(partition, records), timeout_s)
        return sum(len(r.key) + len(r.value or b"") for r in records)


def read_partition(consumer, producer, topic: str, partition: int, *, stall_s: float = 10.0,
                   timeout_s: float = 600.0, progress: Callable[[int, int], None] | None = None,
                   committed: int | None = None) -> Iterator[Any]:
    """Every record of one changelog partition up to the fence this call writes (see the module doc).

    ``consumer`` must have no group (``group_id=None``); it is assigned the partition here.
    ``progress(position, fence_offset)`` is called after each poll.  With ``committed``, the read
    starts at the newest full snapshot at or below it (:func:`snapshot_start`), else at the beginning.
    """
    from kafka import TopicPartition

    token = uuid.uuid4().hex.encode()
    try:
        meta = producer.send(topic, key=FENCE_KEY, value=token, partition=partition).get(timeout=stall_s)
    except Exception as e:  # noqa: BLE001
        raise ChangelogError(f"could not write the restore fence to {topic}[{partition}]: {e}") from e
    fence = meta.offset
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    start = snapshot_start(consumer, tp, fence, committed, stall_s) if committed is not None else 0
    if start:
        consumer.seek(tp, start)
    else:
        consumer.seek_to_beginning(tp)
    deadline = time.monotonic() + timeout_s
    last_progress = time.monotonic()
    pos = 0
    while True:
        got = consumer.poll(timeout_ms=200, max_records=100_000)
        recs = got.get(tp, [])
        if recs:
            last_progress = time.monotonic()
            for r in recs:
                if r.offset == fence:
                    if r.key != FENCE_KEY or r.value != token:
                        raise ChangelogError(f"{topic}[{partition}] offset {fence} is not this restore's fence record")
                    if progress:
                        progress(fence + 1, fence + 1)
                    return
                if r.offset > fence:
                    raise ChangelogError(f"{topic}[{partition}]: read past the fence offset {fence} without seeing it")
                yield r
            pos = recs[-1].offset + 1
        if progress:
            progress(pos, fence + 1)
        now = time.monotonic()
        if now - last_progress > stall_s:
            raise ChangelogStalled(f"{topic}[{partition}]: no records for {stall_s:.0f} s at offset {pos}, "
                                   f"fence at {fence}; the changelog partition may be missing records")
        if now > deadline:
            raise ChangelogStalled(f"{topic}[{partition}]: restore not finished within {timeout_s:.0f} s "
                                   f"(at offset {pos} of {fence})")


#: tail windows searched for the newest marker, before reading from the beginning
TAIL_WINDOWS = (64, 1024, 16384)
TAIL_STALL_S = 2.0


def snapshot_start(consumer, tp, fence: int, committed: int, stall_s: float = 10.0) -> int:
    """Where a restore at ``committed`` may start reading: the changelog offset of the newest full
    snapshot whose source offset is at or below ``committed``, named by the newest marker before
    the ``fence`` (searched in growing tail windows); 0 when there is none (read everything).
    """
    from worker.checkpointing.changelog import marker_of

    stall_s = min(stall_s, TAIL_STALL_S)  # a tail that does not come (an open transaction): read everything
    for window in TAIL_WINDOWS:
        lo = max(0, fence - window)
        consumer.seek(tp, lo)
        marker, pos, last = None, lo, time.monotonic()
        while pos < fence and time.monotonic() - last < stall_s:
            recs = consumer.poll(timeout_ms=200, max_records=100_000).get(tp, [])
            for r in recs:
                if r.offset < fence and r.key == MARKER_KEY and r.value is not None:
                    marker = r
            if recs:
                pos, last = recs[-1].offset + 1, time.monotonic()
        if marker is not None:
            m = marker_of(marker.value)
            if m.get("full") and int(m["next_offset"]) <= committed and m.get("records"):
                own = _round_start(consumer, tp, marker.offset - int(m["records"]) + 1, m["next_offset"], stall_s)
                if own is not None:  # the newest round is a snapshot itself (no later marker names it)
                    return own
            snaps = [int(x) for x, o in m.get("snapshots", []) if int(o) <= committed]
            return max(snaps) if snaps else 0
        if lo == 0:
            return 0
    return 0


def _round_start(consumer, tp, offset: int, next_offset: int, stall_s: float) -> int | None:
    """``offset`` when the record there is the schema record that opens the round of ``next_offset``
    (the round's records are contiguous: no other writer's record came between them), else ``None``."""
    if offset < 0:
        return None
    consumer.seek(tp, offset)
    t0 = time.monotonic()
    while time.monotonic() - t0 < stall_s:
        recs = consumer.poll(timeout_ms=200, max_records=1).get(tp, [])
        if recs:
            r = recs[0]
            ok = (r.offset == offset and r.key is not None and r.key.startswith(SCHEMA_PREFIX)
                  and dict(r.headers or ()).get(H_OFFSET) == str(next_offset).encode())
            return offset if ok else None
    return None


def restore_partition(consumer, producer, topic: str, partition: int, committed: int, *, snapshots: bool = True,
                      **kw) -> Restored:
    """Read changelog partition ``partition`` to its end and fold it at the ``committed`` readings offset
    (from the newest full snapshot at or below it when ``snapshots``, else from the beginning)."""
    t0 = time.perf_counter()
    res = fold(read_partition(consumer, producer, topic, partition, committed=committed if snapshots else None, **kw),
               committed)
    log.info("partition %d: %d sensors restored from the changelog %s (%d records, %d rows beyond offset %d "
             "skipped) in %.2f s", partition, res.n_sensors, topic, res.records, res.skipped_beyond, committed,
             time.perf_counter() - t0,
             extra={"partition": partition, "sensors": res.n_sensors, "committed": committed})
    return res


def make_restore_consumer(bootstrap_or_settings, **overrides):
    """A group-less consumer for restores: from :class:`worker.settings.KafkaSettings` or a bootstrap string."""
    from kafka import KafkaConsumer

    if isinstance(bootstrap_or_settings, str):
        cfg: dict = {"bootstrap_servers": bootstrap_or_settings}
    else:
        from worker.kafka.clients import common_config

        cfg = common_config(bootstrap_or_settings)
    cfg.update(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
               fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
               fetch_max_wait_ms=50)
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


from worker.kafka.changelog_store import ChangelogStore  # noqa: E402,F401 - re-exported
