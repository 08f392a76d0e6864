"""``slotwatch run``: the worker.  Kafka readings -> codec -> scoring core -> Kafka outputs,
with per-partition checkpoints so that a crash loses nothing and applies nothing twice.

:class:`Worker` builds the pieces and wires them; each is its own module:

* source (:mod:`worker.kafka.source`): a kafka-python consumer in a group, manual commits (or, with
  ``SLOTWATCH_KAFKA__CLIENT=confluent``, :mod:`worker.kafka.confluent_source`; the sink likewise);
* processing (:mod:`worker.processing`): one poll's records -> codec (:mod:`worker.codec`) ->
  core (:class:`~worker.core.detector.SlotDetector`, one call per poll: a poll's readings
  become ticks of at most B sensors) -> outputs (:mod:`worker.outputs`) -> metrics; the rewind
  after a core failure (:mod:`worker.rewind`);
* sink (:mod:`worker.kafka.sink`): anomalies topic, scores topic (``SLOTWATCH_KAFKA__PUBLISH_SCORES``),
  dead-letter topic (original bytes, reason/detail/source headers), delivery tracked by callbacks;
* checkpoints (:mod:`worker.checkpointing.coordinator`): the rounds, into
  :class:`~worker.checkpointing.store.CheckpointStore` and the state changelog;
* partitions (:mod:`worker.partitions`): assignment, restore, revocation, readiness;
* metrics and health: :mod:`worker.metrics`, :mod:`worker.health`, :mod:`worker.telemetry`.

Order of a checkpoint round: produce -> flush (every output acknowledged) -> write each
partition's checkpoint durably -> commit the checkpoints' next offsets.  So output is
at-least-once, and state and offsets never run ahead of the output.

On assignment a partition's newest valid checkpoint is loaded and the consumer seeks to
its next offset; a reading at or below the partition's last applied offset is skipped
(``slotwatch_readings_skipped_total``), never applied twice.  On revocation the partition
is flushed, checkpointed and committed, then its sensors are dropped.  On SIGTERM/SIGINT
the worker finishes the batch in hand, checkpoints, commits, closes and exits 0 within
``SLOTWATCH_SHUTDOWN_GRACE_S``.

Counting: ``consumed = scored + rejected + skipped`` (every message taken from the topic is
exactly one of those).

A checkpoint written with another model version than the loaded artifact restores warm:
each sensor's state is rebuilt by stepping its recent readings through the loaded model
(:mod:`worker.core.handover`), so no sensor warms up again.  A checkpoint that cannot fit
the artifact (other features) is refused (exit code 3).  When every generation of a
partition's checkpoint is corrupt the worker refuses to start (exit code 3) unless
``SLOTWATCH_CHECKPOINT__ALLOW_FRESH_START`` is true; then that partition's sensors start
fresh from the committed offset.  A new artifact behind the ``latest`` pointer is taken
over while running (:mod:`worker.model_watch`).

The command itself (arguments, signals, exit codes) is :mod:`worker.run_cmd`.
"""

from __future__ import annotations

import logging
import threading
import time

from worker.exits import EXIT_CHECKPOINT, EXIT_CONFIG, EXIT_GRACE, EXIT_OK  # noqa: F401 - the worker's exit codes
from worker.outputs import DEAD_LETTER_MAX_BYTES  # noqa: F401
from worker.partitions import FatalCheckpointError  # noqa: F401
from worker.run_cmd import HELP, add_arguments, main  # noqa: F401, E402 - `slotwatch run` (worker.cli)

log = logging.getLogger("slotwatch.worker")


