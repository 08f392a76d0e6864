"""Exactly-once output with confluent-kafka (librdkafka), ``SLOTWATCH_KAFKA__CLIENT=confluent``:
:class:`ConfluentTransactionalRound` is :class:`worker.kafka.transactions.TransactionalRound` (one Kafka
transaction per checkpoint round, the same attributes, errors and fencing rules) over a librdkafka
transactional producer.  It quacks like the librdkafka producer for :class:`~worker.kafka.confluent_sink.ConfluentSink`
(``produce``, ``poll``, ``flush``) and like kafka-python's for the changelog writer (``send`` -> a future).

librdkafka's transaction calls take a timeout themselves (no helper thread), and raise ``KafkaException``
whose error tells the class: ``fatal()`` (the producer is unusable; ``_FENCED`` when another producer took
the id), ``txn_requires_abort()`` (abort, then go on), ``retriable()`` (call again: a commit or abort that
timed out goes on in the background).  Mapped as for kafka-python (:mod:`worker.kafka.transactions`):

* fenced (``_FENCED``, ``PRODUCER_FENCED``, ``INVALID_PRODUCER_EPOCH``, also when librdkafka reports
  ``PRODUCER_FENCED`` as merely abortable, as it does for a produce answered so on the test broker) ->
  :class:`TransactionFenced` (exit code 7), never re-initialised;
* an EndTxn that timed out (retriable) -> :class:`TransactionInDoubt`: the caller rewinds; the next use calls
  the same EndTxn again (librdkafka resumes it) for ``timeout_s`` more; no answer, or fenced -> fenced;
* any other failure -> the transaction is aborted (:class:`TransactionAborted`, rewind and replay); a
  producer whose abort fails with a fatal, not fencing, error is replaced (the new one's init aborts the
  transaction on the broker).

Measured on the test broker (tansu 0.6, librdkafka 2.16): init, produce, ``send_offsets_to_transaction``
with ``consumer_group_metadata()``, commit and abort are served; once a second producer initialised the
id, the first one's commit gets no answer (``_TIMED_OUT``, retriable, again on the retry; an abort then
answers ``_CONFLICT``: the commit is still in progress), its produce is answered ``PRODUCER_FENCED``
(abortable), and a transaction begun after the fencing fails at AddPartitionsToTxn with the fatal
``_FENCED``, which ``poll()`` raises once (its message then fails ``_PURGE_QUEUE``).
"""

from __future__ import annotations

import logging
import time

from worker.kafka.confluent_txn_producer import (  # noqa: F401 - re-exported
    Delivery, error_code, is_fatal, is_fenced, make_confluent_transactional_producer)
from worker.kafka.txn_errors import (
    RoundFailures, TransactionError, TransactionFatal, TransactionFenced, TransactionInDoubt, fenced_error)

log = logging.getLogger("slotwatch.transactions")


