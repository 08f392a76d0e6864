"""The transactional producer of exactly-once output: its ``transactional.id`` and how it is made
(see :mod:`worker.kafka.transactions` for why there is one id per worker).

>>> from worker.settings import KafkaSettings
>>> transactional_id(KafkaSettings(group_id="fleet", worker_id="slotwatch-2"))
'slotwatch.fleet.slotwatch-2'
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from worker.settings import KafkaSettings

log = logging.getLogger("slotwatch.transactions")


def worker_identity(k: KafkaSettings) -> str:
    """``SLOTWATCH_KAFKA__WORKER_ID``, else the host name (a StatefulSet pod's or compose service's is stable)."""
    return k.worker_id or os.environ.get("HOSTNAME") or socket.gethostname()


def transactional_id(k: KafkaSettings) -> str:
    """``<transactional_id_prefix>.<group_id>.<worker identity>``: one id per worker of a group."""
    return f"{k.transactional_id_prefix}.{k.group_id}.{worker_identity(k)}"


def never_bump_epoch(producer) -> None:
    """Turn off kafka-python's own epoch bump (KIP-360) for a transactional producer.

    kafka-python 3.0 answers ``InvalidProducerEpoch`` on a produce by sending InitProducerId with
    its (producer id, epoch) and, when the broker refuses that stale epoch with
    ``INVALID_PRODUCER_EPOCH``, falls back to a *fresh* InitProducerId
    (``TransactionManager._restart_epoch_bump_without_producer_id``): a fenced producer would take
    the transactional.id back from the worker that fenced it.  Without the bump kafka-python
    classifies these errors as fatal (its pre-2.5 behaviour), which the worker reads as fenced
    (exit code 7) or fatal: it never re-initialises the id by itself.  On the test broker (tansu
    0.6) the bump is not served anyway: measured, its InitProducerId with an epoch answers
    ``UnknownError`` for the current epoch and nothing for a stale one.
    """
    manager = getattr(producer, "_transaction_manager", None)  # kafka-python 3.0: no public switch
    if manager is not None and manager.is_transactional():
        manager._supports_epoch_bump = lambda: False  # noqa: SLF001


def make_transactional_producer(k: KafkaSettings, *, init: bool = True, **overrides):
    """A producer with :func:`transactional_id` (idempotent, acks=all, security from
    :mod:`worker.kafka.clients`), ``init_transactions()`` done unless ``init`` is false.

    Initialising aborts a transaction left open by a previous producer with the same id and
    fences that producer.  Errors are kafka-python's (``KafkaError``: exit code 5 at start-up).
    """
    from worker.kafka.clients import make_producer

    cfg = dict(transactional_id=transactional_id(k), transaction_timeout_ms=k.transaction_timeout_ms,
               enable_idempotence=True)
    cfg.update(overrides)
    producer = make_producer(k, **cfg)
    never_bump_epoch(producer)
    if init:
        try:
            producer.init_transactions()
        except BaseException:
            producer.close(timeout=0)
            raise
    log.info("transactional producer %s ready", cfg["transactional_id"])
    return producer


def make_round(k: KafkaSettings):
    """The worker's exactly-once round for ``SLOTWATCH_KAFKA__CLIENT``: kafka-python's
    :class:`~worker.kafka.transactions.TransactionalRound` or confluent-kafka's
    :class:`~worker.kafka.confluent_txn.ConfluentTransactionalRound`, its producer initialised."""
    timeout_s = k.request_timeout_ms / 1000
    if k.client == "confluent":
        from worker.kafka.confluent_txn import ConfluentTransactionalRound, make_confluent_transactional_producer

        return ConfluentTransactionalRound(lambda: make_confluent_transactional_producer(k, timeout_s),
                                           timeout_s=timeout_s, transactional_id=transactional_id(k))
    from worker.kafka.transactions import TransactionalRound

    return TransactionalRound(lambda: make_transactional_producer(k, max_block_ms=10_000), timeout_s=timeout_s)


def as_offsets(offsets: Mapping[Any, Any], metadata: str) -> dict:
    """``{TopicPartition: next offset | OffsetAndMetadata}`` as kafka-python's ``OffsetAndMetadata`` map."""
    from kafka.structs import OffsetAndMetadata

    return {tp: o if isinstance(o, OffsetAndMetadata) else OffsetAndMetadata(int(o), metadata, -1)
            for tp, o in offsets.items()}


def end_txn_pending(producer) -> bool:
    """Whether the producer is committing or aborting: its EndTxn is sent and not answered yet."""
    manager = getattr(producer, "_transaction_manager", None)
    try:
        return bool(manager is not None and manager.is_completing())
    except Exception:  # noqa: BLE001 - a closed producer
        return False


def wait_end_txn(producer, poll_s: float = 0.05) -> None:
    """Block until the producer's pending EndTxn is answered; raise its error (fenced or not) if it failed."""
    import time

    manager = producer._transaction_manager  # noqa: SLF001
    while end_txn_pending(producer):
        time.sleep(poll_s)
    if manager.has_error() and manager.last_error is not None:
        raise manager.last_error
