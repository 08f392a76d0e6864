"""The consumer side of the worker with confluent-kafka (librdkafka), ``SLOTWATCH_KAFKA__CLIENT=confluent``:
the same interface as :class:`worker.kafka.source.Source`.

* :meth:`ConfluentSource.poll` is ``consume(num_messages=max_poll_records)`` (without waiting for a full batch) grouped into
  ``{TopicPartition: PartitionRecords}`` (:mod:`worker.kafka.polled`): two list appends per
  message, no Python object per message;
* the group's rebalance callbacks run inside ``consume()`` on the worker's loop thread (as
  kafka-python's listener runs inside ``poll()``) and call ``lifecycle.assigned/revoked``; a
  seek or pause the lifecycle asks for while partitions are being assigned is applied with the
  assignment itself (librdkafka cannot seek a partition before it is assigned);
* commits are synchronous with explicit offsets (``enable.auto.commit=false``), also inside a
  revocation (librdkafka allows it there: the partitions are still ours).
"""

from __future__ import annotations

import logging
import threading
import time

from worker.kafka.polled import PartitionRecords, TopicPartition
from worker.kafka.source import Source

log = logging.getLogger("slotwatch.worker")


class ConfluentSource:
    """The readings topic, read by one librdkafka consumer of the group."""

    def __init__(self, kafka_settings, consumer=None) -> None:
        from worker.kafka.confluent_config import require_confluent

        self.ck = require_confluent()
        self.settings = kafka_settings
        self.topic = kafka_settings.readings_topic
        self.consumer = consumer
        self._assigning: dict | None = None  # inside on_assign: partition -> offset to start at (seek)
        self._pause_after: list = []  # inside on_assign: partitions to pause once assigned
        self._owned: set[int] = set()  # partitions of the current assignment (kept by the callbacks)
        self._errors_logged: dict = {}  # error code -> monotonic time it was last logged

    def connect(self) -> None:
        if self.consumer is None:
            from worker.kafka.confluent_config import consumer_config

            self.consumer = self.ck.Consumer(consumer_config(self.settings))

    # ------------------------------------------------------------------ the group
    def subscribe(self, lifecycle, on_fatal) -> None:
        """Join the group; rebalances call ``lifecycle.assigned/revoked`` (inside :meth:`poll`)."""
        from worker.partitions import FatalCheckpointError

        def on_assign(consumer, parts):
            tps = [TopicPartition(p.topic, p.partition) for p in parts]
            self._owned |= {tp.partition for tp in tps if tp.topic == self.topic}
            self._assigning, self._pause_after = {}, []
            try:
                lifecycle.assigned(tps)
            except Exception as e:  # noqa: BLE001 - as kafka-python's listener: stop the worker (exit 3)
                log.exception("restoring partitions %s failed", sorted(tp.partition for tp in tps))
                on_fatal(FatalCheckpointError(f"restoring partitions failed: {e}"))
            finally:
                start, self._assigning = self._assigning, None
                invalid = self.ck.OFFSET_INVALID  # the committed offset (or auto.offset.reset)
                consumer.assign([self.ck.TopicPartition(p.topic, p.partition, start.get(p.partition, invalid)) for p in parts])
                if self._pause_after:
                    consumer.pause([self._ck_tp(tp) for tp in self._pause_after])

        def on_revoke(consumer, parts):
            tps = [TopicPartition(p.topic, p.partition) for p in parts]
            try:
                lifecycle.revoked(tps)
            finally:
                self._owned -= {tp.partition for tp in tps}

        def on_lost(consumer, parts):
            tps = [TopicPartition(p.topic, p.partition) for p in parts]
            try:
                lifecycle.revoked(tps, lost=True)
            finally:
                self._owned -= {tp.partition for tp in tps}

        self.consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    # ------------------------------------------------------------------ reading
    def poll(self) -> dict:
        """{TopicPartition: PartitionRecords} of one ``consume()`` (empty when nothing came in time)."""
        k = self.settings
        consume, n = self.consumer.consume, k.max_poll_records
        # consume(n, timeout) waits until n messages or the timeout (at 1,000 readings/s that is the whole timeout:
        # measured p50 132 ms): take what is queued, else wait for one message, then take what came with it
        msgs = consume(num_messages=n, timeout=0)
        if not msgs:
            msgs = consume(num_messages=1, timeout=k.poll_timeout_ms / 1000)
            if not msgs:
                return {}
            if n > 1:
                msgs += consume(num_messages=n - 1, timeout=0)
        by: dict[int, PartitionRecords] = {}
        cur = -1
        add_value = add_offset = None
        for m in msgs:
            if m.error() is not None:
                self._error(m.error())
                continue
            p = m.partition()
            if p != cur:  # consume() hands out runs of one partition: switch lists only between runs
                pr = by.get(p)
                if pr is None:
                    pr = by[p] = PartitionRecords([], [])
                add_value, add_offset, cur = pr.values.append, pr.offsets.append, p
            add_value(m.value())
            add_offset(m.offset())
        topic = self.topic
        return {TopicPartition(topic, p): pr for p, pr in by.items()}

    def _error(self, err) -> None:
        """A message that is an error: end of partition is ignored, a fatal error raises (the loop
        retries the poll with backoff), others are logged (librdkafka retries them itself)."""
        if err.code() == self.ck.KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise self.ck.KafkaException(err)
        now = time.monotonic()
        if now - self._errors_logged.get(err.code(), -1e9) > 10.0:
            self._errors_logged[err.code()] = now
            log.warning("consumer error: %s", err.str())

    # ------------------------------------------------------------------ partitions
    def _ck_tp(self, tp, offset=None):
        if offset is None:
            return self.ck.TopicPartition(tp.topic, tp.partition)
        return self.ck.TopicPartition(tp.topic, tp.partition, offset)

    tp = Source.tp  # the worker's neutral partition and offset types, as the kafka-python source makes them
    offset = staticmethod(Source.offset)

    def assigned(self) -> set[int]:
        """Partitions of the readings topic assigned to this consumer (empty when unknown)."""
        return set(self._owned) if self.consumer is not None else set()

    def assignment(self) -> set:
        return {TopicPartition(self.topic, p) for p in self._owned}

    def pause(self, *tps) -> None:
        if self._assigning is not None:
            self._pause_after.extend(tps)
        else:
            self.consumer.pause([self._ck_tp(tp) for tp in tps])

    def resume(self, *tps) -> None:
        self.consumer.resume([self._ck_tp(tp) for tp in tps])

    def seek(self, tp, offset: int) -> None:
        if self._assigning is not None:  # inside on_assign: the assignment starts there
            self._assigning[tp.partition] = offset
            return
        deadline = time.monotonic() + 5.0
        while True:  # a partition assigned a moment ago may not fetch yet ("Erroneous state"): wait a little
            try:
                self.consumer.seek(self._ck_tp(tp, offset))
                return
            except self.ck.KafkaException as e:
                if e.args[0].code() != self.ck.KafkaError._STATE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ------------------------------------------------------------------ offsets
    def commit(self, offsets, sync: bool) -> None:
        """Commit ``{TopicPartition: OffsetAndMetadata}``; synchronous also when ``sync`` is false
        (librdkafka may block inside a revocation, kafka-python's IO thread may not).

        librdkafka's synchronous commit waits for the group coordinator without a time limit (it
        hangs through a broker outage), so it runs on a helper thread and raises ``TimeoutError``
        after ``request_timeout_ms`` (inside a revocation, ``sync`` false: half the session timeout if less): the coordinator commits again next round (the checkpoint holds the
        offsets); the abandoned commit may still land later, with offsets no newer than that checkpoint."""
        ck = self.ck
        parts = [ck.TopicPartition(tp.topic, tp.partition, om.offset, metadata=om.metadata) for tp, om in offsets.items()]
        k = self.settings
        limit_ms = k.request_timeout_ms if sync else min(k.request_timeout_ms, k.session_timeout_ms // 2)  # a revocation: short
        done = _bounded(lambda: self.consumer.commit(offsets=parts, asynchronous=False), limit_ms / 1000, "offset commit")
        bad = [p for p in done or () if p.error is not None]
        if bad:
            raise ck.KafkaException(bad[0].error)

    def end_offsets(self, partitions) -> dict[int, int]:
        """partition -> end offset; touches the cluster even when all are cached (raises when unreachable).

        The high watermark librdkafka keeps from its fetch answers (``cached=True``, no request);
        asked of the broker only where it is not known yet.  A ListOffsets query per partition
        took 165-290 ms of the consumer thread for 4 partitions; one metadata request is the
        "broker answers" check."""
        self.consumer.list_topics(self.topic, timeout=2.0)
        out = {}
        for p in partitions:
            tp = self._ck_tp(self.tp(p))
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high < 0:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=2.0)
            out[p] = high
        return out

    def close(self, timeout_ms: int) -> None:
        """Leave the group; librdkafka's close has no time limit (it waits for the coordinator during an
        outage), so it is given ``timeout_ms`` on a helper thread, then left behind."""
        if self.consumer is not None:
            try:
                _bounded(self.consumer.close, timeout_ms / 1000, "consumer close")
            except TimeoutError as e:
                log.warning("%s; leaving without it", e)


def _bounded(fn, timeout_s: float, what: str):
    """``fn()`` on a daemon thread, waited for at most ``timeout_s``; its result, or its exception,
    or ``TimeoutError`` (the call goes on in the background)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"slotwatch-{what.replace(' ', '-')}", daemon=True)
    t.start()
    t.join(max(0.1, timeout_s))
    if t.is_alive():
        raise TimeoutError(f"{what} did not complete within {timeout_s:.1f} s (broker unreachable?)")
    if "error" in box:
        raise box["error"]
    return box.get("result")
