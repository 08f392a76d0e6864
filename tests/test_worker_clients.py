"""Kafka client settings: security from env and secret files, never the password in logs."""

from __future__ import annotations

import pytest

from worker.kafka.clients import common_config, security_config
from worker.settings import Settings


def test_sasl_password_from_a_secret_file(tmp_path, monkeypatch):
    (tmp_path / "slotwatch_kafka__security__sasl_password").write_text("s3cret\n")
    monkeypatch.setenv("SLOTWATCH_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("SLOTWATCH_KAFKA__SECURITY__PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SLOTWATCH_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("SLOTWATCH_KAFKA__SECURITY__SASL_USERNAME", "worker")
    monkeypatch.setenv("SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS", "a:9096, b:9096")
    s = Settings.load()
    cfg = common_config(s.kafka)
    assert cfg["bootstrap_servers"] == ["a:9096", "b:9096"]
    assert (cfg["security_protocol"], cfg["sasl_mechanism"], cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-256", "worker", "s3cret")
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    monkeypatch.setenv("SLOTWATCH_KAFKA__SECURITY__SASL_PASSWORD", "from-env")  # env wins over the file
    assert Settings.load().kafka.security.sasl_password.get_secret_value() == "from-env"


def test_mutual_tls_and_plaintext():
    s = Settings(kafka={"security": {"protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem",
                                     "ssl_keyfile": "/k.pem", "ssl_password": "kp"}})
    c = security_config(s.kafka)
    assert c == {"security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": "/ca.pem",
                 "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem", "ssl_password": "kp"}
    assert security_config(Settings().kafka) == {"security_protocol": "PLAINTEXT"}


def test_sasl_without_password_is_refused_with_the_variable_to_set():
    with pytest.raises(ValueError, match="SLOTWATCH_KAFKA__SECURITY__SASL_PASSWORD"):
        Settings(kafka={"security": {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"}})
