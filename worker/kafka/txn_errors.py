"""What can go wrong with a Kafka transaction, as the worker tells it apart (see
:mod:`worker.kafka.transactions`): fenced (fatal, exit 7), aborted (rewind and replay), fatal (exit 5)."""

from __future__ import annotations

from worker.exits import EXIT_BROKER, EXIT_FENCED


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