class Worker:
    """The worker loop.  ``run()`` blocks until :meth:`request_stop` (or a signal in ``main``).

    Tests run it in a thread with their own :class:`~worker.metrics.Metrics`.
    """

    def __init__(self, settings, metrics=None, artifact=None) -> None:
        from worker.checkpointing.coordinator import CheckpointCoordinator
        from worker.checkpointing.store import CheckpointStore
        from worker.core import artifact as art
        from worker.core.factory import detector_from_settings
        from worker.kafka.clients import make_source
        from worker.metrics import Metrics
        from worker.partitions import Partitions
        from worker.processing import PollProcessor
        from worker.telemetry import Telemetry

        self.settings = s = settings
        self.metrics = m = metrics or Metrics()
        self.artifact = artifact or art.load(s.model.path, features=s.model.features)
        mf = self.artifact.manifest
        self.features = list(mf.features)
        self.model_version = mf.model_version
        self.detector = detector_from_settings(self.artifact, s)
        self.topic = s.kafka.readings_topic
        self.store = CheckpointStore(s.checkpoint.dir, self.topic, s.checkpoint.generations,
                                     on_fallback=lambda *_: m.checkpoint_fallbacks.inc())
        m.model.info({"model_version": self.model_version, "features": ",".join(self.features),
                      "units": ",".join(map(str, mf.units)), "path": str(self.artifact.path)})
        m.slots_capacity.set(self.detector.slots)
        m.sensors_capacity.set(s.limits.max_sensors)
        self.health = None
        self.source = make_source(s.kafka)  # SLOTWATCH_KAFKA__CLIENT: kafka-python or confluent (worker.kafka.clients)
        self.sink = None  # worker.kafka.sink.Sink (or ConfluentSink), once the brokers answer
        # kafka-python's producer: the sink's, or (exactly-once) the restore fence's, or (client=confluent) the changelog's
        self.plain_producer = None
        self.partitions = Partitions(self)
        self.checkpoints = CheckpointCoordinator(self, self.store)
        self.telemetry = Telemetry(self)
        self.processor = PollProcessor(self)
        from worker.model_watch import ModelWatch

        self.watch = ModelWatch(self) if s.handover.live_swap else None  # takes over a new `latest` while running
        self.loop_thread = None
        self.stop_event = threading.Event()
        self.fatal: BaseException | None = None

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def fail(self, error: BaseException) -> None:
        """Stop the loop with exit code 3 (a checkpoint or changelog that cannot be restored)."""
        self.fatal = error

    # what the tests and the operator's debugger look at
    @property
    def applied(self) -> dict[int, int]:
        return self.partitions.applied

    @property
    def restored(self) -> set[int]:
        return self.partitions.restored

    @property
    def committed(self) -> dict[int, int]:
        return self.checkpoints.committed

    @property
    def checkpointed(self) -> dict[int, int]:
        return self.checkpoints.checkpointed

    # ------------------------------------------------------------------ run
    def _connect(self) -> bool:
        """Producer (the sink, the changelog) and consumer, retried with backoff; False when stopped meanwhile."""
        from worker.kafka.clients import make_producer, make_sink

        s = self.settings
        backoff = s.kafka.retry_backoff_ms / 1000
        while self.sink is None or self.source.consumer is None:
            try:
                if self.sink is None:
                    txn = self._transactions() if s.kafka.exactly_once else None
                    changelog = s.checkpoint.state_store != "local"
                    producer = None
                    if s.kafka.client == "kafka-python" or changelog:  # confluent: the changelog keeps kafka-python's
                        self.plain_producer = producer = make_producer(s.kafka, max_block_ms=10_000)
                    if changelog:  # issue 12: the state changelog
                        from worker.kafka.changelog import ChangelogStore

                        self.checkpoints.changelog = ChangelogStore(s.kafka, producer, s.checkpoint.changelog_topic,
                                                                    self.metrics, stall_s=s.checkpoint.changelog_stall_s,
                                                                    writer_producer=txn)
                    if txn is not None:  # outputs and changelog rows in the round's transaction
                        self.checkpoints.attach_transactions(txn)
                    self.sink = make_sink(s.kafka, txn or producer, self.metrics,
                                          on_outage=lambda: self.partitions.ready_checks(broker=False))
                self.source.connect()
            except Exception as e:  # noqa: BLE001 - NoBrokersAvailable and friends
                log.warning("cannot reach the brokers at %s (%s); retrying in %.1f s", s.kafka.bootstrap_servers, e, backoff)
                if self.stop_event.wait(backoff):
                    return False
                backoff = min(backoff * 2, 30.0)
        return True

    def _transactions(self):
        """Exactly-once: the round's transaction (its producer's init aborts a predecessor's open transaction)."""
        from worker.kafka.transactions import make_round

        return make_round(self.settings.kafka)  # kafka-python's or confluent-kafka's, as SLOTWATCH_KAFKA__CLIENT

    def run(self) -> int:
        from kafka import TopicPartition  # noqa: F401 - fail early when kafka-python is missing

        from worker.fmt import fmt_threshold
        from worker.health import HealthServer

        s = self.settings
        if self.health is None:
            self.health = HealthServer(self.metrics, s.metrics.host, s.metrics.port).start()
        self.health.set_check("model_loaded", True)
        self.partitions.ready_checks(broker=False)
        if not self._connect():
            return self._close(EXIT_OK)
        self.source.subscribe(self.partitions, self.fail)
        log.info("worker started: model %s (threshold %s), %d slots, reading %s as group %s", self.model_version,
                 fmt_threshold(self.detector.threshold), self.detector.slots, self.topic, s.kafka.group_id)
        code = EXIT_OK
        self.loop_thread = threading.current_thread()
        backoff = s.kafka.retry_backoff_ms / 1000
        while not self.stop_event.is_set():
            try:
                batch = self.source.poll()
            except Exception as e:  # noqa: BLE001
                if self.fatal is not None:
                    break
                log.warning("poll failed (%s); retrying in %.1f s", e, backoff)
                self.partitions.ready_checks(broker=False)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if self.fatal is not None:
                break
            backoff = s.kafka.retry_backoff_ms / 1000
            if self.partitions.deferred:
                self.partitions.restore_deferred()
            if batch:
                self.processor.handle(batch)
            if self.watch is not None:
                self.watch.tick()
            self.checkpoints.maybe_round()
            self.telemetry.maybe_probe()
            self.telemetry.watch_streams()
        if self.fatal is not None:
            log.error("%s", self.fatal)
            code = getattr(self.fatal, "exit_code", EXIT_CHECKPOINT)  # transactions: fenced 7, fatal 5
        return self._close(code)

    def _close(self, code: int) -> int:
        s = self.settings
        deadline = time.monotonic() + s.shutdown_grace_s * 0.8
        restored = self.partitions.restored
        if self.source.consumer is not None and restored:
            if self.checkpoints.round(sorted(restored), deadline=deadline, sync_commit=True):
                log.info("final checkpoint written and committed", extra={"partitions": sorted(restored)})
            else:
                log.error("final checkpoint not written (output not acknowledged); a restart replays from the previous one")
        self.processor.rejection_log.flush()
        self.partitions.closing = True
        if self.watch is not None:
            self.watch.close()
        self.checkpoints.close()
        self.telemetry.close()
        try:
            self.source.close(timeout_ms=max(100, int((deadline - time.monotonic()) * 1000)))
        except Exception as e:  # noqa: BLE001
            log.warning("consumer close: %s", e)
        own = self.plain_producer is not None and self.plain_producer is not getattr(self.sink, "producer", None)
        for producer in (self.sink, self.plain_producer if own else None):
            try:
                if producer is not None:
                    producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001
                log.warning("producer close: %s", e)
        if self.health is not None:
            self.health.stop()
        log.info("worker stopped", extra={"exit_code": code})
        return code
