"""The worker against a real Kafka-protocol broker: end to end, dead letters, restarts,
checkpoint fallback, /metrics.  Each test uses its own topics and consumer group."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import (
    STEP_MS, T0, RunningWorker, fleet_messages, final_states, partition_by_index, reference_detector, worker_settings,
)
from worker.codec import ReadingCodec
from worker.core import artifact as art
from worker.core.readings import Score

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def art1(artifact_1f):
    return art.load(artifact_1f)


def _scores(records):
    return [json.loads(r.value) for r in records]


def _fleet(n=8, steps=40, seed=5, spike=True):
    data = sine_fleet(n, steps, 1, seed=seed)
    if spike:
        data[3, steps * 3 // 4, 0] += 12.0  # an anomaly to find
    return data, [f"s{i}" for i in range(n)]


def test_end_to_end_scores_equal_replay(kafka_broker, kafka_client, art1, artifact_1f, tmp_path):
    from worker.replay import replay_detector, replay_frame

    data, ids = _fleet()
    topics = kafka_broker.topics("e2e", partitions=2)
    msgs = fleet_messages(data, ids, ["temp"])
    kafka_broker.produce(topics["readings"], msgs, partition_by_index(2))
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", episodes={"publish_readings": True})
    w = RunningWorker(s, artifact=art1)
    assert type(w.worker.source).__name__ == {"kafka-python": "Source", "confluent": "ConfluentSource"}[kafka_client]
    w.wait_consumed(len(msgs))
    assert w.stop() == 0
    got = _scores(kafka_broker.read_all(topics["scores"], expect=len(msgs)))
    assert len(got) == len(msgs)

    # the same data through `slotwatch replay`'s function
    n, steps, _ = data.shape
    df = pd.DataFrame({
        "sensor_id": [ids[i] for t in range(steps) for i in range(n)],
        "ts_ms": [T0 + t * STEP_MS for t in range(steps) for i in range(n)],
        "temp": [data[i, t, 0] for t in range(steps) for i in range(n)],
    })
    ref = replay_frame(replay_detector(art1, s), df, ["temp"], chunk=64)
    ref_by = {(r.sensor_id, int(r.ts)): r for r in ref.itertuples()}
    for g in got:
        r = ref_by[(g["sensor_id"], g["ts_ms"])]
        assert g["score"] == pytest.approx(r.score, abs=1e-5)
        assert g["error"] == pytest.approx(r.error, rel=1e-5, abs=1e-6)
        assert g["expected"]["temp"] == pytest.approx(r.expected_temp, rel=1e-5, abs=1e-6)
        assert g["is_anomaly"] == bool(r.is_anomaly)
        assert g["warming_up"] == bool(r.warming_up)
        assert g["model_version"] == art1.version and g["values"]["temp"] == pytest.approx(r.temp)
    on_topic = _scores(kafka_broker.read_all(topics["anomalies"], expect=int(ref.is_anomaly.sum())))
    anomalies = [a for a in on_topic if a["type"] == "score"]  # publish_readings: flagged readings beside the episodes
    assert {a["type"] for a in on_topic} == {"score", "episode"}
    assert ref.is_anomaly.sum() >= 1, "the fixture should contain at least one anomaly"
    assert sorted((a["sensor_id"], a["ts_ms"]) for a in anomalies) == sorted(
        (r.sensor_id, int(r.ts)) for r in ref.itertuples() if r.is_anomaly)
    assert all(a["is_anomaly"] for a in anomalies)
    assert all(a["features"][0]["feature"] == "temp" and "surprise" in a for a in anomalies)


def test_episode_messages_on_the_anomalies_topic(kafka_broker, art1, artifact_1f, tmp_path):
    """By default the anomalies topic carries episode messages only: one open and one close per
    episode, the same bytes as the in-process core gives, naming the deviating feature."""
    from worker.codec import encode_episode

    data, ids = _fleet(n=8, steps=60, seed=5)
    data[3, 30:33, 0] += 12.0  # three readings of s3 far off: one episode
    topics = kafka_broker.topics("episodes", partitions=2)
    msgs = fleet_messages(data, ids, ["temp"])
    kafka_broker.produce(topics["readings"], msgs, partition_by_index(2))
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", episodes={"quiet_readings": 4},
                        kafka={"publish_scores": False})
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v, partition_by_index(2)(k)) for k, v in msgs]
    _, ref = reference_detector(art1, s, readings)
    want = [encode_episode(e, art1.version) for r in ref if isinstance(r, Score) and r.episodes for e in r.episodes]
    opens = [json.loads(v) for v in want if json.loads(v)["event"] == "open"]
    assert any(o["sensor_id"] == "s3" and o["start_ts_ms"] == T0 + 30 * STEP_MS for o in opens), opens

    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(msgs))
    m = w.metrics
    opened = m.episodes_opened.labels("score")._value.get()
    closed = sum(m.episodes_closed.labels("score", r)._value.get() for r in ("quiet", "accepted", "reset"))
    open_now = m.episodes_open.labels("score")._value.get()
    flagged = m.anomalies._value.get()
    assert w.stop() == 0
    recs = kafka_broker.read_all(topics["anomalies"], expect=len(want))
    got = [r.value for r in recs]
    assert sorted(got) == sorted(want)  # byte for byte the core's events, nothing else
    by_key = {}
    for r in recs:
        by_key.setdefault(r.key, []).append(json.loads(r.value))
    for key, evs in by_key.items():  # per sensor (= key, one partition): open, close, open, ... in order
        assert [e["event"] for e in evs] == (["open", "close"] * len(evs))[: len(evs)], key
        assert all(e["sensor_id"] == key.decode() and e["type"] == "episode" for e in evs)
    s3 = [e for e in by_key[b"s3"] if e["start_ts_ms"] == T0 + 30 * STEP_MS]
    assert [e["event"] for e in s3] == ["open", "close"]
    o, c = s3
    assert o["features"][0]["feature"] == "temp" and o["features"][0]["z"] > 5 and o["surprise"] > 3
    assert o["features"][0]["actual"] == pytest.approx(data[3, 30, 0])
    assert c["close_reason"] == "quiet" and c["readings_flagged"] >= 1 and c["peak_surprise"] >= o["surprise"]
    assert c["end_ts_ms"] >= T0 + 30 * STEP_MS and c["duration_s"] == (c["end_ts_ms"] - c["start_ts_ms"]) / 1000
    n_open = sum(json.loads(v)["event"] == "open" for v in want)
    assert (opened, closed, open_now) == (n_open, len(want) - n_open, 2 * n_open - len(want))
    assert flagged >= n_open  # flagged readings are still counted


def _bad_messages() -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected reason) for every class of bad input the codec rejects."""
    ok = lambda sid, t, v: json.dumps({"sensor_id": sid, "ts": T0 + t * STEP_MS, "values": {"temp": v}}).encode()  # noqa: E731
    return [
        (b"s0", b"{not json", "not_json"),
        (b"s0", b"\xff\xfe\x00garbage", "not_json"),
        (b"s0", b"[1, 2, 3]", "not_object"),
        (None, json.dumps({"ts": T0, "values": {"temp": 1.0}}).encode(), "missing_sensor_id"),
        (b"s1", json.dumps({"sensor_id": "s1", "ts": "yesterday", "values": {"temp": 1.0}}).encode(), "bad_timestamp"),
        (b"s1", json.dumps({"sensor_id": "s1", "ts": T0, "values": {"rpm": 1.0}}).encode(), "missing_feature"),
        (b"s2", json.dumps({"sensor_id": "s2", "ts": T0, "values": {"temp": "hot"}}).encode(), "non_numeric"),
        (b"s2", b'{"sensor_id": "s2", "ts": 1795168800000, "values": {"temp": NaN}}', "non_finite"),
        (b"s2", b'{"sensor_id": "s2", "ts": 1795168800000, "values": {"temp": 1e999}}', "non_finite"),
        (b"s3", ok("s3", 0, 0.5)[:-1] + b', "pad": "' + b"x" * 2000 + b'"}', "too_large"),
        (b"s0", ok("s0", 0, 0.1), "late"),  # older than s0's last applied reading
        (b"s9", ok("s9", 20, 0.1), "no_free_slot"),  # slots are all taken, when_full=reject
    ]


