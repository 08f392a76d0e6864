"""librdkafka configuration of the worker's confluent-kafka client, from the same
:class:`worker.settings.KafkaSettings` as kafka-python's (:mod:`worker.kafka.clients`).
The README's "Kafka clients" section has the mapping as a table.

>>> from worker.settings import Settings
>>> s = Settings(kafka={"security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
...                                  "sasl_username": "u", "sasl_password": "p", "ssl_cafile": "/ca.pem",
...                                  "ssl_check_hostname": False}})
>>> c = security_config(s.kafka)
>>> c["security.protocol"], c["sasl.mechanism"], c["sasl.username"], c["ssl.ca.location"]
('SASL_SSL', 'SCRAM-SHA-512', 'u', '/ca.pem')
>>> c["ssl.endpoint.identification.algorithm"]
'none'
>>> c = consumer_config(s.kafka)
>>> c["enable.auto.commit"], c["enable.auto.offset.store"], c["fetch.wait.max.ms"], c["session.timeout.ms"]
(False, False, 20, 10000)
>>> producer_config(s.kafka)["acks"], producer_config(s.kafka)["partitioner"]
('all', 'murmur2_random')
"""

from __future__ import annotations

import logging

from worker.settings import KafkaSettings

log = logging.getLogger("slotwatch.kafka")


class ClientUnavailable(RuntimeError):
    """``SLOTWATCH_KAFKA__CLIENT=confluent`` without the confluent-kafka package (exit code 2)."""


def require_confluent():
    """The ``confluent_kafka`` module, or :class:`ClientUnavailable` with what to install."""
    try:
        import confluent_kafka
    except ImportError as e:
        raise ClientUnavailable(
            "SLOTWATCH_KAFKA__CLIENT=confluent needs the confluent-kafka package "
            f"({e}): pip install 'slotwatch[confluent]', or set SLOTWATCH_KAFKA__CLIENT=kafka-python") from None
    return confluent_kafka


def security_config(k: KafkaSettings) -> dict:
    """security.protocol, TLS files and SASL PLAIN/SCRAM credentials."""
    s = k.security
    cfg: dict = {"security.protocol": s.protocol}
    if s.protocol in ("SSL", "SASL_SSL"):
        cfg["ssl.endpoint.identification.algorithm"] = "https" if s.ssl_check_hostname else "none"
        for name, key in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
            v = getattr(s, name)
            if v is not None:
                cfg[key] = str(v)
        if s.ssl_password is not None:
            cfg["ssl.key.password"] = s.ssl_password.get_secret_value()
    if s.protocol.startswith("SASL"):
        cfg["sasl.mechanism"] = s.sasl_mechanism
        cfg["sasl.username"] = s.sasl_username
        cfg["sasl.password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
    return cfg


def common_config(k: KafkaSettings) -> dict:
    return {
        "bootstrap.servers": ",".join(h.strip() for h in k.bootstrap_servers.split(",") if h.strip()),
        "client.id": k.client_id,
        "socket.timeout.ms": k.request_timeout_ms,
        "retry.backoff.ms": k.retry_backoff_ms,
        "reconnect.backoff.ms": min(k.retry_backoff_ms, 1000),
        "reconnect.backoff.max.ms": 30_000,
        "logger": logging.getLogger("slotwatch.librdkafka"),  # librdkafka's log lines through Python logging
        **security_config(k),
    }


def consumer_config(k: KafkaSettings) -> dict:
    """A group member with manual commits; ``max_poll_records`` and ``poll_timeout_ms`` are the
    arguments of ``consume()`` (:class:`worker.kafka.confluent_source.ConfluentSource`)."""
    fetch_max = max(52428800, k.max_message_bytes * 4)
    return dict(
        common_config(k),
        **{
            "group.id": k.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": k.heartbeat_interval_ms,
            "max.poll.interval.ms": max(k.max_poll_interval_ms, k.session_timeout_ms),  # librdkafka refuses less
            "fetch.wait.max.ms": k.fetch_max_wait_ms,
            "fetch.max.bytes": fetch_max,
            "max.partition.fetch.bytes": max(1048576, k.max_message_bytes * 2),
            "receive.message.max.bytes": max(100_000_000, fetch_max + 512),
        },
    )


def producer_config(k: KafkaSettings) -> dict:
    """acks=all, idempotent (librdkafka's retries do not duplicate), kafka-python's batching, and
    kafka-python's (and Java's) murmur2 key partitioner, so a key lands on the same partition."""
    return dict(
        common_config(k),
        **{
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 10,
            "batch.size": 262144,
            "max.in.flight.requests.per.connection": 5,
            "request.timeout.ms": k.request_timeout_ms,
            # never give up on a message: librdkafka keeps it (in order, idempotent) until the brokers take it. A timed-out
            # idempotent message makes librdkafka bump the producer epoch, which the test broker tansu answers with
            # PRODUCER_FENCED for good (measured); a message that fails otherwise is sent again by the sink
            "message.timeout.ms": 0,
            "partitioner": "murmur2_random",
            "message.max.bytes": max(1_000_000, k.max_message_bytes * 2),
        },
    )


def transactional_producer_config(k: KafkaSettings, transactional_id: str) -> dict:
    """Exactly-once: :func:`producer_config` with ``transactional.id`` and ``transaction.timeout.ms``.

    librdkafka refuses a ``message.timeout.ms`` above the transaction timeout (and a socket timeout
    within 100 ms of it): a message the brokers do not take within the transaction's life fails, and
    the round is aborted and replayed (no epoch bump: the producer is transactional).

    >>> from worker.settings import KafkaSettings
    >>> c = transactional_producer_config(KafkaSettings(transaction_timeout_ms=20000), "slotwatch.g.w")
    >>> c["transactional.id"], c["transaction.timeout.ms"], c["message.timeout.ms"], c["socket.timeout.ms"]
    ('slotwatch.g.w', 20000, 20000, 19900)
    """
    t = k.transaction_timeout_ms
    return dict(producer_config(k), **{
        "transactional.id": transactional_id,
        "transaction.timeout.ms": t,
        "message.timeout.ms": t,
        "socket.timeout.ms": min(k.request_timeout_ms, t - 100),
    })
