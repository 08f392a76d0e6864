"""The producer side of the worker with confluent-kafka (librdkafka), ``SLOTWATCH_KAFKA__CLIENT=confluent``:
:class:`ConfluentSink` is :class:`worker.kafka.sink.Sink` (the same counters, re-sends and
flush loop) over a librdkafka producer.

Delivery callbacks are served where librdkafka serves them, on the calling thread: by
``producer.poll(0)`` after each :meth:`ConfluentSink.send_many` and in
:meth:`ConfluentSink.publish_counts` (once per poll), and by ``flush``.  One callback per kind
(no object per message); a failed delivery is rebuilt from the delivered message itself and
kept to be sent again, as with kafka-python.

Exactly-once (``SLOTWATCH_KAFKA__EXACTLY_ONCE``): the producer is the round's
:class:`~worker.kafka.confluent_txn.ConfluentTransactionalRound` (the same ``produce``/``poll``/``flush``);
a send it refuses with a :class:`~worker.kafka.txn_errors.TransactionError` stops the sending until the
round rewinds (:attr:`Sink.error`), as with kafka-python's round.
"""

from __future__ import annotations

import logging

from worker.kafka.sink import Message, Sink
from worker.kafka.txn_errors import TransactionError

log = logging.getLogger("slotwatch.worker")


class ConfluentSink(Sink):
    """Sends messages with a confluent-kafka ``Producer`` and tracks their delivery."""

    def __init__(self, producer, metrics, retry_backoff_s: float, on_outage=None) -> None:
        super().__init__(producer, metrics, retry_backoff_s, on_outage)
        from confluent_kafka import KafkaException

        self._exc = KafkaException
        self._delivered: dict = {}  # kind -> delivery callback (built once per kind)

    def _delivery_for(self, kind: str):
        cb = self._delivered.get(kind)
        if cb is None:
            lock, failed, KafkaException = self._lock, self._failed, self._exc

            def cb(err, msg, kind=kind):
                if err is None:
                    with lock:
                        self.acknowledged += 1
                        self._acked_by_kind[kind] = self._acked_by_kind.get(kind, 0) + 1
                else:  # a KafkaException, as kafka-python's errors are exceptions (the round reads its cause)
                    failed((msg.topic(), msg.key(), msg.value(), msg.headers(), kind), KafkaException(err))

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
            except TransactionError:
                raise  # exactly-once: the round's transaction is aborted (or fenced); send_many stops
            except Exception as e:  # noqa: BLE001 - KafkaException: retried in flush
                log.warning("produce to %s failed (%s); will retry", topic, e)
        with self._lock:
            self._retry.append(msg)
        return False

    def send_many(self, messages) -> None:
        """Send ``(topic, key, value, headers, kind)`` messages in order."""
        if self.error is not None:
            return  # exactly-once: the open transaction failed; nothing more goes out until the round rewinds
        n = 0
        try:
            for msg in messages:
                n += self._produce(msg)
        except TransactionError as e:
            self.error = e
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
        try:
            ok = self._produce(msg)
        except TransactionError as e:
            self.error, ok = e, False
        if ok:
            with self._lock:
                self.sent += 1

    def close(self, timeout: float) -> None:
        from worker.kafka.confluent_txn import ConfluentTransactionalRound

        if isinstance(self.producer, ConfluentTransactionalRound):  # exactly-once: abort what is open (best effort)
            self.producer.close(timeout)
        else:
            self.producer.flush(timeout)  # the producer goes with the object
