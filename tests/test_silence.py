"""Silent sensors (issue 16) in the core: cadence learned in stream time, one episode per
silence, jitter not flagged, independent of how the stream is cut, the same after a
checkpoint and restore, paging and eviction; the simulator's `silent` kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.codec import encode_silence
from worker.core import artifact as art
from worker.core.detector import SlotDetector
from worker.core.readings import Reading, Score
from worker.core.silence import SEED_SPREAD, SilenceTracker
from worker.state.table import StateTable

MIN = 60_000


@pytest.fixture(scope="module")
def art1(artifact_1f):
    return art.load(artifact_1f)


def fleet_readings(n: int, steps: int, stop: dict[str, tuple[int, int]] | None = None, every_ms: int = MIN,
                   partition: int = -1, seed: int = 0) -> list[Reading]:
    """n sensors s0.. reporting every ``every_ms`` (time order); ``stop[sid] = (a, b)``: no readings at steps a..b-1."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        for i in range(n):
            sid = f"s{i}"
            a, b = (stop or {}).get(sid, (steps, steps))
            if a <= t < b:
                continue
            out.append(Reading(sid, t * every_ms, np.array([np.sin(t / 5 + i) + 0.05 * rng.normal()]), partition=partition))
    return out


def run(det: SlotDetector, readings: list[Reading], chunk: int) -> list:
    events = []
    for k in range(0, len(readings), chunk):
        det.process(readings[k : k + chunk])
        events += det.silence.drain()
    return events


def tracker(**kw) -> SilenceTracker:
    kw.setdefault("multiple", 5.0)
    kw.setdefault("floor_s", 60.0)
    return SilenceTracker(**kw)


def test_one_sensor_stops_one_episode_opened_after_the_multiple_closed_when_it_returns(art1):
    det = SlotDetector(art1, slots=16, silence=tracker())
    rs = fleet_readings(8, 220, stop={"s3": (100, 200)})  # s3's last reading: minute 99; back at 200
    opened_at = None
    events = []
    for k in range(0, len(rs), 8):  # one poll per minute of stream time
        det.process(rs[k : k + 8])
        got = det.silence.drain()
        if got and opened_at is None:
            opened_at = rs[k + 7].ts_ms
        events += got
    assert [(e.event, e.sensor_id) for e in events] == [("open", "s3"), ("close", "s3")]
    op, cl = events
    assert op.start_ts_ms == 99 * MIN and op.expected_interval_s == pytest.approx(60.0)
    # due after 5 typical intervals (no jitter: no widening), reported within one poll of it
    assert op.ts_ms == 99 * MIN + 5 * MIN
    assert op.ts_ms < opened_at <= op.ts_ms + MIN
    assert cl.close_reason == "returned" and cl.ts_ms == 200 * MIN
    assert cl.duration_s == 101 * 60.0 and cl.readings_missed == 100
    assert det.silence.silent_count == 0
    msg = json.loads(encode_silence(cl, "v1"))
    assert msg["type"] == "episode" and msg["kind"] == "silent" and msg["episode_id"] == f"s3@{99 * MIN}"
    assert msg["end_ts_ms"] == 200 * MIN and msg["readings_missed"] == 100


