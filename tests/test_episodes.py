"""Alerts as episodes (issue 9): the tracker alone, inside the scoring core, across a
checkpoint, and the messages' bytes.  Pure: no Kafka (the broker tests are in
tests/test_worker_kafka.py and tests/test_worker_crash.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import sine_fleet
from worker.codec import encode_episode, encode_score, episode_dict
from worker.core import artifact as art
from worker.core.attribution import MAX_SURPRISE, surprise
from worker.core.detector import SlotDetector
from worker.core.episodes import EpisodeParams, EpisodeTracker
from worker.core.readings import Reading, Score
from worker.state.table import COLUMNS, NO_TS

FEATS = ["temp", "rpm", "vib"]


def feed(t: EpisodeTracker, sid: str, ts: int, score: float, flagged: bool, z=(0.1, 0.2, 0.3), accepted=False):
    z = np.asarray(z, float)
    return t.learn_one(sid, ts, score, float(surprise(1 - score)), flagged, 100 + z, np.full(3, 100.0), z, accepted)


def test_opens_on_first_flag_and_closes_after_the_quiet_period_with_peak_count_duration():
    t = EpisodeTracker(FEATS, quiet_readings=3)
    assert feed(t, "a", 0, 0.2, False) == []
    (o,) = feed(t, "a", 1000, 0.9995, True, z=(4.0, -0.5, 0.1))
    assert (o.event, o.kind, o.sensor_id, o.start_ts_ms, o.ts_ms, o.episode_id) == ("open", "score", "a", 1000, 1000, "a@1000")
    assert o.features[0] == {"feature": "temp", "actual": 104.0, "expected": 100.0, "z": 4.0}
    assert feed(t, "a", 2000, 0.3, False) == []  # one quiet reading, then flagged again: the quiet period restarts
    assert feed(t, "a", 3000, 0.999999, True, z=(0.5, -9.0, 2.0)) == []  # the peak
    assert feed(t, "a", 4000, 0.9992, True, z=(3.0, 0.0, 0.0)) == []
    assert feed(t, "a", 5000, 0.1, False) == [] and feed(t, "a", 6000, 0.1, False) == []
    (c,) = feed(t, "a", 7000, 0.1, False)
    assert (c.event, c.close_reason, c.start_ts_ms, c.end_ts_ms, c.ts_ms) == ("close", "quiet", 1000, 4000, 7000)
    assert c.readings_flagged == 3 and c.duration_s == 3.0
    assert c.peak_score == 0.999999 and c.peak_surprise == pytest.approx(6.0, abs=1e-6)
    assert [f["feature"] for f in c.features] == ["rpm", "vib", "temp"]  # at the peak, by |z|
    assert c.features[0]["z"] == -9.0 and c.features[0]["actual"] == 91.0
    assert feed(t, "a", 8000, 0.1, False) == [] and t.open_count() == 0
    (o2,) = feed(t, "a", 9000, 0.9999, True)  # a new episode, a new id
    assert o2.episode_id == "a@9000" and t.open_count() == 1


def test_quiet_period_in_stream_seconds_and_accepted_close():
    t = EpisodeTracker(FEATS, quiet_readings=0, quiet_s=60)
    feed(t, "a", 0, 0.9999, True)
    assert feed(t, "a", 30_000, 0.1, False) == [] and feed(t, "a", 59_999, 0.1, False) == []
    (c,) = feed(t, "a", 60_000, 0.1, False)
    assert c.close_reason == "quiet" and c.readings_flagged == 1 and c.duration_s == 0.0

    t = EpisodeTracker(FEATS, quiet_readings=50)
    feed(t, "b", 0, 0.9999, True)
    feed(t, "b", 1000, 0.9999, True)
    (c,) = feed(t, "b", 2000, 0.4, False, accepted=True)  # the scorer took the new level as normal
    assert (c.close_reason, c.readings_flagged, c.end_ts_ms) == ("accepted", 2, 1000)
    assert feed(t, "b", 3000, 0.2, False, accepted=True) == []  # nothing open: nothing to close


def test_settings_refuse_no_quiet_period():
    with pytest.raises(ValueError, match="quiet period"):
        EpisodeParams(quiet_readings=0, quiet_s=0)
    from pydantic import ValidationError

    from worker.settings import Settings

    with pytest.raises(ValidationError, match="QUIET_READINGS"):
        Settings(episodes={"quiet_readings": 0})


def test_a_tick_of_many_sensors_equals_each_sensor_alone():
    """The vectorised step (rows of one tick at once) gives the events of one stream at a time."""
    rng = np.random.default_rng(3)
    n, steps = 40, 120
    flags = rng.random((n, steps)) < 0.06
    scores = np.where(flags, 1 - 10 ** -rng.uniform(3, 9, (n, steps)), rng.uniform(0, 0.9, (n, steps)))
    acc = rng.random((n, steps)) < 0.01
    z = rng.normal(0, 2, (n, steps, 3))
    together = EpisodeTracker(FEATS, quiet_readings=4, quiet_s=7)
    rows = together.table.add_many([f"s{i}" for i in range(n)])
    got = []
    for k in range(steps):
        ts = np.full(n, k * 1000, np.int64)
        for p, e in together.step(rows, ts, scores[:, k], surprise(1 - scores[:, k]), flags[:, k], acc[:, k],
                                  100 + z[:, k], np.full((n, 3), 100.0), z[:, k]):
            got.append((k, p, e))
    alone = EpisodeTracker(FEATS, quiet_readings=4, quiet_s=7)
    want = []
    for i in range(n):
        for k in range(steps):
            for e in feed(alone, f"s{i}", k * 1000, scores[i, k], bool(flags[i, k]), z[i, k], bool(acc[i, k])):
                want.append((k, i, e))
    assert sorted(got, key=lambda x: (x[1], x[0])) == want
    assert sum(e.event == "open" for _, _, e in want) > 20
    assert {e.close_reason for _, _, e in want if e.event == "close"} == {"quiet", "accepted"}


# ---------------------------------------------------------------------------- in the scoring core
@pytest.fixture(scope="module")
def art3(artifact_3f):
    return art.load(artifact_3f)


def _readings(data, ids, t0=0, step_ms=60_000, start=0):
    n, steps, _ = data.shape
    return [Reading(ids[i], t0 + t * step_ms, data[i, t].copy(), partition=0, offset=t * n + i)
            for t in range(start, steps) for i in range(n)]


def _fleet():
    data = sine_fleet(6, 90, 3, seed=11)
    data[2, 40:43, 1] += 15.0  # rpm of s2 jumps for three readings
    return data, [f"s{i}" for i in range(6)]


def _events(results):
    return [e for r in results if isinstance(r, Score) and r.episodes for e in r.episodes]


SPIKE = 40 * 60_000


def _spike_episode(events):
    """The open and close events of s2's episode that holds the rpm jump (the small test model also
    flags other stretches of these sine waves; those episodes are not looked at)."""
    ev = [e for e in events if e.sensor_id == "s2"]
    (o,) = [e for e in ev if e.event == "open" and e.start_ts_ms <= SPIKE and
            all(c.start_ts_ms != e.start_ts_ms or c.end_ts_ms >= SPIKE for c in ev if c.event == "close")]
    (c,) = [e for e in ev if e.event == "close" and e.episode_id == o.episode_id]
    return o, c


def test_core_publishes_one_open_and_one_close_with_attribution_and_surprise(art3):
    data, ids = _fleet()
    det = SlotDetector(art3, slots=4, episodes=EpisodeParams(quiet_readings=10))  # fewer slots: paging too
    res = det.process(_readings(data, ids))
    ev = [e for e in _events(res) if e.sensor_id == "s2"]
    assert [e.event for e in ev] == ["open", "close"] * (len(ev) // 2) + ["open"] * (len(ev) % 2)
    o, c = _spike_episode(ev)
    assert o.start_ts_ms == SPIKE and c.close_reason == "quiet"
    mine = [r for r in res if r.sensor_id == "s2" and o.start_ts_ms <= r.ts_ms <= c.ts_ms]
    flagged = [r for r in mine if r.is_anomaly]
    assert c.readings_flagged == len(flagged) and c.end_ts_ms == flagged[-1].ts_ms
    assert c.peak_surprise == max(r.surprise for r in flagged) and c.peak_score == max(r.score for r in flagged)
    assert [r.is_anomaly for r in mine if r.ts_ms > c.end_ts_ms] == [False] * 10  # closed at the 10th quiet reading
    assert o.features[0]["feature"] == "rpm" and o.features[0]["z"] > 20  # the feature that jumped, first
    assert o.features[0]["actual"] == pytest.approx(data[2, 40, 1])
    assert c.features[0]["feature"] == "rpm"  # at the peak: the jump
    # scores carry information: flagged readings do not all print the same, surprise is finite and capped
    s = np.array([r.surprise for r in res if isinstance(r, Score)])
    assert np.isfinite(s).all() and s.max() <= MAX_SURPRISE and s.min() >= 0
    every_flag = [r for r in res if r.is_anomaly]
    assert len({round(r.surprise, 2) for r in every_flag}) > len(every_flag) // 4  # not all "1.000000"
    assert all(r.feature_z is not None and r.feature_z.shape == (3,) for r in res if isinstance(r, Score))
    assert det.episodes.open_count() == sum(e.event == "open" for e in _events(res)) - sum(
        e.event == "close" for e in _events(res))


def test_reset_closes_the_open_episode_before_the_reading(art3):
    data, ids = _fleet()
    det = SlotDetector(art3, slots=8, max_gap_ms=5 * 60_000, episodes=EpisodeParams(quiet_readings=30))
    is_open = lambda: det.table.cols["ep_start_ts"][det.table.index["s2"]] != NO_TS  # noqa: E731
    det.process(_readings(data[:, :45], ids))
    assert is_open()
    later = Reading("s2", 200 * 60_000, data[2, 45].copy())  # a gap longer than max_gap: the sequence restarts
    (r,) = det.process([later])
    (c,) = r.episodes
    assert (c.event, c.close_reason, c.ts_ms, c.end_ts_ms) == ("close", "reset", 200 * 60_000, 44 * 60_000)
    assert c.start_ts_ms <= SPIKE and c.readings_flagged >= 5
    assert r.warming_up and not is_open()
    # an explicit reset through the API closes too
    det.process(_readings(data[:, :45], ids, t0=300 * 60_000))
    assert is_open() and det.reset("s2")
    assert [e.close_reason for e in det.reset_events] == ["reset"] and not is_open()


def test_checkpoint_in_the_middle_of_an_episode_gives_the_same_events(art3):
    data, ids = _fleet()
    p = EpisodeParams(quiet_readings=10)
    ref = SlotDetector(art3, slots=8, episodes=p)
    want = [encode_episode(e, "v") for e in _events(ref.process(_readings(data, ids)))]
    a = SlotDetector(art3, slots=8, episodes=p)
    first = _events(a.process(_readings(data[:, :42], ids)))
    cols = a.export_partition(0)
    assert cols["ep_start_ts"][list(cols["sensor_id"]).index("s2")] != NO_TS  # s2's episode is open in the checkpoint
    b = SlotDetector(art3, slots=8, episodes=p)
    b.import_partition(cols)
    rest = _events(b.process(_readings(data, ids, start=42)))
    assert [encode_episode(e, "v") for e in first + rest] == want and len(want) >= 2


def test_a_checkpoint_without_episode_columns_restores_with_no_episode_open(art3):
    data, ids = _fleet()
    a = SlotDetector(art3, slots=8)
    a.process(_readings(data[:, :20], ids))
    from worker.checkpointing.format import Checkpoint, decode, encode

    cols = {k: v for k, v in a.export_partition(0).items() if not k.startswith("ep_")}
    old = decode(encode(Checkpoint(0, 120, "v", cols))).columns  # as a checkpoint file of before the feature
    assert any(k.startswith("ep_") for k in COLUMNS) and not any(k.startswith("ep_") for k in old)
    b = SlotDetector(art3, slots=8)
    assert b.import_partition(old) == 6
    assert b.episodes.open_count() == 0 and (b.table.cols["ep_start_ts"][:6] == NO_TS).all()
    res = b.process(_readings(data, ids, start=20))
    assert [e.event for e in _events(res) if e.sensor_id == "s2"][:1] == ["open"]


# ---------------------------------------------------------------------------- messages
def test_episode_messages_follow_the_shared_schema_and_are_deterministic(art3):
    data, ids = _fleet()
    det = SlotDetector(art3, slots=8, episodes=EpisodeParams(quiet_readings=10, top_features=2))
    res = det.process(_readings(data, ids))
    o, c = _spike_episode(_events(res))
    common = {"type", "event", "kind", "sensor_id", "episode_id", "start_ts", "start_ts_ms", "ts", "ts_ms", "model_version"}
    do, dc = episode_dict(o, "v1"), episode_dict(c, "v1")
    assert set(do) == common | {"score", "surprise", "features"}
    assert set(dc) == common | {"end_ts", "end_ts_ms", "duration_s", "readings_flagged", "peak_score", "peak_surprise",
                                "close_reason", "features"}
    assert do["episode_id"] == dc["episode_id"] == f"s2@{SPIKE}" and dc["start_ts"] == "1970-01-01T00:40:00.000Z"
    assert len(dc["features"]) == 2 and set(dc["features"][0]) == {"feature", "actual", "expected", "z"}
    assert json.loads(encode_episode(c, "v1")) == dc and encode_episode(c, "v1") == encode_episode(c, "v1")
    # a flagged score message names its deviating features too; every score carries z and surprise
    flagged = next(r for r in res if isinstance(r, Score) and r.is_anomaly and r.sensor_id == "s2" and r.ts_ms == SPIKE)
    d = json.loads(encode_score(flagged, FEATS, "v1", top_k=2))
    assert d["features"][0]["feature"] == "rpm" and len(d["features"]) == 2 and d["surprise"] > 3
    quiet = json.loads(encode_score(res[0], FEATS, "v1"))
    assert set(quiet["z"]) == set(FEATS) and "features" not in quiet and quiet["type"] == "score"


def test_an_evicted_sensor_s_open_episode_closes_as_evicted(art3):
    data, ids = _fleet()
    det = SlotDetector(art3, slots=8, max_gap_ms=5 * 60_000, max_sensors=6, episodes=EpisodeParams(quiet_readings=30))
    det.process(_readings(data[:, :45], ids))
    assert det.table.cols["ep_start_ts"][det.table.index["s2"]] != NO_TS
    others = [Reading(s, t * 60_000, data[int(s[1:]), t].copy(), partition=0) for t in range(45, 60) for s in ids if s != "s2"]
    det.process(others)
    assert det.drain_episode_events() == []
    (r,) = det.process([Reading("s9", 60 * 60_000, data[0, 0].copy(), partition=0)])  # a 7th sensor: s2 (idle) makes room
    assert isinstance(r, Score) and "s2" not in det.table.index
    (c,) = det.drain_episode_events()
    assert (c.sensor_id, c.event, c.close_reason, c.end_ts_ms) == ("s2", "close", "evicted", 44 * 60_000)
    assert c.ts_ms == 60 * 60_000 and det.drain_episode_events() == []  # the partition's stream time, the new reading included
