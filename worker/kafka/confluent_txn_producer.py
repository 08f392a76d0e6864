"""The librdkafka side of :mod:`worker.kafka.confluent_txn`: the transactional producer, how its errors
tell fencing, and the future the changelog writer waits on."""

from __future__ import annotations

import logging
import time

from worker.kafka.txn_errors import TransactionFenced

log = logging.getLogger("slotwatch.transactions")


def error_code(e) -> int | None:
    """The librdkafka error code of a ``KafkaException`` (``None`` for anything else)."""
    err = e.args[0] if e.args else None
    return err.code() if hasattr(err, "code") and hasattr(err, "txn_requires_abort") else None


def is_fatal(exc: BaseException | None) -> bool:
    """``exc`` or one of its causes is a fatal librdkafka error (the producer cannot be used again)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if error_code(exc) is not None and exc.args[0].fatal():
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
    return False


def is_fenced(exc: BaseException | None) -> bool:
    """``exc`` or one of its causes says another producer took the transactional.id."""
    from confluent_kafka import KafkaError as E

    fenced = (E._FENCED, E.PRODUCER_FENCED, E.INVALID_PRODUCER_EPOCH, E.FENCED_INSTANCE_ID)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TransactionFenced) or error_code(exc) in fenced:
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
    return False


class Delivery:
    """kafka-python's future for one record sent by :meth:`ConfluentTransactionalRound.send`: ``get()``
    serves the producer's callbacks until the record's delivery report; returns itself (``.offset``)."""

    __slots__ = ("round", "error", "offset", "settled")

    def __init__(self, rnd) -> None:
        self.round, self.error, self.offset, self.settled = rnd, None, None, False

    def done(self, err, msg) -> None:
        self.error, self.settled = err, True
        self.offset = msg.offset() if err is None and msg is not None else None

    def get(self, timeout: float | None = None):
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        while not self.settled and time.monotonic() < deadline:
            self.round.poll(0.05)
        if not self.settled:
            raise TimeoutError("no delivery report in time")
        if self.error is not None:
            raise self.round.ck.KafkaException(self.error)
        return self


def make_confluent_transactional_producer(k, timeout_s: float = 30.0):
    """A librdkafka producer with :func:`~worker.kafka.txn_producer.transactional_id`, ``init_transactions()`` done
    (which aborts a predecessor's open transaction and fences it)."""
    from worker.kafka.confluent_config import require_confluent, transactional_producer_config
    from worker.kafka.txn_producer import transactional_id

    tid = transactional_id(k)
    producer = require_confluent().Producer(transactional_producer_config(k, tid))
    producer.init_transactions(timeout_s)
    log.info("transactional producer %s ready (confluent-kafka)", tid)
    return producer
