"""Issue 11: the worker's poll seam (``PollProcessor.run_core``) on the columnar path gives exactly
the messages, dead letters and episode events of the per-reading path it replaced
(``ReadingCodec.decode`` per message, ``SlotDetector.process`` of the readings, ``encode_score``
per score), byte for byte and in the same order, over several polls with hostile messages,
already-applied offsets, anomalies and episodes.  No broker: the records are kafka-python's own
``ConsumerRecord``s handed to the seam; the detectors are real (a small trained Keras model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from worker.codec import ReadingCodec, encode_episode, encode_reading, encode_score
from worker.core import artifact as art
from worker.core.factory import detector_from_settings
from worker.core.readings import Rejection, Score
from worker.kafka.polled import from_kafka_python
from worker.processing import PollProcessor
from worker.settings import Settings

T0 = 1_795_000_000_000


def _app(artifact, settings):
    a = art.load(artifact)
    return SimpleNamespace(topic="readings", settings=settings, features=list(a.manifest.features),
                           model_version=a.version, detector=detector_from_settings(a, settings), watch=None,
                           partitions=SimpleNamespace(restored={0, 1}, applied={}),
                           checkpoints=SimpleNamespace(checkpointed=set()))


def _polls(features, n_sensors=12, steps=40, seed=0):
    """Polls of {TopicPartition: [ConsumerRecord]}: sine readings, spikes, hostile messages, repeats."""
    rng = np.random.default_rng(seed)
    per_part = {0: [], 1: []}
    for t in range(steps):
        for s in range(n_sensors):
            v = {f: float(np.sin(t / 5 + s + k)) for k, f in enumerate(features)}
            if rng.random() < 0.04:
                v[features[0]] = 40.0 * (1 + rng.random())  # anomalies, episodes
            raw = encode_reading(f"s{s}", T0 + t * 1000, v)
            if rng.random() < 0.02:
                raw = rng.choice([b"\xff\xfe", b"{}", b'{"sensor_id":"x","ts":1,"values":{}}',
                                  json.dumps({"sensor_id": f"s{s}", "ts": T0 - 10**7, "values": v}).encode(),
                                  raw.replace(b'"values"', b'"reset":true,"values"')])
            per_part[s % 2].append(raw)
    offs = {0: 0, 1: 0}
    polls, size = [], 60
    for start in range(0, max(len(v) for v in per_part.values()), size):
        poll = {}
        for p, raws in per_part.items():
            lo = max(0, start - (7 if start and p == 1 else 0))  # partition 1 reads some offsets again
            recs = [ConsumerRecord("readings", p, None, o, 0, 0, None, raws[o], [], None, 0, len(raws[o]), 0)
                    for o in range(lo, min(start + size, len(raws)))]
            if recs:
                poll[TopicPartition("readings", p)] = recs
            offs[p] = start + size
        polls.append(poll)
    return polls


def _reference(codec, det, settings, features, version, batch, applied):
    """What the per-reading worker produced for one poll: (outputs, rejects as tuples, episodes)."""
    readings, origin, rejects = [], [], []
    for tp, records in batch.items():
        last = applied.get(tp.partition, -1)
        for rec in records:
            if rec.offset <= last:
                continue
            last = rec.offset
            r = codec.decode(rec.value, tp.partition, rec.offset)
            if isinstance(r, Rejection):
                rejects.append((r, rec.value))
            else:
                readings.append(r)
                origin.append(rec.value)
        applied[tp.partition] = last
    k, ep = settings.kafka, settings.episodes
    out, episodes = [], []
    results = det.process(readings) if readings else []
    for r, raw in zip(results, origin):
        if not isinstance(r, Score):
            rejects.append((r, raw))
            continue
        per_reading = r.is_anomaly and ep.publish_readings
        if per_reading or k.publish_scores:
            value = encode_score(r, features, version, ep.top_features)
            if k.publish_scores:
                out.append((k.scores_topic, r.sensor_id.encode(), value, None, "score"))
            if per_reading:
                out.append((k.anomalies_topic, r.sensor_id.encode(), value, None, "anomaly"))
        for e in r.episodes or ():
            out.append((k.anomalies_topic, e.sensor_id.encode(), encode_episode(e, version), None, "episode"))
            episodes.append(e)
    return out, rejects, episodes


def _rej(pairs):
    return [(r.reason, r.detail, r.sensor_id, r.partition, r.offset, raw) for r, raw in pairs]


@pytest.mark.parametrize("publish", [dict(), dict(kafka={"publish_scores": True}, episodes={"publish_readings": True})],
                         ids=["anomalies-only", "every-score"])
def test_poll_seam_messages_equal_the_per_reading_path(artifact_3f, publish):
    settings = Settings.load(model={"slots": 8}, **publish)
    app = _app(artifact_3f, settings)
    proc = PollProcessor(app)
    ref_det = _app(artifact_3f, settings).detector
    ref_codec = ReadingCodec(app.features, settings.kafka.max_message_bytes,
                             max_sensor_id_bytes=settings.limits.max_sensor_id_bytes, max_future_s=settings.limits.max_future_s)
    applied: dict = {}
    kinds, n_rejected, n_skipped = set(), 0, 0
    for batch in _polls(app.features):
        res = proc.run_core(from_kafka_python(batch))  # as the kafka-python source hands it over
        out, rejects, episodes = _reference(ref_codec, ref_det, settings, app.features, app.model_version, batch, applied)
        assert res.outputs == out
        assert _rej(res.rejects) == _rej(rejects)
        assert [encode_episode(e, app.model_version) for e in res.episodes] == \
               [encode_episode(e, app.model_version) for e in episodes]
        assert app.partitions.applied == applied
        kinds |= {m[4] for m in out}
        n_rejected += len(rejects)
        n_skipped += res.skipped
    assert n_rejected and n_skipped  # the hostile and the repeated records were there
    assert "episode" in kinds and ({"score", "anomaly"} <= kinds) == bool(publish)
