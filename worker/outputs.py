"""What the worker publishes, as messages ``(topic, key, value, headers, kind)`` for the sink:
scores and per-reading anomalies, episode events, silent-sensor events and dead letters.
The formats themselves are :mod:`worker.codec`'s."""

from __future__ import annotations

import logging

log = logging.getLogger("slotwatch.worker")

#: dead letters keep the original bytes up to this size (the producer's request limit is 1 MiB);
#: a longer value is cut and gets a ``truncated_from`` header with its original size
DEAD_LETTER_MAX_BYTES = 900_000


class Outputs:
    """Builds the messages of one worker (its topics, its model version, its features)."""

    def __init__(self, app) -> None:
        self.app = app
        self.kafka = app.settings.kafka
        self.episodes = app.settings.episodes

    def scores(self, results) -> list[tuple]:
        """Messages of every score to publish; encoding errors surface here, before any send."""
        from worker.codec import encode_episode, encode_score
        from worker.core.readings import Score

        kafka, episodes = self.kafka, self.episodes
        features, version = self.app.features, self.app.model_version
        anomalies = kafka.anomalies_topic
        out = []
        for r in results:
            if not isinstance(r, Score):
                continue
            per_reading = r.is_anomaly and episodes.publish_readings  # default: episode messages only
            if per_reading or kafka.publish_scores:
                value = encode_score(r, features, version, episodes.top_features)
                key = r.sensor_id.encode("utf-8")
                if kafka.publish_scores:
                    out.append((kafka.scores_topic, key, value, None, "score"))
                if per_reading:
                    out.append((anomalies, key, value, None, "anomaly"))
            if r.is_anomaly:
                log.debug("anomaly: score %.9f, surprise %.2f", r.score, r.surprise,
                          extra={"sensor_id": r.sensor_id, "partition": r.partition, "offset": r.offset})
            if r.episodes:  # issue 9: one message when an episode opens, one when it closes
                for e in r.episodes:
                    out.append((anomalies, e.sensor_id.encode("utf-8"), encode_episode(e, version), None, "episode"))
        return out

    def episodes_of(self, events) -> list[tuple]:
        """Messages of episode events that came without a score (closes of evicted sensors' episodes)."""
        from worker.codec import encode_episode

        version, topic = self.app.model_version, self.kafka.anomalies_topic
        return [(topic, e.sensor_id.encode("utf-8"), encode_episode(e, version), None, "episode") for e in events]

    def silence(self, events) -> list[tuple]:
        """Messages of silent-sensor episode events (issue 16)."""
        from worker.codec import encode_silence

        version, topic = self.app.model_version, self.kafka.anomalies_topic
        return [(topic, ev.sensor_id.encode("utf-8"), encode_silence(ev, version), None, "episode") for ev in events]

    def dead_letter(self, rej, raw: bytes | None) -> tuple:
        """The dead letter of a rejected message: its original bytes (cut at the size limit), reason headers."""
        from worker.codec import dead_letter_headers

        key = rej.sensor_id.encode("utf-8", "replace") if rej.sensor_id else None
        value = raw if raw is not None else b""
        headers = dead_letter_headers(rej, self.app.topic)
        if len(value) > DEAD_LETTER_MAX_BYTES:  # would exceed the producer's request size: keep the head
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        return (self.kafka.dead_letter_topic, key, value, headers, "dead_letter")
