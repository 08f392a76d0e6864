"""The state changelog topic's admin side: its configs (compacted), creating it with one
partition per readings partition, and checking an existing one."""

from __future__ import annotations


class ChangelogError(RuntimeError):
    pass


def changelog_topic_config() -> dict[str, str]:
    """Topic configs of a changelog (compacted; the test broker accepts but does not enforce them)."""
    return {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


def ensure_changelog_topic(admin, topic: str, partitions: int, replication: int = 1) -> bool:
    """Create the changelog topic (one partition per readings partition) unless it exists; True if created.

    An existing topic with fewer partitions than the readings topic is an error: changelog
    partition N must follow readings partition N.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    if topic in set(admin.list_topics()):
        have = _partition_count(admin, topic)
        if have is not None and have < partitions:
            raise ChangelogError(f"changelog topic {topic} has {have} partitions, the readings topic {partitions}: "
                                 "each readings partition needs its own changelog partition")
        return False
    try:
        admin.create_topics([NewTopic(topic, partitions, replication, topic_configs=changelog_topic_config())])
    except TopicAlreadyExistsError:
        return False
    return True


def _partition_count(admin, topic: str) -> int | None:
    try:
        meta = admin.describe_topics([topic])
    except Exception:  # noqa: BLE001 - best effort
        return None
    for t in meta:
        if (t.get("name") or t.get("topic")) == topic:  # kafka-python 3 says "name"
            return len(t.get("partitions") or [])
    return None


def create_changelog_topic(kafka_settings, topic: str, partitions: int) -> bool:
    """``--create-topics``: the changelog topic with ``partitions`` partitions (compacted); True if created."""
    from worker.kafka.clients import make_admin

    admin = make_admin(kafka_settings)
    try:
        return ensure_changelog_topic(admin, topic, partitions)
    finally:
        admin.close()