def test_silent_count_while_silent_and_no_episode_when_everyone_stops(art1):
    det = SlotDetector(art1, slots=16, silence=tracker())
    run(det, fleet_readings(8, 150, stop={"s1": (100, 150), "s2": (100, 150)}), chunk=50)
    assert det.silence.silent_count == 2
    # the whole partition stops: its stream time stops too, nobody is silent (the watchdog's job)
    det2 = SlotDetector(art1, slots=16, silence=tracker())
    assert run(det2, fleet_readings(8, 100), chunk=50) == []


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "bursty"])
def test_irregular_but_normal_cadence_is_not_flagged(kind):
    rng = np.random.default_rng(4)
    t = tracker()
    table = StateTable(1, 1, 1)
    n = 60
    rows = np.array([table.add(f"j{i}") for i in range(n)])
    base = rng.uniform(30, 120, n)  # every sensor its own typical interval (s)
    events = []
    clock = rng.uniform(0, 1, n) * base
    if kind == "uniform":
        draw = lambda: base * rng.uniform(0.5, 1.5, n)  # noqa: E731
    elif kind == "lognormal":
        draw = lambda: base * rng.lognormal(0, 0.35, n)  # noqa: E731
    else:  # mostly on time, one in 30 readings late by 2-3 intervals
        draw = lambda: base * np.where(rng.random(n) < 1 / 30, rng.uniform(2, 3, n), rng.uniform(0.9, 1.1, n))  # noqa: E731
    def stream(horizon_s: float, skip: int | None = None):
        """Every sensor's readings up to ``horizon_s`` (its own jittered cadence), in time order."""
        rr, tt = [], []
        while (clock < horizon_s).any():  # clock: every sensor's next reading time
            due = clock < horizon_s
            m = due & (rows != skip)
            rr.append(rows[m])
            tt.append((clock[m] * 1000).astype(np.int64))
            clock[due] += draw()[due]
        r, ts = np.concatenate(rr), np.concatenate(tt)
        o = np.argsort(ts, kind="stable")
        return r[o], ts[o]

    r, ts = stream(120_000.0)  # 1,000 to 4,000 readings per sensor
    for k in range(0, len(r), 500):
        t.observe(table, r[k : k + 500], ts[k : k + 500])
        events += t.drain()
    assert events == []
    # ... and the same sensors do get flagged when one of them really stops
    r, ts = stream(130_000.0, skip=rows[7])
    t.observe(table, r, ts)
    assert [(e.event, e.sensor_id) for e in t.drain()] == [("open", "j7")]


def _jumbled(rs: list[Reading], seed: int) -> list[Reading]:
    """Cross-sensor disorder: each reading moved up to 3 places (sensors' own order kept)."""
    rng = np.random.default_rng(seed)
    key = np.arange(len(rs)) + rng.uniform(0, 3, len(rs))
    out = [rs[i] for i in np.argsort(key, kind="stable")]
    seen: dict[str, int] = {}
    fixed = []
    for r in out:  # keep per-sensor order (a sensor's readings are in order in its partition)
        if seen.get(r.sensor_id, -1) <= r.ts_ms:
            seen[r.sensor_id] = r.ts_ms
            fixed.append(r)
    return fixed


def test_episodes_do_not_depend_on_how_the_stream_is_cut(art1):
    rs = _jumbled(fleet_readings(12, 160, stop={"s2": (40, 90), "s5": (50, 52), "s9": (100, 140)}), seed=1)
    ref = None
    for chunk in (1, 7, 100, len(rs)):
        ev = run(SlotDetector(art1, slots=8, silence=tracker(floor_s=0, multiple=3)), rs, chunk)
        if ref is None:
            ref = ev
            assert {(e.event, e.sensor_id) for e in ev} == {("open", "s2"), ("close", "s2"), ("open", "s9"), ("close", "s9")}
        assert ev == ref, f"chunk {chunk}"


def test_checkpoint_and_restore_give_the_same_episodes(art1):
    """Invariant 3 for silence: export a partition mid-silence, restore into a new detector,
    go on: the same events as the uninterrupted run (nothing lost, nothing twice)."""
    rs = fleet_readings(10, 200, stop={"s4": (60, 150), "s6": (95, 200)}, partition=0)
    ref = run(SlotDetector(art1, slots=4, silence=tracker()), rs, chunk=30)
    assert [e.event for e in ref] == ["open", "open", "close"]
    cut = next(i for i, r in enumerate(rs) if r.ts_ms >= 97 * MIN)  # s4 silent, s6 not yet (due at 99)
    a = SlotDetector(art1, slots=4, silence=tracker())
    before = run(a, rs[:cut], chunk=30)
    cols, meta = a.export_partition(0), a.silence_meta(0)
    meta = json.loads(json.dumps(meta))  # it travels as JSON in the checkpoint header
    b = SlotDetector(art1, slots=4, silence=tracker())
    b.import_partition(cols)
    b.restore_silence(0, meta)
    assert b.silence.silent_count == 1
    after = run(b, rs[cut:], chunk=30)
    assert before + after == ref
    assert [encode_silence(e, "v") for e in before + after] == [encode_silence(e, "v") for e in ref]