def test_bad_input_goes_to_dead_letter_and_worker_carries_on(kafka_broker, kafka_client, art1, artifact_1f, tmp_path, caplog):
    from prometheus_client.parser import text_string_to_metric_families

    caplog.set_level("DEBUG", logger="slotwatch.worker")

    data, ids = _fleet(n=4, steps=30, spike=False)
    topics = kafka_broker.topics("dlq", partitions=1)
    good1 = fleet_messages(data[:, :20], ids, ["temp"])
    bad = _bad_messages()
    good2 = fleet_messages(data, ids, ["temp"], start=20)
    msgs = good1 + [(k, v) for k, v, _ in bad] + good2
    kafka_broker.produce(topics["readings"], msgs)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck",
                        kafka={"max_message_bytes": 1024}, model={"slots": 4, "when_full": "reject"})
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(msgs))
    port = w.port
    # /metrics over HTTP, parsed by prometheus-client's parser: the counters add up
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    val = lambda name: sum(x.value for x in fams[name].samples if x.name.endswith("_total"))  # noqa: E731
    rejected = {x.labels["reason"]: x.value for x in fams["slotwatch_readings_rejected"].samples if x.name.endswith("_total")}
    consumed, scored, skipped = val("slotwatch_readings_consumed"), val("slotwatch_readings_scored"), val("slotwatch_readings_skipped")
    assert consumed == len(msgs)
    assert consumed == scored + sum(rejected.values()) + skipped
    assert scored == len(good1) + len(good2)
    expected_reasons = {}
    for _, _, r in bad:
        expected_reasons[r] = expected_reasons.get(r, 0) + 1
    assert {k: v for k, v in rejected.items() if v} == expected_reasons
    ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status == 200 and json.loads(ready.read())["ready"] is True
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    hist = fams["slotwatch_tick_duration_seconds"]
    assert [x.value for x in hist.samples if x.name.endswith("_count")][0] > 0
    assert w.stop() == 0

    dead = kafka_broker.read_all(topics["dead"], expect=len(bad))
    assert len(dead) == len(bad)
    first_bad = len(good1)
    for rec, (key, value, reason) in zip(sorted(dead, key=lambda r: int(dict(r.headers)["source_offset"])), bad):
        h = dict(rec.headers)
        assert h["reason"].decode() == reason, (h, value[:60])
        assert rec.value == value  # the original bytes
        assert h["source_topic"].decode() == topics["readings"]
        assert int(h["source_partition"]) == 0
        assert int(h["source_offset"]) == first_bad + bad.index((key, value, reason))
        assert h["detail"]
    # every rejected reading has a DEBUG line naming its partition and offset (and sensor when known) ...
    about = [r for r in caplog.records if r.name == "slotwatch.worker" and getattr(r, "reason", None)]
    assert len(about) == len(bad) and all(r.levelname == "DEBUG" for r in about)
    # ... and WARNING only as rate-limited summaries (counts by reason, one example each), all of them counted
    summaries = [r for r in caplog.records if r.name == "slotwatch.worker" and getattr(r, "rejected", None)]
    assert 1 <= len(summaries) < len(bad) and all(r.levelname == "WARNING" for r in summaries)
    assert sum(sum(r.rejected.values()) for r in summaries) == len(bad)
    assert all(r.partition == 0 and r.offset >= first_bad and hasattr(r, "sensor_id") for r in about)
    assert {r.sensor_id for r in about if r.reason == "late"} == {"s0"}
    # the worker carried on: every good reading after the bad ones was scored
    scores = _scores(kafka_broker.read_all(topics["scores"], expect=len(good1) + len(good2)))
    assert {(x["sensor_id"], x["ts_ms"]) for x in scores} == {
        (k.decode(), json.loads(v)["ts"]) for k, v in good1 + good2}


