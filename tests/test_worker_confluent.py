"""Issue 11 item 2: the confluent-kafka client's start-up refusals (no broker needed): the package
missing; exactly-once's producer config; the settings -> librdkafka mapping
of TLS/SASL as librdkafka itself accepts it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.exits import EXIT_CONFIG
from worker.settings import Settings


def _run(env_extra: dict, model, tmp_path, block_confluent: bool) -> subprocess.CompletedProcess:
    import os

    code = ("import sys\n"
            + ("sys.modules['confluent_kafka'] = None  # as if not installed\n" if block_confluent else "")
            + "from worker.cli import main\nsys.exit(main(['run']))\n")
    env = dict(os.environ, SLOTWATCH_MODEL__PATH=str(model), SLOTWATCH_CHECKPOINT__DIR=str(tmp_path / "ck"),
               SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", SLOTWATCH_METRICS__PORT="0", **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_confluent_without_the_package_stops_at_start_with_what_to_install(artifact_1f, tmp_path):
    r = _run({"SLOTWATCH_KAFKA__CLIENT": "confluent"}, artifact_1f, tmp_path, block_confluent=True)
    assert r.returncode == EXIT_CONFIG, r.stderr[-2000:]
    assert "SLOTWATCH_KAFKA__CLIENT=confluent needs the confluent-kafka package" in r.stderr
    assert "pip install 'slotwatch[confluent]'" in r.stderr


def test_exactly_once_with_confluent_is_accepted_and_its_producer_config_is_one_librdkafka_takes():
    """Exactly-once works with either client now (worker/kafka/confluent_txn.py); librdkafka refuses a
    message timeout above the transaction timeout, so the transactional config caps it (and the socket timeout)."""
    pytest.importorskip("confluent_kafka")
    from confluent_kafka import Producer

    from worker.kafka.confluent_config import transactional_producer_config

    s = Settings(kafka={"client": "confluent", "exactly_once": True, "transaction_timeout_ms": 20000},
                 checkpoint={"state_store": "kafka", "interval_s": 5})
    assert s.kafka.exactly_once and s.kafka.client == "confluent"
    cfg = transactional_producer_config(s.kafka, "slotwatch.g.w")
    assert cfg["message.timeout.ms"] == 20000 and cfg["socket.timeout.ms"] == 19900  # request timeout 30 s is capped
    Producer(cfg).flush(0)  # librdkafka accepts it (it raises at creation for message.timeout.ms > transaction timeout)


def test_security_settings_make_a_config_librdkafka_accepts(tmp_path):
    pytest.importorskip("confluent_kafka")
    from confluent_kafka import Consumer, KafkaException, Producer

    from worker.kafka.confluent_config import consumer_config, producer_config

    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    k = Settings(kafka={"security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u",
                                     "sasl_password": "p", "ssl_cafile": str(ca)}}).kafka
    plain = Settings().kafka
    Producer(producer_config(plain)).flush(0)  # every key is one librdkafka knows (an unknown key raises)
    Consumer(consumer_config(plain)).close()
    with pytest.raises(KafkaException, match="ssl.ca.location|certificate|CA"):  # the CA file is read: it is wired
        Producer(producer_config(k))
