"""The Kafka edge of exactly-once output (``SLOTWATCH_KAFKA__EXACTLY_ONCE``): a transactional
producer, and :class:`TransactionalRound`, one Kafka transaction per checkpoint round.

A round's transaction holds everything the worker produced since the previous round (scores,
anomalies and episode messages, dead letters, the changelog rows and markers of
:mod:`worker.kafka.changelog`) and the consumer group's offsets (sent with the consumer's
group metadata, KIP-447); a consumer reading with ``isolation_level="read_committed"`` sees
all of it or, after an abort or a crash, none of it (on a broker that filters aborted
records: the test broker does not, see README "Exactly-once output").

**transactional.id: one per worker, not one per partition.**  ``<prefix>.<group_id>.<worker_id>``
(:func:`transactional_id`; ``worker_id`` defaults to the host name).  Before KIP-447 a
consume-transform-produce app needed one producer per input partition (id derived from the
partition) so that the partition's next owner fenced the previous owner's producer.  Since
KIP-447 (Kafka 2.5) the offsets sent with the consumer's *group metadata* (member id and
generation) are refused for a member that lost the partition, so a zombie's transaction cannot
commit and one producer per worker is safe; it costs one producer, one transaction and one
EndTxn per round instead of one per partition.  The id must still be stable across restarts
of the same worker: the restarted worker's ``init_transactions`` aborts the transaction its
predecessor left open (at once, instead of after ``SLOTWATCH_KAFKA__TRANSACTION_TIMEOUT_MS``,
during which read_committed consumers of the touched partitions are held at the open
transaction) and fences the predecessor if it is still alive (it gets
:class:`TransactionFenced`, exit code 7).  On the test broker (tansu 0.6, measured in
``tests/test_transactions_kafka.py``) the stable id is the *only* protection: it accepts
offsets with any member id and generation, and it did not abort a transaction left open past
its timeout.

**Errors.**  A fenced producer (``ProducerFencedError``, ``InvalidProducerEpochError``, or any
call after one of them) raises :class:`TransactionFenced`: fatal, another process owns the id.
Any other failure of a send, of the offsets or of the commit aborts the transaction and raises
:class:`TransactionAborted`: the caller rewinds the round's partitions to their committed
offsets and state, and replays.  Only an abort that the broker *refused* quickly (an error
state that is not fencing) replaces the producer by a new one with the same id (its
``init_transactions`` aborts the transaction on the broker); one that cannot initialise raises
:class:`TransactionFatal` (exit code 5).

**In doubt: never re-initialise.**  An EndTxn (commit or abort) with no answer within
``timeout_s`` leaves the round's outcome unknown, and the producer may have been fenced: another
producer with the same id may have bumped the epoch (measured on the test broker, tansu 0.6: an
EndTxn with a stale epoch is never answered, the broker drops the connection and kafka-python
sends it again for ever; a produce, AddPartitionsToTxn or TxnOffsetCommit with a stale epoch is
answered ``PRODUCER_FENCED``).  Re-initialising the id then would take it back from the worker
that fenced this one.  So the producer is kept: :class:`TransactionInDoubt` tells the caller to
rewind, and the next use of the producer first waits (``timeout_s`` more) for that EndTxn
(:class:`~worker.kafka.txn_errors.PendingEnd`): answered -> the same producer goes on; fenced, or
still no answer -> :class:`TransactionFenced` (exit code 7: stop, never re-initialise the id).
kafka-python's own epoch bump, which can re-initialise the id, is switched off
(:func:`~worker.kafka.txn_producer.never_bump_epoch`).

kafka-python's ``send_offsets_to_transaction``, ``commit_transaction`` and
``abort_transaction`` wait without a time limit; here each is bounded by ``timeout_s`` (run on
a helper thread).

>>> from worker.settings import KafkaSettings
>>> transactional_id(KafkaSettings(group_id="fleet", worker_id="slotwatch-2"))
'slotwatch.fleet.slotwatch-2'
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from typing import Any

from worker.kafka.committed import make_committed_reader, read_committed_config  # noqa: F401 - re-exported
from worker.kafka.txn_errors import (  # noqa: F401 - re-exported
    PendingEnd, RoundFailures, TransactionAborted, TransactionError, TransactionFatal, TransactionFenced, TransactionInDoubt,
    fenced_error, is_fenced)
from worker.kafka.txn_producer import (  # noqa: F401 - re-exported
    as_offsets, end_txn_pending, make_round, make_transactional_producer, transactional_id, wait_end_txn, worker_identity)

log = logging.getLogger("slotwatch.transactions")


class TransactionalRound(RoundFailures):
    """One Kafka transaction per checkpoint round, over a transactional producer.

    It quacks like the producer for what the sink and the changelog writer use (``send``,
    ``flush``).  The transaction begins at the first :meth:`send` (or :meth:`send_offsets`) after a
    commit or abort: every record produced between two rounds belongs to the open one.
    :meth:`commit` sends the offsets with the consumer's group metadata, waits for every record,
    and commits; :meth:`abort` drops it.  ``factory()`` returns an initialised transactional
    producer (:func:`make_transactional_producer`), called again when the producer is replaced.
    """

    def __init__(self, factory: Callable[[], Any], *, timeout_s: float = 30.0, metadata: str = "slotwatch") -> None:
        self._factory = factory
        self.timeout_s = timeout_s
        self.metadata = metadata
        self.producer = factory()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slotwatch-txn")
        self.open = False
        self.sent = 0  # records sent in the open transaction
        self.committed = self.aborted = 0  # transactions committed / aborted by this round object
        self.consecutive_failures = 0
        self.pending: PendingEnd | None = None  # an EndTxn that got no answer in time (module doc)

    # ----------------------------------------------------------------------------- the producer's face
    def group_metadata(self, consumer):  # what the offsets are sent with (KIP-447)
        return consumer.group_metadata()


    def begin(self) -> None:
        """Open the round's transaction (local in kafka-python: the broker hears of it at the first send)."""
        if self.open:
            return
        self.settle()
        try:
            self.producer.begin_transaction()
        except Exception as e:  # noqa: BLE001 - a fenced or broken producer
            self._fail(e, "begin the transaction")
        self.open = True
        self.sent = 0

    def send(self, topic: str, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        """``KafkaProducer.send`` inside the open transaction (begun if needed); returns its future."""
        self.begin()
        try:
            f = self.producer.send(topic, value=value, key=key, headers=headers, partition=partition,
                                   timestamp_ms=timestamp_ms)
        except Exception as e:  # noqa: BLE001 - the transaction is in an error state, or fenced
            self._fail(e, f"send to {topic}")
        self.sent += 1
        return f

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged (or failed: the commit then aborts)."""
        self.producer.flush(timeout=self.timeout_s if timeout is None else timeout)

    # ----------------------------------------------------------------------------- the round
    def send_offsets(self, offsets: Mapping[Any, Any], group_metadata) -> None:
        """Put the group's next offsets (``{TopicPartition: offset}``) into the open transaction, with
        ``consumer.group_metadata()`` taken now (a zombie's generation is refused by Kafka).  On the test
        broker offsets in a transaction without records are ignored: a round always writes its markers."""
        self.begin()
        if self.sent == 0:
            log.warning("offsets sent in a transaction without records: the test broker (tansu 0.6) ignores them")
        om = as_offsets(offsets, self.metadata)
        self._bounded(lambda: self.producer.send_offsets_to_transaction(om, group_metadata), "send the offsets")

    def commit(self, offsets: Mapping[Any, Any] | None = None, group_metadata=None) -> None:
        """Commit the round: offsets (when given) into the transaction, every record acknowledged, EndTxn.

        Raises :class:`TransactionFenced` (fatal) or :class:`TransactionAborted` (the round was
        aborted: rewind and replay).  Nothing open and no offsets: nothing to do.
        """
        if offsets:
            if group_metadata is None:
                raise ValueError("offsets need the consumer's group metadata (consumer.group_metadata())")
            self.send_offsets(offsets, group_metadata)
        if not self.open:
            return
        try:
            self.producer.flush(timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - KafkaTimeoutError: records not acknowledged in time
            self._fail(e, "flush the round's records")
        try:
            self._end(self.producer.commit_transaction, "commit")
        except TransactionInDoubt:
            raise
        except Exception as e:  # noqa: BLE001 - answered with an error
            self._fail(e, "commit the transaction")
        self._committed()

    def abort(self, cause: BaseException | None = None) -> None:
        """Abort the open transaction (its records are marked aborted, its offsets dropped).

        An abort with no answer within ``timeout_s`` (or refused while an EndTxn is unanswered) is
        *in doubt*: the producer is kept, never replaced (:attr:`pending`, module doc).  A producer
        whose abort the broker refused otherwise (an error state that is not fencing) is replaced:
        the new producer's ``init_transactions`` aborts the transaction on the broker.  Raises
        :class:`TransactionFenced` when the producer was fenced, :class:`TransactionFatal` when no
        replacement can be made; otherwise returns with no transaction open.
        """
        if is_fenced(cause, self.producer):
            self._fenced(cause)
        if not self.open and cause is None:
            return
        try:
            if self.pending is None:  # else that EndTxn is still pending: the next begin settles it
                self._end(self.producer.abort_transaction, "abort")
        except TransactionInDoubt:
            pass  # aborted as far as this round knows; the producer is kept, not replaced
        except Exception as e:  # noqa: BLE001 - answered with an error (a producer in a fatal state)
            if is_fenced(e, self.producer):
                self._fenced(e)
            if end_txn_pending(self.producer):  # an EndTxn of its own still unanswered: in doubt, keep it
                self.pending = PendingEnd(self._pool.submit(wait_end_txn, self.producer), "commit")
                log.error("transaction abort refused while an EndTxn is unanswered (%s); not re-initialising", e)
            else:
                log.warning("transaction abort failed (%s); replacing the producer (its init aborts the "
                            "transaction on the broker)", e)
                self._replace(e)
        self.open = False
        self.sent = 0
        self.aborted += 1
        self.consecutive_failures += 1

    def close(self, timeout: float = 5.0) -> None:
        """Abort what is open (best effort) and close the producer."""
        try:
            if self.open:
                self.abort()
        except TransactionError as e:
            log.warning("closing with the transaction not aborted (%s); the next init with this id aborts it", e)
        finally:
            if self.producer is not None:
                self.producer.close(timeout=timeout)
            self._pool.shutdown(wait=False)

    # ----------------------------------------------------------------------------- internals
    def _end(self, fn, what: str) -> None:
        """EndTxn (``commit_transaction`` / ``abort_transaction``) bounded by ``timeout_s``; no answer ->
        :attr:`pending`, :class:`TransactionInDoubt` (never a new producer: module doc)."""
        fut = self._pool.submit(fn)
        try:
            fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._in_doubt(PendingEnd(fut, what), what)

    def settle(self) -> None:
        """Before the producer is used again: wait for a pending EndTxn (:meth:`PendingEnd.settle`)."""
        if self.pending is None:
            return
        try:
            self.pending.settle(self.timeout_s, self.producer)
        except TransactionFenced as e:
            self._fenced(e)
        except TransactionFatal:
            self.open = False
            raise
        log.warning("the pending %s (EndTxn) was answered; the same producer goes on", self.pending.what)
        self.pending = None

    def _bounded(self, fn, what: str) -> None:
        try:
            self._pool.submit(fn).result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._fail(TimeoutError(f"no answer within {self.timeout_s:g} s"), what)
        except Exception as e:  # noqa: BLE001
            self._fail(e, what)

    def _is_fenced(self, e: BaseException | None) -> bool:
        return is_fenced(e, self.producer)

    def _fenced_error(self, e: BaseException | None) -> TransactionFenced:
        return fenced_error(self.producer, e)

    def _replace(self, cause: BaseException) -> None:
        old, self.producer = self.producer, None
        self._pool.shutdown(wait=False)  # a hung call keeps its thread; it is abandoned with the old producer
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slotwatch-txn")
        try:
            old.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
        self._new_producer(cause)
