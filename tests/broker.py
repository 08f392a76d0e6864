"""The Kafka-protocol broker of the worker tests: an embedded tansu started once per session,
or an external one named by ``SLOTWATCH_TEST_BOOTSTRAP=host:port``.

Helpers create uniquely named topics and read topics back without a consumer group
(``assign`` + seek to beginning), which is fast on the test broker.

Measured with the worker on this broker (tansu 0.6, loopback, 2 shared cores):

- with :data:`FAST_GROUP` a worker gets its partitions ~3 s after subscribing, also right
  after a ``kill -9`` of the previous member; a second member joining and the first leaving
  each rebalanced within a few seconds (two-worker test: 17 s in all, two worker starts included);
- SIGSTOP of the broker: the worker's /readyz turns 503 within ~7 s (lag probe every 5 s,
  2 s timeout); after SIGCONT it carries on and nothing is lost;
- the worker scored ~14k readings/s (1,000 sensors, B=1024, 32 LSTM units, anomalies only)
  and ~5k readings/s when publishing every score (kafka-python's ``send`` is the bottleneck).
"""

from __future__ import annotations

import os
import time
import uuid

# consumer-group timeouts that make joins take seconds instead of ~25 s on the test broker
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 10000}


class TestBroker:
    __test__ = False  # not a test class
    def __init__(self, bootstrap: str, embedded=None) -> None:
        self.bootstrap = bootstrap
        self.embedded = embedded

    def topics(self, prefix: str, partitions: int = 1, names=("readings", "scores", "anomalies", "dead")) -> dict[str, str]:
        """Fresh topics ``<prefix>-<uuid>.<name>`` created on the broker; returns name -> topic."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
        out = {n: f"{tag}.{n}" for n in names}
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(t, partitions if n == "readings" else 1, 1) for n, t in out.items()])
        finally:
            admin.close()
        return out

    def produce(self, topic: str, messages, partition_of=None) -> int:
        """Send (key, value) pairs; ``partition_of(key)`` picks a partition when given."""
        from kafka import KafkaProducer

        prod = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20, batch_size=262144)
        n = 0
        for key, value in messages:
            prod.send(topic, key=key, value=value, partition=partition_of(key) if partition_of else None)
            n += 1
        prod.flush(60)
        prod.close()
        return n

    def read_all(self, topic: str, expect: int | None = None, timeout: float = 60.0, idle: float = 2.0):
        """Every record of ``topic`` (all partitions), waiting until ``expect`` arrived (or ``idle`` s with none new)."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        parts = c.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            got = c.poll(timeout_ms=200)
            for recs in got.values():
                out.extend(recs)
            if got:
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
        c.close()
        return out


def start_test_broker():
    """(TestBroker, stop callable)."""
    ext = os.environ.get("SLOTWATCH_TEST_BOOTSTRAP")
    if ext:
        return TestBroker(ext), lambda: None
    from worker.kafka.embedded import EmbeddedBroker

    b = EmbeddedBroker().start()
    return TestBroker(b.bootstrap, b), b.stop