def test_an_older_checkpoint_without_silence_columns_still_restores(art1):
    a = SlotDetector(art1, slots=4, silence=tracker())
    run(a, fleet_readings(4, 30, partition=0), chunk=10)
    cols = {k: v for k, v in a.export_partition(0).items() if not k.startswith(("sil_", "cad_"))}
    b = SlotDetector(art1, slots=4, silence=tracker(min_intervals=2))
    assert b.import_partition(cols) == 4
    b.restore_silence(0, {})
    c = b.table.cols
    rows = np.array([b.table.index[f"s{i}"] for i in range(4)])
    assert (c["sil_last_ts"][rows] == 29 * MIN).all() and (c["cad_n"][rows] == 0).all()
    # cadence is learned again from there: s0 stops, the others go on
    ev = run(b, [r for r in fleet_readings(4, 60, partition=0)[4 * 30 :] if r.sensor_id != "s0" or r.ts_ms < 35 * MIN], 10)
    assert [(e.event, e.sensor_id) for e in ev] == [("open", "s0")]


def test_a_paged_out_sensor_is_still_watched(art1):
    """Paging keeps state in the table: 40 sensors through 4 slots, one stops."""
    det = SlotDetector(art1, slots=4, silence=tracker())
    ev = run(det, fleet_readings(40, 80, stop={"s17": (30, 70)}), chunk=40)
    assert det.stats.page_outs > 0
    assert [(e.event, e.sensor_id) for e in ev] == [("open", "s17"), ("close", "s17")]


def test_an_evicted_silent_sensor_stays_silent_and_its_return_closes_the_episode(art1):
    det = SlotDetector(art1, slots=8, silence=tracker(last_seen_size=1))
    run(det, fleet_readings(6, 50, stop={"s1": (20, 50)}), chunk=6)
    assert det.silence.silent_count == 1
    sil = det.silence
    # what the sensor cap does with idle sensors: forget their rows (the tracker keeps a record)
    rows = np.array([det.table.index["s1"]])
    det.silence_evicted(rows)
    for sid in ("s1",):
        det.router.release(sid)
    det.table.remove_rows(rows)
    assert "s1" not in det.table.index and sil.silent_count == 1
    ev = run(det, [Reading("s1", 50 * MIN, np.array([0.0]))] + fleet_readings(6, 52)[6 * 50 :], chunk=7)
    assert [(e.event, e.sensor_id, e.close_reason) for e in ev] == [("close", "s1", "returned")]
    assert ev[0].start_ts_ms == 19 * MIN and ev[0].readings_missed == 30
    assert det.table.cols["cad_n"][det.table.index["s1"]] > 0  # its cadence came back with it


def test_the_bounded_last_seen_table_forgets_the_oldest_and_says_so(art1):
    det = SlotDetector(art1, slots=8, silence=tracker(last_seen_size=1))
    run(det, fleet_readings(6, 60, stop={"s1": (20, 60), "s2": (25, 60)}), chunk=6)
    assert det.silence.silent_count == 2
    for sid in ("s1", "s2"):
        rows = np.array([det.table.index[sid]])
        det.silence.evicted(det.table, rows)
        det.router.release(sid)
        det.table.remove_rows(rows)
    ev = det.silence.drain()
    assert [(e.event, e.sensor_id, e.close_reason) for e in ev] == [("close", "s1", "evicted")]
    assert det.silence.stats.forgotten == 1 and det.silence.silent_count == 1


def test_a_sensor_known_from_training_is_watched_from_its_first_reading(art1):
    t = tracker(seeds={"s0": 60.0}, min_intervals=3)
    det = SlotDetector(art1, slots=4, silence=t)
    # s0 reports once, then never again; s1 (unknown) goes on
    rs = [Reading("s0", 0, np.array([0.0]))] + [Reading("s1", k * MIN, np.array([0.0])) for k in range(1, 12)]
    due = int(np.ceil(5 * 60.0 * np.exp(2.0 * SEED_SPREAD) * 1000 - 1e-6))  # the seed's spread widens it a little
    assert [(e.event, e.sensor_id, e.ts_ms) for e in run(det, rs, 5)] == [("open", "s0", due)]


