"""Kafka connection settings: brokers, topics, consumer group, security."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class SecuritySettings(BaseModel):
    """How the worker authenticates to Kafka."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, required for SASL_* protocols."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (env or secret file; never logged)."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    ssl_password: SecretStr | None = Field(None, description="Password of the client key, if any.")
    ssl_check_hostname: bool = Field(True, description="Verify the broker's host name against its certificate.")

    @model_validator(mode="after")
    def _check(self) -> "SecuritySettings":
        if self.protocol.startswith("SASL"):
            missing = [
                n
                for n, v in (
                    ("sasl_mechanism", self.sasl_mechanism),
                    ("sasl_username", self.sasl_username),
                    ("sasl_password", self.sasl_password),
                )
                if v is None
            ]
            if missing:
                raise ValueError(
                    f"security.protocol={self.protocol} needs "
                    + ", ".join(f"SLOTWATCH_KAFKA__SECURITY__{m.upper()}" for m in missing)
                )
        return self


class KafkaSettings(BaseModel):
    """Where the readings come from and where the results go."""

    client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python",
        description="Kafka client of the worker's consumer and producer: kafka-python (default), or confluent "
        "(confluent-kafka/librdkafka, 2.5-5x faster consume+decode; `pip install 'slotwatch[confluent]'`).",
    )
    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    readings_topic: str = Field("slotwatch.readings", description="Input topic (key: sensor id).")
    scores_topic: str = Field("slotwatch.scores", description="Every score, when publish_scores is on.")
    anomalies_topic: str = Field("slotwatch.anomalies", description="Scores flagged as anomalies.")
    dead_letter_topic: str = Field("slotwatch.dead-letter", description="Rejected input with a reason.")
    publish_scores: bool = Field(False, description="Publish every score, not only anomalies.")
    group_id: str = Field("slotwatch", description="Consumer group id.")
    client_id: str = Field("slotwatch-worker", description="Client id sent to the brokers.")
    max_message_bytes: int = Field(65536, gt=0, description="Readings larger than this are rejected (too_large).")
    max_poll_records: int = Field(2000, gt=0, description="Upper bound of readings per poll.")
    poll_timeout_ms: int = Field(200, ge=0, description="How long one poll waits for data.")
    fetch_max_wait_ms: int = Field(
        20, ge=0, description="How long the broker may hold a fetch for more data (latency floor; Kafka's default 500 adds up to 0.5 s)."
    )
    fast_records: bool = Field(
        True, description="kafka-python: the worker's consumer parses each fetched record batch at once into values and offsets "
        "(worker.kafka.fast_records, same bytes and offsets; kafka-python's own per-record parsing when false).",
    )
    session_timeout_ms: int = Field(10000, gt=0, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(3000, gt=0, description="Consumer group heartbeat interval.")
    max_poll_interval_ms: int = Field(300000, gt=0, description="Max time between polls before the group evicts us.")
    request_timeout_ms: int = Field(30000, gt=0, description="Client request timeout.")
    retry_backoff_ms: int = Field(500, gt=0, description="First backoff when the broker is unreachable (doubles, capped at 30 s).")
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    # issue 12 item 3 (exactly-once output, worker.kafka.transactions)
    exactly_once: bool = Field(
        False,
        description="One Kafka transaction per checkpoint round: scores, anomalies/episodes, dead letters, changelog records "
        "and the offset commit; consumers with isolation.level=read_committed see every output once (needs "
        "SLOTWATCH_CHECKPOINT__STATE_STORE=kafka or both; the test broker does not hide aborted records, see README).",
    )
    transactional_id_prefix: str = Field(
        "slotwatch", min_length=1,
        description="Exactly-once: the producer's transactional.id is `<prefix>.<group_id>.<worker_id>`.",
    )
    worker_id: str | None = Field(
        None,
        description="Exactly-once: this worker's stable identity in its transactional.id (default: the host name, stable for "
        "a StatefulSet pod or a compose service); a restarted worker with the same id fences its predecessor. Two live "
        "workers must never share one.",
    )
    transaction_timeout_ms: int = Field(
        60000, gt=0,
        description="Exactly-once: the broker aborts a transaction open longer than this; must exceed "
        "SLOTWATCH_CHECKPOINT__INTERVAL_S (a round's transaction spans the interval) and not exceed the broker's "
        "transaction.max.timeout.ms (15 min by default).",
    )
