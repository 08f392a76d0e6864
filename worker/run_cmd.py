"""The ``slotwatch run`` command: settings, topics (``--create-topics``), signals, exit codes;
the worker itself is :class:`worker.app.Worker`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from worker.exits import EXIT_CONFIG, EXIT_GRACE

HELP = "consume readings from Kafka, score them, publish anomalies, checkpoint state (the worker)"

log = logging.getLogger("slotwatch.worker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="artifact directory (overrides SLOTWATCH_MODEL__PATH)")
    p.add_argument("--bootstrap", default=None, help="host:port[,...] (overrides SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    from worker.argtypes import non_negative_int

    p.add_argument("--create-topics", type=non_negative_int, default=0, metavar="PARTITIONS",
                   help="create missing topics with this many partitions before starting (0: don't); waits up to SLOTWATCH_KAFKA__REQUEST_TIMEOUT_MS for the brokers, else exit 5")


def _create_topics(settings, partitions: int) -> int | None:
    """``--create-topics``: None when done, else the exit code."""
    from worker.exits import EXIT_BROKER, describe_broker_error
    from worker.kafka.clients import ensure_topics

    k = settings.kafka
    try:
        made = ensure_topics(k, {t: partitions for t in (k.readings_topic, k.scores_topic, k.anomalies_topic, k.dead_letter_topic)},
                             timeout_s=k.request_timeout_ms / 1000)
    except Exception as e:  # noqa: BLE001 - NoBrokersAvailable, KafkaTimeoutError, ...: one line, exit 5
        log.error("%s", describe_broker_error(e, k.bootstrap_servers, f"create the topics (--create-topics {partitions})"))
        return EXIT_BROKER
    if settings.checkpoint.state_store != "local":  # issue 12: one changelog partition per readings partition
        from worker.kafka.changelog import create_changelog_topic

        try:
            if create_changelog_topic(k, settings.checkpoint.changelog_topic, partitions):
                made.append(settings.checkpoint.changelog_topic)
        except Exception as e:  # noqa: BLE001
            log.error("%s", describe_broker_error(e, k.bootstrap_servers, "create the state changelog topic"))
            return EXIT_BROKER
    if made:
        log.info("created topics %s", made)
    return None


def main(args: argparse.Namespace) -> int:
    from worker import startup
    from worker.core.artifact import ArtifactError
    from worker.logs import setup_logging
    from worker.settings import Settings

    try:
        settings = Settings.load()
    except Exception as e:  # noqa: BLE001 - pydantic ValidationError: say which setting
        from worker.exits import describe_settings_error

        setup_logging()
        log.error("%s", describe_settings_error(e))
        return EXIT_CONFIG
    if args.model is not None:
        settings.model.path = args.model
    if args.bootstrap:
        settings.kafka.bootstrap_servers = args.bootstrap
    setup_logging(settings.log)
    if settings.log.level != "DEBUG":  # kafka-python logs every refused connection at ERROR; the worker reports outages itself
        logging.getLogger("kafka.net").setLevel(logging.CRITICAL)
    try:
        startup.begin()
    except startup.StartupError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if args.create_topics:
        code = _create_topics(settings, args.create_topics)
        if code is not None:
            return code
    from worker.app import Worker

    from worker.kafka.confluent_config import ClientUnavailable

    try:
        worker = Worker(settings)
    except ClientUnavailable as e:  # SLOTWATCH_KAFKA__CLIENT=confluent without confluent-kafka
        log.error("%s", e)
        return EXIT_CONFIG
    except ArtifactError as e:
        from worker.exits import model_error

        log.error("%s", model_error(e, "--model" if args.model is not None else None))
        return EXIT_CONFIG

    def _stop(signum, _frame):
        log.info("signal %s: finishing the batch, checkpointing, committing", signal.Signals(signum).name)
        worker.request_stop()
        # the grace period is a promise: if shutting down hangs, leave anyway
        t = threading.Timer(settings.shutdown_grace_s, _overdue)
        t.daemon = True
        t.start()

    def _overdue():
        log.error("shutdown took longer than %.0f s; exiting without a final checkpoint", settings.shutdown_grace_s)
        logging.shutdown()
        os._exit(EXIT_GRACE)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if worker.watch is not None:  # SIGHUP: read the models folder's `latest` pointer now
        signal.signal(signal.SIGHUP, lambda *_: worker.watch.request_check())
    startup.loaded()  # after the model is loaded
    return worker.run()
