"""The producer side of the worker: every output (scores, anomalies, episodes, silence
events, dead letters) goes out through one :class:`Sink`.

Delivery is tracked by the producer's callbacks and three counters (sent, acknowledged,
failed) instead of keeping every future and its bytes until the next checkpoint: an
acknowledged message is forgotten at once; a failed one (or one the producer refused, e.g. a
metadata timeout while the broker is away) is kept and sent again by :meth:`Sink.flush`, with
backoff, so output stays at-least-once.  :meth:`Sink.flush` answers whether everything sent
so far is acknowledged: the checkpoint round's first step.

``slotwatch_messages_published_total{kind}`` counts acknowledged messages; the callbacks
count per kind and :meth:`Sink.publish_counts` moves the counts to the metric once per poll
(no per-message label look-up).
"""

from __future__ import annotations

import functools
import logging
import threading
import time

log = logging.getLogger("slotwatch.worker")

#: a message: (topic, key, value, headers, kind)
Message = tuple


class Sink:
    """Sends messages with a kafka-python producer and tracks their delivery."""

    def __init__(self, producer, metrics, retry_backoff_s: float, on_outage=None) -> None:
        self.producer = producer
        self.metrics = metrics
        self.retry_backoff_s = retry_backoff_s
        self.on_outage = on_outage or (lambda: None)  # called when outputs stay unacknowledged (readiness)
        self._lock = threading.Lock()
        self.sent = 0  # sends the producer accepted
        self.acknowledged = 0
        self.failed = 0  # sends that came back failed (kept in _retry)
        self._acked_by_kind: dict[str, int] = {}
        self._retry: list[Message] = []  # failed or refused: sent again by flush()
        self._ok = {}  # kind -> success callback (built once per kind)
        # exactly-once (the producer is a worker.kafka.transactions.TransactionalRound): a send that raised a
        # TransactionError, and the last delivery error; the round aborts (or stops, fenced) and calls reset()
        self.error: BaseException | None = None
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------------ sending
    def _ok_for(self, kind: str):
        cb = self._ok.get(kind)
        if cb is None:
            def cb(_metadata, kind=kind):
                with self._lock:
                    self.acknowledged += 1
                    self._acked_by_kind[kind] = self._acked_by_kind.get(kind, 0) + 1
            self._ok[kind] = cb
        return cb

    def _failed(self, msg: Message, error) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = error
            self._retry.append(msg)

    def send(self, topic: str, key, value: bytes, headers=None, kind: str = "score") -> None:
        self.send_many(((topic, key, value, headers, kind),))

    def send_many(self, messages) -> None:
        """Send ``(topic, key, value, headers, kind)`` messages in order (kafka-python has no batch call:
        this keeps the per-message Python work to one ``send`` and two callback registrations)."""
        from worker.kafka.txn_errors import TransactionError

        if self.error is not None:
            return  # exactly-once: the open transaction failed; nothing more goes out until the round rewinds
        send = self.producer.send
        ok_for, failed = self._ok_for, self._failed
        n = 0
        for msg in messages:
            topic, key, value, headers, kind = msg
            try:
                fut = send(topic, key=key, value=value, headers=headers)
            except TransactionError as e:  # exactly-once: the transaction is aborted (or fenced): the round handles it
                self.error = e
                break
            except Exception as e:  # noqa: BLE001 - metadata timeout while the broker is away: retried in flush
                log.warning("produce to %s failed (%s); will retry", topic, e)
                with self._lock:
                    self._retry.append(msg)
                continue
            n += 1
            fut.add_callback(ok_for(kind))
            fut.add_errback(functools.partial(failed, msg))
        if n:
            with self._lock:
                self.sent += n

    # ------------------------------------------------------------------ delivery
    @property
    def in_flight(self) -> int:
        """Sent, neither acknowledged nor failed yet."""
        with self._lock:
            return self.sent - self.acknowledged - self.failed

    @property
    def unacknowledged(self) -> int:
        """Outputs not acknowledged yet: in flight, or waiting to be sent again."""
        with self._lock:
            return self.sent - self.acknowledged - self.failed + len(self._retry)

    @property
    def idle(self) -> bool:
        return self.unacknowledged == 0

    def publish_counts(self) -> None:
        """Acknowledged messages since the last call -> ``slotwatch_messages_published_total{kind}``."""
        if not self._acked_by_kind:
            return
        with self._lock:
            counts, self._acked_by_kind = self._acked_by_kind, {}
        published = self.metrics.published
        for kind, n in counts.items():
            published.labels(kind).inc(n)

    def flush(self, deadline: float | None = None, stopping=lambda: False) -> bool:
        """Flush the producer until every output sent so far is acknowledged.

        Failed sends are sent again with backoff (at-least-once).  False when ``deadline``
        (monotonic) passes first, or ``stopping()`` during an outage.
        """
        backoff = self.retry_backoff_s
        while True:
            wait = 10.0 if deadline is None else max(0.1, min(10.0, deadline - time.monotonic()))
            self._flush_producer(wait)
            self.publish_counts()
            left = self.unacknowledged
            if not left:
                return True
            self.on_outage()
            log.warning("%d outputs not acknowledged yet; retrying in %.1f s", left, backoff)
            if deadline is not None and time.monotonic() + backoff > deadline:
                return False
            if deadline is None and stopping():
                return False  # shutting down during an outage: the final round tries once more within the grace period
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            with self._lock:
                retry, self._retry = self._retry, []
            for msg in retry:
                self._send_again(msg)

    def _flush_producer(self, wait: float) -> None:
        try:
            self.producer.flush(timeout=wait)
        except Exception as e:  # noqa: BLE001 - KafkaTimeoutError
            log.warning("flush did not complete: %s", e)

    def _send_again(self, msg: Message) -> None:
        try:
            fut = self.producer.send(msg[0], key=msg[1], value=msg[2], headers=msg[3])
        except Exception as e:  # noqa: BLE001
            log.warning("re-send to %s failed (%s)", msg[0], e)
            with self._lock:
                self._retry.append(msg)
            return
        with self._lock:
            self.sent += 1
        fut.add_callback(self._ok_for(msg[4]))
        fut.add_errback(functools.partial(self._failed, msg))

    def reset(self) -> None:
        """Exactly-once, after an aborted transaction: its outputs are gone (the replay sends them again)."""
        with self._lock:
            self._retry = []
            self.error = self.last_error = None
            self.sent = self.acknowledged + self.failed
            self._acked_by_kind = {}

    def close(self, timeout: float) -> None:
        self.producer.close(timeout=timeout)