class ConfluentTransactionalRound(RoundFailures):
    """One transaction per checkpoint round (module doc); ``factory()``: an initialised librdkafka producer."""

    def __init__(self, factory, *, timeout_s: float = 30.0, metadata: str = "slotwatch", transactional_id=None) -> None:
        from worker.kafka.confluent_config import require_confluent

        self.ck = require_confluent()
        self._factory, self.timeout_s, self.metadata, self.transactional_id = factory, timeout_s, metadata, transactional_id
        self.producer = factory()
        self.open, self.sent = False, 0  # sent: records sent in the open transaction
        self.committed = self.aborted = self.consecutive_failures = 0
        self.pending: str | None = None  # "commit" / "abort": an EndTxn that got no answer in time
        self.fatal_error: BaseException | None = None  # a fatal error ``poll``/``flush`` raised (e.g. fenced)

    # ----------------------------------------------------------------------------- the producer's face
    def group_metadata(self, consumer):  # what the offsets are sent with
        return consumer.consumer_group_metadata()

    def begin(self) -> None:
        if self.open:
            return
        self.settle()
        if self.fatal_error is not None:
            self._fail(self.fatal_error, "begin the transaction")
        try:
            self.producer.begin_transaction()
        except Exception as e:  # noqa: BLE001 - KafkaException: fenced or in an error state
            self._fail(e, "begin the transaction")
        self.open, self.sent = True, 0

    def produce(self, topic: str, value=None, key=None, headers=None, partition=None, on_delivery=None) -> None:
        """``Producer.produce`` inside the open transaction (begun if needed); ``BufferError`` passes (queue full)."""
        self.begin()
        kw = {} if partition is None else {"partition": partition}
        try:
            self.producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery, **kw)
        except BufferError:
            raise
        except Exception as e:  # noqa: BLE001 - KafkaException
            self._fail(e, f"send to {topic}")
        self.sent += 1

    def send(self, topic: str, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        """kafka-python's ``send`` (what the changelog writer calls): a :class:`Delivery` future."""
        fut = Delivery(self)
        self.produce(topic, value, key, headers, partition, on_delivery=fut.done)
        return fut

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery callbacks; a fatal error librdkafka raises here is kept for the round (:meth:`abort`)."""
        try:
            return self.producer.poll(timeout)
        except Exception as e:  # noqa: BLE001 - KafkaException (fatal), or SystemError from a callback after it
            self._note(e)
            return 0

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every record sent so far is acknowledged (or failed); the records still queued."""
        try:
            return self.producer.flush(self.timeout_s if timeout is None else timeout)
        except Exception as e:  # noqa: BLE001 - as poll
            self._note(e)
            return len(self.producer)

    # ----------------------------------------------------------------------------- the round
    def send_offsets(self, offsets, group_metadata) -> None:
        """The group's next offsets (``{TopicPartition: offset | OffsetAndMetadata}``) into the open transaction."""
        self.begin()
        tp = self.ck.TopicPartition
        parts = [tp(t.topic, t.partition, int(getattr(o, "offset", o)), metadata=getattr(o, "metadata", None) or self.metadata)
                 for t, o in offsets.items()]
        try:
            self.producer.send_offsets_to_transaction(parts, group_metadata, self.timeout_s)
        except Exception as e:  # noqa: BLE001
            self._fail(e, "send the offsets")

    def commit(self, offsets=None, group_metadata=None) -> None:
        """Offsets (when given) into the transaction, every record acknowledged, EndTxn; raises
        :class:`TransactionFenced` or :class:`TransactionAborted` (rewind and replay)."""
        if offsets:
            if group_metadata is None:
                raise ValueError("offsets need the consumer's group metadata (consumer.consumer_group_metadata())")
            self.send_offsets(offsets, group_metadata)
        if not self.open:
            return
        left = self.flush()
        if left or self.fatal_error is not None:
            self._fail(self.fatal_error or TimeoutError(f"{left} records not acknowledged within {self.timeout_s:g} s"),
                       "flush the round's records")
        try:
            self._end("commit")
        except TransactionInDoubt:
            raise
        except Exception as e:  # noqa: BLE001 - answered with an error
            self._fail(e, "commit the transaction")
        self._committed()

    def abort(self, cause: BaseException | None = None) -> None:
        """Abort the open transaction; as :meth:`TransactionalRound.abort` (in doubt: kept; fatal: replaced)."""
        if self._is_fenced(cause):
            self._fenced(cause)
        if not self.open and cause is None:
            return
        try:
            # no EndTxn when none is begun (but a fatal producer's: it fails, replacing it) or one is pending (settle)
            if self.pending is None and (self.open or is_fatal(cause) or is_fatal(self.fatal_error)):
                self._end("abort")
        except TransactionInDoubt:
            pass
        except Exception as e:  # noqa: BLE001 - KafkaException
            if self._is_fenced(e):
                self._fenced(e)
            if error_code(e) == self.ck.KafkaError._CONFLICT:  # a commit still in progress: in doubt, keep it
                self.pending = "commit"
                log.error("transaction abort refused while a commit is unanswered (%s); not re-initialising", e)
            else:
                log.warning("transaction abort failed (%s); replacing the producer (its init aborts the "
                            "transaction on the broker)", e)
                self._replace(e)
        self.poll(0)  # the purged records' delivery reports, before the sink forgets the round
        self.open, self.sent = False, 0
        self.aborted, self.consecutive_failures = self.aborted + 1, self.consecutive_failures + 1

    def settle(self) -> None:
        """Before the producer is used again: call the pending EndTxn again; answered -> go on; otherwise stop."""
        if self.pending is None:
            return
        what = self.pending
        fn = self.producer.commit_transaction if what == "commit" else self.producer.abort_transaction
        try:
            fn(self.timeout_s)
        except Exception as e:  # noqa: BLE001
            if self._is_fenced(e) or (error_code(e) is not None and e.args[0].retriable()):
                self._fenced(TransactionFenced(
                    f"the {what} (EndTxn) got no answer in two timeouts: another producer may have taken the "
                    "transactional.id (the test broker does not answer a fenced producer's EndTxn); stopping "
                    "without re-initialising the id", e))
            self.open, self.pending = False, None
            raise TransactionFatal(f"the pending {what} failed ({e}); the producer is unusable and is not "
                                   "re-initialised", e) from e
        log.warning("the pending %s (EndTxn) was answered; the same producer goes on", what)
        self.pending = None

    def close(self, timeout: float = 5.0) -> None:
        """Abort what is open (best effort) and flush; librdkafka's producer goes with the object."""
        try:
            if self.open:
                self.abort()
        except TransactionError as e:
            log.warning("closing with the transaction not aborted (%s); the next init with this id aborts it", e)
        if self.pending is None and self.fatal_error is None:
            self.flush(timeout)

    # ----------------------------------------------------------------------------- internals
    def _end(self, what: str) -> None:
        """EndTxn within ``timeout_s``; timed out (retriable) -> :attr:`pending`, :class:`TransactionInDoubt`."""
        fn = self.producer.commit_transaction if what == "commit" else self.producer.abort_transaction
        try:
            fn(self.timeout_s)
        except self.ck.KafkaException as e:
            err = e.args[0]
            if not err.retriable() or err.txn_requires_abort() or self._is_fenced(e):
                raise
            self._in_doubt(what, what, f" ({err.name()})")

    def _note(self, e: BaseException) -> None:
        cause = e if isinstance(e, self.ck.KafkaException) else (e.__cause__ or e.__context__ or e)
        if self.fatal_error is None:
            log.error("transactional producer: %s", cause)
        self.fatal_error = self.fatal_error or cause

    def _is_fenced(self, exc: BaseException | None) -> bool:
        return is_fenced(exc) or is_fenced(self.fatal_error)

    def _fenced_error(self, e: BaseException | None) -> TransactionFenced:
        return fenced_error(None, e, self.transactional_id)

    def _replace(self, cause: BaseException) -> None:
        self.producer, self.fatal_error = None, None
        self._new_producer(cause)
