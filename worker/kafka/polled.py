"""What one poll of the worker's source hands the processing seam, whichever Kafka client
read it: ``{TopicPartition: PartitionRecords}``, each holding the partition's values and
offsets as two lists in offset order (no object per message).

``TopicPartition`` and ``OffsetAndMetadata`` are kafka-python's named tuples (kafka-python is
a hard dependency): the worker's client-neutral partition and commit types; the confluent
source converts at its edge.

>>> batch = from_kafka_python({TopicPartition("t", 0): []})
>>> batch
{}
>>> pr = PartitionRecords([b"a", b"b"], [4, 5])
>>> len(pr), pr.offsets[-1]
(2, 5)
"""

from __future__ import annotations

from kafka.structs import OffsetAndMetadata, TopicPartition  # noqa: F401 - the worker's neutral types


class PartitionRecords:
    """One partition's records of a poll: ``values`` (bytes) and ``offsets`` (ints), same length."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: list, offsets: list) -> None:
        self.values = values
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"PartitionRecords({len(self)} records)"


def from_kafka_python(poll: dict) -> dict:
    """kafka-python's ``{TopicPartition: [ConsumerRecord]}`` -> ``{TopicPartition: PartitionRecords}``."""
    return {tp: PartitionRecords([r.value for r in recs], [r.offset for r in recs]) for tp, recs in poll.items() if recs}