def test_off_means_no_tracker_and_no_cost(art1):
    det = SlotDetector(art1, slots=4)
    out = det.process(fleet_readings(2, 5))
    assert det.silence is None and all(isinstance(o, Score) for o in out)


# ----------------------------------------------------------------------------- simulator
def test_simulator_silent_kind_drops_the_readings_and_windows_say_where():
    from training.simulate import simulate, windows

    df = simulate(4, 1200, ["temp"], seed=3, kinds=["silent"])
    assert (df.groupby("sensor_id").size() < 1200).any()
    w = windows(df)
    silent = w[w["kind"] == "silent"]
    assert len(silent) >= 1
    step = 900_000
    for row in silent.itertuples():
        g = df[df["sensor_id"] == row.sensor_id]["ts"].to_numpy()
        inside = (g >= row.start_ts) & (g <= row.end_ts)
        assert not inside.any()
        assert (g == row.start_ts - step).any() and (g == row.end_ts + step).any()
        assert row.length == (row.end_ts - row.start_ts) // step + 1
    # the default kinds are unchanged (silent only when asked for): same frames as before
    assert "silent" not in set(simulate(4, 1200, ["temp"], seed=3)["anomaly_kind"])


def test_the_sensor_cap_evicts_a_silent_sensor_it_stays_silent_and_is_counted(art1):
    """The real cap (issue 10): a new sensor beyond max_sensors evicts an idle one; the evicted
    silent sensor stays silent (gauge), and its return closes the episode it opened."""
    det = SlotDetector(art1, slots=8, max_gap_ms=20 * MIN, max_sensors=6, silence=tracker())
    rs = fleet_readings(6, 45, stop={"s1": (10, 45), "s5": (20, 45)})
    ev = run(det, rs, chunk=6)
    assert [(e.event, e.sensor_id) for e in ev] == [("open", "s1"), ("open", "s5")]
    # a new sensor: the table is full, s1 is idle longer than max_gap: it is evicted
    ev = run(det, [Reading("n0", 45 * MIN, np.array([0.0]))] + fleet_readings(6, 46, stop={"s1": (0, 99), "s5": (0, 99)})[-4:], 5)
    assert det.stats.evicted_idle == 1 and "s1" not in det.table.index
    assert det.silence.silent_count == 2 and ev == []
    # s1 comes back: s5 (idle) makes room; s1's episode closes with its original start
    ev = run(det, [Reading(s, 46 * MIN, np.array([0.0])) for s in ("s0", "s2", "s3", "s4", "n0", "s1")], 6)
    assert det.stats.evicted_idle == 2 and "s5" not in det.table.index
    assert [(e.event, e.sensor_id, e.close_reason, e.start_ts_ms) for e in ev] == [("close", "s1", "returned", 9 * MIN)]
    assert det.silence.silent_count == 1  # s5, evicted while silent


def test_a_live_model_swap_hands_the_tracker_over_with_the_same_episodes(art1):
    """Issue 15's live swap: the candidate was warmed earlier and has stale copies of the silence
    columns; adopt_silence takes the tracker and the current columns, episodes go on unchanged."""
    from worker.core.handover import hand_over

    rs = fleet_readings(10, 200, stop={"s4": (60, 150), "s6": (95, 200)}, partition=0)
    ref = run(SlotDetector(art1, slots=4, silence=tracker()), rs, chunk=30)
    cut = next(i for i, r in enumerate(rs) if r.ts_ms >= 97 * MIN)
    old = SlotDetector(art1, slots=4, silence=tracker())
    before = run(old, rs[: cut // 2], chunk=30)
    cand = SlotDetector(art1, slots=4)
    hand_over(old, cand)  # warmed early: its silence columns are those of this moment
    before += run(old, rs[cut // 2 : cut], chunk=30)
    cand.adopt_silence(old)
    assert cand.silence is old.silence and cand.silence.silent_count == 1
    after = run(cand, rs[cut:], chunk=30)
    assert before + after == ref