def test_restart_resumes_from_checkpoint(kafka_broker, kafka_client, art1, artifact_1f, tmp_path):
    data, ids = _fleet(n=12, steps=30, seed=11)
    topics = kafka_broker.topics("restart", partitions=3)
    part = partition_by_index(3)
    first = fleet_messages(data[:, :18], ids, ["temp"])
    second = fleet_messages(data, ids, ["temp"], start=18)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", model={"slots": 5})  # paging too
    kafka_broker.produce(topics["readings"], first, part)
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(first))
    assert w.stop() == 0
    kafka_broker.produce(topics["readings"], second, part)
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(second))
    m = w.metrics
    assert m.consumed._value.get() == len(second)  # resumed at the checkpoint, nothing read again
    assert w.stop() == 0

    scores = _scores(kafka_broker.read_all(topics["scores"], expect=len(first) + len(second)))
    keys = [(x["partition"], x["offset"]) for x in scores]
    assert len(keys) == len(set(keys)) == len(first) + len(second)  # none skipped, none twice
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v) for _, v in first + second]
    ref, _ = reference_detector(art1, s, readings)
    states = final_states(tmp_path / "ck", topics["readings"])
    assert sorted(states) == sorted(ids)
    for sid, (state, count, total) in states.items():
        np.testing.assert_allclose(state, ref.sensor_state(sid), atol=1e-6)
        assert total == 30


