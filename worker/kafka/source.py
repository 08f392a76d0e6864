"""The consumer side of the worker: a kafka-python consumer in a group, manual commits.

:class:`Source` polls a batch of records per partition, pauses/resumes and seeks
partitions, commits offsets, probes the broker (end offsets), and glues the consumer
group's rebalance callbacks to the partition lifecycle (:mod:`worker.partitions`).
"""

from __future__ import annotations

import logging

from worker.kafka.fast_records import install, offsets_of
from worker.kafka.polled import OffsetAndMetadata, PartitionRecords, TopicPartition, from_kafka_python

log = logging.getLogger("slotwatch.worker")


class Source:
    """The readings topic, read by one consumer of the group."""

    probe_on_thread = True  # the broker probe asks :meth:`probe_end_offsets` from its own thread

    def __init__(self, kafka_settings, consumer=None) -> None:
        self.settings = kafka_settings
        self.topic = kafka_settings.readings_topic
        self.consumer = consumer
        self._prober = None  # the broker probe's own consumer (kafka-python's is not thread-safe)

    def connect(self) -> None:
        """Create the consumer (raises while the brokers cannot be reached)."""
        if self.consumer is None:
            from worker.kafka.clients import make_consumer

            consumer = make_consumer(self.settings)
            if self.settings.fast_records:
                install(consumer)  # records parsed a batch at a time into values and offsets (worker.kafka.fast_records)
            self.consumer = consumer

    def subscribe(self, lifecycle, on_fatal) -> None:
        """Join the group; rebalances call ``lifecycle.assigned/revoked`` (inside :meth:`poll`)."""
        self.consumer.subscribe([self.topic], listener=_listener(lifecycle, on_fatal))

    def poll(self) -> dict:
        """{TopicPartition: PartitionRecords} of one poll (empty when nothing came within the poll timeout)."""
        k, c = self.settings, self.consumer
        side = offsets_of(c)
        if side is None:  # a consumer without worker.kafka.fast_records (e.g. handed in by a test)
            return from_kafka_python(c.poll(timeout_ms=k.poll_timeout_ms, max_records=k.max_poll_records))
        side.clear()
        polled = c.poll(timeout_ms=k.poll_timeout_ms, max_records=k.max_poll_records)  # {tp: [value, ...]}
        out = {tp: PartitionRecords(values, side.pop(tp)) for tp, values in polled.items() if values}
        if side or any(len(pr.values) != len(pr.offsets) for pr in out.values()):
            raise RuntimeError(f"columnar poll out of step: {sorted(map(str, side))} left over")  # cannot happen
        return out

    def tp(self, partition: int):
        return TopicPartition(self.topic, partition)

    @staticmethod
    def offset(next_offset: int, metadata: str):
        """What :meth:`commit` takes per partition: the next offset to read and its metadata."""
        return OffsetAndMetadata(next_offset, metadata, -1)

    def assigned(self) -> set[int]:
        """Partitions of the readings topic assigned to this consumer (empty when unknown)."""
        if self.consumer is None:
            return set()
        try:
            return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        except Exception:  # noqa: BLE001
            return set()

    def assignment(self) -> set:
        return set(self.consumer.assignment())

    def pause(self, *tps) -> None:
        self.consumer.pause(*tps)

    def resume(self, *tps) -> None:
        self.consumer.resume(*tps)

    def seek(self, tp, offset: int) -> None:
        self.consumer.seek(tp, offset)

    def commit(self, offsets, sync: bool) -> None:
        if sync:
            self.consumer.commit(offsets)
        else:  # inside a rebalance callback (the consumer's IO thread): must not block
            self.consumer.commit_async(offsets)

    def end_offsets(self, partitions) -> dict[int, int]:
        """partition -> end offset; with no partitions, still touches the cluster (raises when unreachable)."""
        tps = [self.tp(p) for p in partitions]
        if not tps:
            self.consumer.topics()
            return {}
        return {tp.partition: end for tp, end in self.consumer.end_offsets(tps, timeout_ms=2000).items()}

    def probe_end_offsets(self, partitions) -> dict[int, int]:
        """:meth:`end_offsets` for the broker probe's thread: on a consumer of its own (no group),
        made on first use, so the ListOffsets round trip stays off the polling consumer."""
        if self._prober is None:
            from worker.kafka.clients import make_consumer

            self._prober = make_consumer(self.settings, group_id=None)
        tps = [self.tp(p) for p in partitions]
        if not tps:
            self._prober.topics()
            return {}
        return {tp.partition: end for tp, end in self._prober.end_offsets(tps, timeout_ms=2000).items()}

    def close(self, timeout_ms: int) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            try:
                prober.close(autocommit=False, timeout_ms=min(timeout_ms, 1000))
            except Exception:  # noqa: BLE001
                pass
        if self.consumer is not None:
            self.consumer.close(autocommit=False, timeout_ms=timeout_ms)


def _listener(lifecycle, on_fatal):
    from kafka import ConsumerRebalanceListener

    from worker.partitions import FatalCheckpointError

    class Listener(ConsumerRebalanceListener):
        # an exception escaping a callback would only surface as a failed poll, again and again:
        # an assignment that cannot be restored stops the worker instead (exit 3)
        def on_partitions_revoked(self, revoked):
            lifecycle.revoked(revoked)

        def on_partitions_assigned(self, assigned):
            try:
                lifecycle.assigned(assigned)
            except Exception as e:  # noqa: BLE001
                log.exception("restoring partitions %s failed", sorted(tp.partition for tp in assigned))
                on_fatal(FatalCheckpointError(f"restoring partitions failed: {e}"))

        def on_partitions_lost(self, lost):
            lifecycle.revoked(lost, lost=True)

    return Listener()
