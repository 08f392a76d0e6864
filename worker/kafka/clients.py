"""kafka-python clients built from :class:`worker.settings.Settings`: one place for security,
timeouts and serialisation choices.

>>> from worker.settings import Settings
>>> s = Settings(kafka={"security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
...                                  "sasl_username": "u", "sasl_password": "p", "ssl_cafile": "/ca.pem"}})
>>> c = security_config(s.kafka)
>>> c["security_protocol"], c["sasl_mechanism"], c["sasl_plain_username"], c["ssl_cafile"]
('SASL_SSL', 'SCRAM-SHA-512', 'u', '/ca.pem')
"""

from __future__ import annotations

import logging
import time

from worker.settings import KafkaSettings

log = logging.getLogger("slotwatch.kafka")


def security_config(k: KafkaSettings) -> dict:
    """kafka-python keyword arguments for the security settings (PLAINTEXT, SSL, SASL PLAIN/SCRAM)."""
    s = k.security
    cfg: dict = {"security_protocol": s.protocol}
    if s.protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = s.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            v = getattr(s, name)
            if v is not None:
                cfg[name] = str(v)
        if s.ssl_password is not None:
            cfg["ssl_password"] = s.ssl_password.get_secret_value()
    if s.protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = s.sasl_mechanism
        cfg["sasl_plain_username"] = s.sasl_username
        cfg["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
    return cfg


def common_config(k: KafkaSettings) -> dict:
    return {
        "bootstrap_servers": [h.strip() for h in k.bootstrap_servers.split(",") if h.strip()],
        "client_id": k.client_id,
        "request_timeout_ms": k.request_timeout_ms,
        "retry_backoff_ms": k.retry_backoff_ms,
        "reconnect_backoff_ms": min(k.retry_backoff_ms, 1000),
        "reconnect_backoff_max_ms": 30_000,
        "bootstrap_timeout_ms": 5_000,  # the worker retries itself, and stays responsive to SIGTERM meanwhile
        **security_config(k),
    }


def make_consumer(k: KafkaSettings, **overrides):
    """A consumer in group ``k.group_id`` with manual commits (the worker commits after checkpoints)."""
    from kafka import KafkaConsumer

    cfg = dict(
        common_config(k),
        group_id=k.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=k.max_poll_records,
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=k.heartbeat_interval_ms,
        max_poll_interval_ms=k.max_poll_interval_ms,
        fetch_max_bytes=max(52428800, k.max_message_bytes * 4),
        max_partition_fetch_bytes=max(1048576, k.max_message_bytes * 2),
    )
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


def make_producer(k: KafkaSettings, **overrides):
    """An idempotent, acks=all producer (at-least-once output; retries do not duplicate)."""
    from kafka import KafkaProducer

    cfg = dict(common_config(k), acks="all", linger_ms=10, batch_size=262144, max_in_flight_requests_per_connection=5)
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def make_admin(k: KafkaSettings, **overrides):
    from kafka import KafkaAdminClient

    cfg = common_config(k)
    cfg.update(overrides)
    return KafkaAdminClient(**cfg)


def ensure_topics(k: KafkaSettings, topics: dict[str, int], replication: int = 1, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions); returns the ones created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = make_admin(k)
            break
        except Exception as e:  # noqa: BLE001 - broker not up yet
            if time.monotonic() > deadline:
                raise
            log.warning("broker not reachable yet (%s); retrying", e)
            time.sleep(1.0)
    try:
        have = set(admin.list_topics())
        new = [NewTopic(t, n, replication) for t, n in topics.items() if t not in have]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in new]
    finally:
        admin.close()


# ---------------------------------------------------------------------- the worker's client (issue 11)
def make_source(k: KafkaSettings):
    """The worker's source for ``SLOTWATCH_KAFKA__CLIENT``: kafka-python's :class:`~worker.kafka.source.Source`
    or :class:`~worker.kafka.confluent_source.ConfluentSource` (raises ``ClientUnavailable`` without the package)."""
    if k.client == "confluent":
        from worker.kafka.confluent_source import ConfluentSource

        return ConfluentSource(k)
    from worker.kafka.source import Source

    return Source(k)


def make_sink(k: KafkaSettings, producer, metrics, on_outage=None):
    """The worker's sink: over ``producer`` (kafka-python's, or exactly-once's transactional round) by default;
    with ``client=confluent`` over a new librdkafka producer, or with exactly-once over ``producer``, the
    round of :func:`worker.kafka.txn_producer.make_round` (a :class:`~worker.kafka.confluent_txn.ConfluentTransactionalRound`)."""
    backoff = k.retry_backoff_ms / 1000
    if k.client == "confluent":
        from worker.kafka.confluent_config import producer_config, require_confluent
        from worker.kafka.confluent_sink import ConfluentSink

        prod = producer if k.exactly_once else require_confluent().Producer(producer_config(k))
        return ConfluentSink(prod, metrics, backoff, on_outage=on_outage)
    from worker.kafka.sink import Sink

    return Sink(producer, metrics, backoff, on_outage=on_outage)