def test_corrupt_newest_checkpoint_falls_back_to_previous(kafka_broker, art1, artifact_1f, tmp_path):
    from worker.checkpointing.store import CheckpointStore

    data, ids = _fleet(n=6, steps=30, seed=12)
    topics = kafka_broker.topics("corrupt", partitions=1)
    parts = [fleet_messages(data[:, :10], ids, ["temp"]),
             fleet_messages(data[:, :20], ids, ["temp"], start=10),
             fleet_messages(data, ids, ["temp"], start=20)]
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck")
    store = CheckpointStore(tmp_path / "ck", topics["readings"])
    for k in range(2):
        kafka_broker.produce(topics["readings"], parts[k])
        w = RunningWorker(s, artifact=art1)
        w.wait_consumed(len(parts[k]))
        assert w.stop() == 0
    gens = store.generations(0)
    assert len(gens) == 2
    blob = bytearray(gens[0].read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a flipped byte in the newest generation
    gens[0].write_bytes(bytes(blob))

    kafka_broker.produce(topics["readings"], parts[2])
    w = RunningWorker(s, artifact=art1)
    w.wait_consumed(len(parts[1]) + len(parts[2]))  # replays from the older checkpoint
    assert w.metrics.checkpoint_fallbacks._value.get() == 1
    assert w.stop() == 0

    every = parts[0] + parts[1] + parts[2]
    codec = ReadingCodec(["temp"])
    ref, results = reference_detector(art1, s, [codec.decode(v) for _, v in every])
    states = final_states(tmp_path / "ck", topics["readings"])
    for sid in ids:
        np.testing.assert_allclose(states[sid][0], ref.sensor_state(sid), atol=1e-6)
        assert states[sid][2] == 30
    # the replayed part was published twice, with identical bytes
    recs = kafka_broker.read_all(topics["scores"], expect=len(every) + len(parts[1]))
    by_offset: dict[int, set] = {}
    for r in recs:
        by_offset.setdefault(json.loads(r.value)["offset"], set()).add(r.value)
    assert len(by_offset) == len(every)
    assert all(len(v) == 1 for v in by_offset.values())
    assert sum(1 for r in recs) == len(every) + len(parts[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_partitions_move_between_two_workers_without_loss(kafka_broker, kafka_client, art1, artifact_1f, tmp_path):
    """A second worker joins (rebalance: revoke -> checkpoint+commit -> assign -> restore), then the
    first leaves; the state that ends up in the checkpoints equals one uninterrupted run."""
    import time

    data, ids = _fleet(n=16, steps=30, seed=13, spike=False)
    topics = kafka_broker.topics("rebalance", partitions=4)
    part = partition_by_index(4)
    chunks = [fleet_messages(data[:, :10], ids, ["temp"]), fleet_messages(data[:, :20], ids, ["temp"], start=10),
              fleet_messages(data, ids, ["temp"], start=20)]
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", checkpoint={"interval_s": 1.0})
    kafka_broker.produce(topics["readings"], chunks[0], part)
    a = RunningWorker(s, artifact=art1)
    a.wait_consumed(len(chunks[0]))
    b = RunningWorker(s, artifact=art1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pa, pb = a.worker.restored, b.worker.restored
        if pa and pb and len(pa | pb) == 4 and not pa & pb:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no rebalance: {a.worker.restored} / {b.worker.restored}")
    kafka_broker.produce(topics["readings"], chunks[1], part)
    consumed = lambda: a.metrics.consumed._value.get() + b.metrics.consumed._value.get()  # noqa: E731
    deadline = time.monotonic() + 60
    while consumed() < len(chunks[0]) + len(chunks[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.stop() == 0  # leaves the group: b takes every partition from a's final checkpoints
    kafka_broker.produce(topics["readings"], chunks[2], part)
    deadline = time.monotonic() + 120
    while (len(b.worker.restored) < 4 or any(b.worker.applied.get(p, -1) + 1 < n for p, n in _ends(chunks, part).items())) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b.stop() == 0

    every = chunks[0] + chunks[1] + chunks[2]
    codec = ReadingCodec(["temp"])
    ref, _ = reference_detector(art1, s, [codec.decode(v) for _, v in every])
    states = final_states(tmp_path / "ck", topics["readings"])
    assert sorted(states) == sorted(ids)
    for sid in ids:
        np.testing.assert_allclose(states[sid][0], ref.sensor_state(sid), atol=1e-6)
        assert states[sid][2] == 30
    recs = kafka_broker.read_all(topics["scores"], expect=None, idle=3.0)
    by_key: dict = {}
    for r in recs:
        d = json.loads(r.value)
        by_key.setdefault((d["partition"], d["offset"]), set()).add(r.value)
    assert len(by_key) == len(every) and all(len(v) == 1 for v in by_key.values())


def _ends(chunks, part) -> dict[int, int]:
    n: dict[int, int] = {}
    for c in chunks:
        for k, _ in c:
            n[part(k)] = n.get(part(k), 0) + 1
    return n
