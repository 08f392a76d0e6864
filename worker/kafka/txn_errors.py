"""What can go wrong with a Kafka transaction, as the worker tells it apart (see
:mod:`worker.kafka.transactions`): fenced (fatal, exit 7), aborted (rewind and replay), in doubt
(rewind, never re-initialise the id), fatal (exit 5)."""

from __future__ import annotations

import logging

from worker.exits import EXIT_BROKER, EXIT_FENCED

log = logging.getLogger("slotwatch.transactions")


class TransactionError(RuntimeError):
    """A round's transaction failed; ``exit_code`` is the worker's exit code when it is fatal."""

    exit_code: int = EXIT_BROKER

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class TransactionFenced(TransactionError):
    """Another producer with this worker's transactional.id took over: stop (exit code 7), do not retry."""

    exit_code = EXIT_FENCED


class TransactionFatal(TransactionError):
    """The producer cannot be used or replaced (e.g. not authorised for the transactional.id): exit code 5."""


class TransactionAborted(TransactionError):
    """The round was aborted (nothing of it is committed): rewind its partitions to the committed offsets and replay."""


class TransactionInDoubt(TransactionAborted):
    """EndTxn got no answer in time: the round may have committed, or been aborted, and the producer may have
    been fenced (another producer may have bumped the epoch).  The producer is kept, never re-initialised;
    the caller rewinds, and the next use of the producer first waits for that EndTxn (:class:`PendingEnd`)."""


def fenced_error(producer, cause: BaseException | None, tid: str | None = None) -> TransactionFenced:
    """Close the fenced kafka-python ``producer`` (no wait; ``None``: nothing to close) and say what happened
    (``cause`` when it already is one)."""
    if producer is not None:
        tid = getattr(producer, "config", {}).get("transactional_id")
        try:
            producer.close(timeout=0)
        except Exception:  # noqa: BLE001 - closing a fenced producer
            pass
    if isinstance(cause, TransactionFenced):
        return cause
    return TransactionFenced(
        f"fenced: another producer initialised the transactional.id {tid!r} (a restarted copy of this worker, "
        "or a second worker with the same SLOTWATCH_KAFKA__WORKER_ID); stopping without committing", cause)


_FENCED_NAMES = ("ProducerFencedError", "InvalidProducerEpochError", "FencedInstanceIdError")


def is_fenced(exc: BaseException | None, producer=None) -> bool:
    """Whether ``exc`` (or the producer's recorded transactional error) means another producer took the id.

    kafka-python raises ``ProducerFencedError`` once, then a plain ``KafkaError`` naming it for every
    later call; the transaction manager keeps the original as its last error.
    """
    from kafka import errors as E

    fenced = (E.ProducerFencedError, E.InvalidProducerEpochError, E.FencedInstanceIdError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, fenced) or isinstance(exc, TransactionFenced):
            return True
        if isinstance(exc, E.KafkaError) and any(n in str(exc) for n in _FENCED_NAMES):
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
    manager = getattr(producer, "_transaction_manager", None)  # kafka-python 3.0: no public accessor
    return isinstance(getattr(manager, "last_error", None), fenced)


class PendingEnd:
    """An EndTxn that got no answer within the round's timeout: the outcome is unknown.

    Measured on the test broker (tansu 0.6): once another producer has initialised the same
    transactional.id, an EndTxn (commit or abort) with the old epoch is not answered with
    PRODUCER_FENCED; tansu logs ``ProducerFenced`` and closes the connection, and kafka-python
    resends the request every ~100 ms for ever.  A producer *replaced* at this point (a new one
    with the same id, ``init_transactions``) bumps the epoch again and fences the worker that
    legitimately owns the id.  So a producer with an unanswered EndTxn is never replaced: the
    caller rewinds, and the next use of the producer waits (at most ``timeout_s`` more) for the
    pending EndTxn; fenced, or still no answer, stops the worker (exit code 7) without
    re-initialising; an answer lets the same producer go on.
    """

    def __init__(self, future, what: str) -> None:
        self.future = future  # concurrent.futures.Future of the blocked commit/abort call
        self.what = what

    def settle(self, timeout_s: float, producer) -> None:
        """Wait for the pending EndTxn; return when answered, raise :class:`TransactionFenced` otherwise."""
        import concurrent.futures

        try:
            self.future.result(timeout=timeout_s)
            return
        except concurrent.futures.TimeoutError:
            raise TransactionFenced(
                f"the {self.what} (EndTxn) got no answer in two timeouts: another producer may have taken the "
                "transactional.id (the test broker closes a fenced producer's EndTxn connection instead of "
                "answering); stopping without re-initialising the id") from None
        except Exception as e:  # noqa: BLE001 - answered with an error
            if is_fenced(e, producer):
                raise TransactionFenced(f"fenced: the pending {self.what} was answered {type(e).__name__}", e) from e
            raise TransactionFatal(f"the pending {self.what} failed ({type(e).__name__}: {e}); the producer is "
                                   "unusable and is not re-initialised", e) from e


class RoundFailures:
    """How both transactional rounds (:class:`~worker.kafka.transactions.TransactionalRound`,
    :class:`~worker.kafka.confluent_txn.ConfluentTransactionalRound`) end a failed call: fenced ->
    :class:`TransactionFenced`; else abort the round -> :class:`TransactionAborted`.  A round has
    ``open``, ``pending``, ``producer``, ``_factory``, ``abort()`` and ``_is_fenced()``/``_fenced_error()``."""

    def _fail(self, e: BaseException, what: str):
        if self._is_fenced(e):
            self._fenced(e)
        log.warning("could not %s (%s: %s); aborting the round", what, type(e).__name__, e)
        self.abort(e)
        raise TransactionAborted(f"transaction aborted: could not {what} ({type(e).__name__}: {e}); "
                                 "rewind to the committed offsets and replay", e) from e

    def _fenced(self, e: BaseException | None):
        self.open, self.pending = False, None
        raise self._fenced_error(e) from e

    def _in_doubt(self, pending, what: str, detail: str = ""):
        """An EndTxn got no answer within ``timeout_s``: keep it ``pending``, close the round, raise
        :class:`TransactionInDoubt` (the caller rewinds; never a new producer)."""
        self.pending, self.open, self.sent = pending, False, 0
        self.aborted += what == "commit"  # an abort is counted by abort()
        self.consecutive_failures += what == "commit"
        log.error("the %s (EndTxn) got no answer within %g s%s: the producer may be fenced; rewinding "
                  "without re-initialising the transactional.id", what, self.timeout_s, detail)
        raise TransactionInDoubt(f"the {what} got no answer within {self.timeout_s:g} s (in doubt); "
                                 "rewind to the committed offsets and replay") from None

    def _committed(self) -> None:
        self.open, self.consecutive_failures = False, 0
        self.committed += 1

    def _new_producer(self, cause: BaseException) -> None:
        """The replacement producer (its init aborts the transaction on the broker); none -> :class:`TransactionFatal`."""
        try:
            self.producer = self._factory()
        except Exception as e:  # noqa: BLE001
            raise TransactionFatal(f"cannot replace the transactional producer after {type(cause).__name__}: "
                                   f"{type(e).__name__}: {e}", e) from e
