"""Reading slotwatch's output downstream, committed transactions only (exactly-once mode, see
README "Exactly-once output")."""

from __future__ import annotations


def read_committed_config() -> dict:
    """What a downstream consumer sets to see only committed transactions (kafka-python keywords).

    >>> read_committed_config()
    {'isolation_level': 'read_committed'}
    """
    return {"isolation_level": "read_committed"}


def make_committed_reader(bootstrap_or_settings, group_id: str | None = None, **overrides):
    """A consumer that reads only committed output (``isolation_level="read_committed"``): it stops
    at the first open transaction (the last stable offset) and skips aborted records on a broker
    that reports them (not the test broker).  From :class:`KafkaSettings` (security included) or a
    bootstrap string; no group unless ``group_id`` is given."""
    from kafka import KafkaConsumer

    if isinstance(bootstrap_or_settings, str):
        cfg: dict = {"bootstrap_servers": bootstrap_or_settings}
    else:
        from worker.kafka.clients import common_config

        cfg = common_config(bootstrap_or_settings)
    cfg.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest", **read_committed_config())
    cfg.update(overrides)
    return KafkaConsumer(**cfg)
