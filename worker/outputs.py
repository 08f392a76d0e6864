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

    def scores(self, sc) -> list[tuple]:
        """Messages of the scores of a :class:`~worker.core.columns.ScoreColumns` to publish, in row order
        (a row's score, then its anomaly, then its episode events); encoding errors surface here, before any send.

        Only the rows that publish something are encoded (:func:`worker.batch_codec.encode_scores`,
        byte for byte :func:`~worker.codec.encode_score`): by default the anomalies' episode events."""
        import numpy as np

        from worker.batch_codec import encode_scores
        from worker.codec import encode_episode

        if sc is None or not len(sc):
            return []
        kafka, episodes = self.kafka, self.episodes
        version = self.app.model_version
        anomalies, scores_topic, every = kafka.anomalies_topic, kafka.scores_topic, kafka.publish_scores
        scored = sc.scored
        flagged = scored & sc.is_anomaly
        per_reading = flagged if episodes.publish_readings else np.zeros(len(sc), bool)  # default: episode messages only
        encode = scored if every else per_reading
        if log.isEnabledFor(logging.DEBUG):
            inp = sc.inputs
            for i in np.nonzero(flagged)[0].tolist():
                log.debug("anomaly: score %.9f, surprise %.2f", sc.score[i], sc.surprise[i],
                          extra={"sensor_id": inp.sensor_id[i], "partition": int(inp.partition[i]),
                                 "offset": int(inp.offset[i])})
        enc_rows = np.nonzero(encode)[0]
        ep = sc.episodes
        if not len(enc_rows) and not ep:
            return []
        values = encode_scores(sc, enc_rows, self.app.features, version, episodes.top_features) if len(enc_rows) else []
        sids = sc.inputs.sensor_id
        if every and not ep and not per_reading.any():  # every score published, nothing else in this poll
            return [(scores_topic, sids[i].encode("utf-8"), v, None, "score") for i, v in zip(enc_rows.tolist(), values)]
        value = dict(zip(enc_rows.tolist(), values))
        out = []
        for i in sorted(value.keys() | ep.keys()):
            key = sids[i].encode("utf-8")
            v = value.get(i)
            if v is not None:
                if every:
                    out.append((scores_topic, key, v, None, "score"))
                if per_reading[i]:
                    out.append((anomalies, key, v, None, "anomaly"))
            for e in ep.get(i, ()):  # issue 9: one message when an episode opens, one when it closes
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
