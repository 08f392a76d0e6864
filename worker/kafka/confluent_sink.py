"""The producer side of the worker with confluent-kafka (librdkafka), ``SLOTWATCH_KAFKA__CLIENT=confluent``:
:class:`ConfluentSink` is :class:`worker.kafka.sink.Sink` (the same counters, re-sends and
flush loop) over a librdkafka producer.

Delivery callbacks are served where librdkafka serves them, on the calling thread: by
``producer.poll(0)`` after each :meth:`ConfluentSink.send_many` and in
:meth:`ConfluentSink.publish_counts` (once per poll), and by ``flush``.  One callback per kind
(no object per message); a failed delivery is rebuilt from the delivered message itself and
kept to be sent again, as with kafka-python.
"""

from __future__ import annotations

import logging

from worker.kafka.sink import Message, Sink

log = logging.getLogger("slotwatch.worker")


class ConfluentSink(Sink):
    """Sends messages with a confluent-kafka ``Producer`` and tracks their delivery."""

    def __init__(self, producer, metrics, retry_backoff_s: float, on_outage=None) -> None:
        super().__init__(producer, metrics, retry_backoff_s, on_outage)
        self._delivered: dict = {}  # kind -> delivery callback (built once per kind)

    def _delivery_for(self, kind: str):
        cb = self._delivered.get(kind)
        if cb is None:
            lock, failed = self._lock, self._failed

            def cb(err, msg, kind=kind):
                if err is None:
                    with lock:
                        self.acknowledged += 1
                        self._acked_by_kind[kind] = self._acked_by_kind.get(kind, 0) + 1
                else:
                    failed((msg.topic(), msg.key(), msg.value(), msg.headers(), kind), err)

            self._delivered[kind] = cb
        return cb

    def _produce(self, msg: Message) -> bool:
        """One ``produce``; a full local queue is drained once and tried again. False: refused (kept)."""
        topic, key, value, headers, kind = msg
        produce = self.producer.produce
        for attempt in (0, 1):
            try:
                produce(topic, value, key, headers=headers, on_delivery=self._delivery_for(kind))
                return True
            except BufferError:  # librdkafka's queue is full: serve callbacks, let it send
                if attempt == 0:
                    self.producer.poll(0.5)
                    continue
                log.warning("produce to %s refused: the local queue stays full; will retry", topic)
            except Exception as e:  # noqa: BLE001 - KafkaException: retried in flush
                log.warning("produce to %s failed (%s); will retry", topic, e)
        with self._lock:
            self._retry.append(msg)
        return False

    def send_many(self, messages) -> None:
        """Send ``(topic, key, value, headers, kind)`` messages in order."""
        n = 0
        for msg in messages:
            n += self._produce(msg)
        if n:
            with self._lock:
                self.sent += n
        self.producer.poll(0)  # serve the delivery callbacks due

    def publish_counts(self) -> None:
        self.producer.poll(0)
        super().publish_counts()

    def _flush_producer(self, wait: float) -> None:
        left = self.producer.flush(wait)
        if left:
            log.warning("flush did not complete: %d messages still queued", left)

    def _send_again(self, msg: Message) -> None:
        if self._produce(msg):
            with self._lock:
                self.sent += 1

    def close(self, timeout: float) -> None:
        self.producer.flush(timeout)  # librdkafka's producer has no close: it goes with the object
