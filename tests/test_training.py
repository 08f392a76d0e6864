"""The training package: simulator, fitting and calibration, artifact, evaluation metrics,
baselines, and clear errors on bad training input.  Real (tiny) Keras models throughout."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from training import metrics
from training.fleet import TrainingError, prepare_fleet
from training.simulate import KINDS, SimulationError, simulate, windows
from training.train import TrainConfig, train

FEATS = ["temp", "rpm"]


def small_cfg(**kw) -> TrainConfig:
    base = dict(units=[8], epochs=2, patience=2, seq_len=32, batch=8, warmup=16, flat_window=6, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def as_training_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"ts": "ts_ms"})


@pytest.fixture(scope="module")
def small_fleet() -> pd.DataFrame:
    return simulate(6, 400, FEATS, seed=11, anomaly_every=150, margin=60)


@pytest.fixture(scope="module")
def trained(small_fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    fleet = prepare_fleet(as_training_frame(small_fleet), FEATS)
    path = train(fleet, small_cfg(), out, "small", ["memory"])
    return out, path


# ----------------------------------------------------------------------------- simulator
def test_simulate_is_deterministic_per_seed_and_differs_between_seeds():
    a = simulate(4, 500, FEATS, seed=5)
    b = simulate(4, 500, FEATS, seed=5)
    c = simulate(4, 500, FEATS, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["temp"].to_numpy(), c["temp"].to_numpy())
    assert set(a["sensor_id"]).isdisjoint(set(c["sensor_id"]))  # another seed is another fleet
    assert (a.groupby("sensor_id")["ts"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_labels_mark_exactly_the_injected_anomalies():
    kw = dict(anomaly_every=200, margin=50)
    clean = simulate(5, 1500, FEATS, seed=9, kinds=[], **kw)
    assert clean["label"].sum() == 0
    for kind in ("spike", "level_shift", "drift", "stuck", "correlated"):  # effects confined to the window
        dirty = simulate(5, 1500, FEATS, seed=9, kinds=[kind], **kw)
        changed = ~np.isclose(dirty[FEATS].to_numpy(), clean[FEATS].to_numpy(), atol=1e-9).all(axis=1)
        lab = dirty["label"].to_numpy().astype(bool)
        assert lab.any()
        assert not (changed & ~lab).any(), f"{kind}: values changed outside the labeled windows"
        assert set(dirty.loc[lab, "anomaly_kind"]) == {kind}
        w = windows(dirty)
        for sid, g in dirty.groupby("sensor_id"):  # every window holds a changed reading
            ch = changed[g.index.to_numpy()]
            for a, b in metrics.runs(g["label"].to_numpy()):
                assert ch[a:b].any(), f"{kind}: window {sid}[{a}:{b}] shows no anomaly"
        assert (w["kind"] == kind).all()
    for kind in ("variance", "frequency"):  # effects start in the window (AR noise / phase carry on after it)
        dirty = simulate(5, 1500, FEATS, seed=9, kinds=[kind], **kw)
        lab = dirty["label"].to_numpy().astype(bool)
        changed = ~np.isclose(dirty[FEATS].to_numpy(), clean[FEATS].to_numpy(), atol=1e-9).all(axis=1)
        first = np.flatnonzero(lab)[0]
        assert lab.any() and changed[lab].mean() > 0.8
        for sid, g in dirty.groupby("sensor_id"):
            idx = g.index.to_numpy()
            start = np.flatnonzero(g["label"].to_numpy())
            if start.size:
                assert not changed[idx[: start[0]]].any()
        assert first >= 0


def test_simulate_refuses_nonsense():
    with pytest.raises(SimulationError, match="unknown anomaly kind"):
        simulate(2, 100, FEATS, kinds=["meteor"])
    with pytest.raises(SimulationError, match="distinct"):
        simulate(2, 100, ["a", "a"])
    assert set(KINDS) >= set(windows(simulate(8, 3000, FEATS, seed=1))["kind"])


# ----------------------------------------------------------------------------- metrics
def test_metrics_on_a_hand_built_case():
    #            0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19
    label = [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    flag = [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1]
    kinds = ["", "spike", "spike", "spike", "", "", "", "", "", "", "drift", "drift", "drift", "drift", "", "", "", "", "", ""]
    r = metrics.series_scores(label, flag, kinds, tolerance=2, merge=2)
    assert [(w["start"], w["end"], w["detected"], w["delay"]) for w in r["windows"]] == [(1, 4, True, 2), (10, 14, False, None)]
    # events: [3,5) touches window 1; [7,8) is 3 after its end (> tolerance 2): false;
    # [14,15) is right after window 2 (within tolerance): not false, yet window 2 stays undetected;
    # [18,20) is false
    assert [(e["start"], e["end"], e["false"]) for e in r["events"]] == [(3, 5, False), (7, 8, True), (14, 15, False), (18, 20, True)]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 5, 6)
    s = metrics.summarize([r, metrics.series_scores([0] * 10, [0] * 10)])
    assert s["readings"] == 30
    assert s["window_recall"] == 0.5 and s["window_precision"] == 0.5 and s["window_f1"] == 0.5
    assert s["median_delay"] == 2.0
    assert s["false_alarms_per_1000"] == pytest.approx(2 / 30 * 1000)
    assert s["point_precision"] == pytest.approx(1 / 6) and s["point_recall"] == pytest.approx(1 / 7)
    assert s["by_kind"]["spike"]["recall"] == 1.0 and s["by_kind"]["drift"]["recall"] == 0.0


def test_frame_scores_orders_each_sensor_by_time_and_skips_rejected():
    df = pd.DataFrame({
        "sensor_id": ["a", "b", "a", "a", "b", "a"],
        "ts": [3, 1, 1, 2, 2, 4],
        "label": [1, 0, 0, 1, 0, 0],
        "is_anomaly": [False, True, False, True, False, False],
        "rejected": ["", "", "", "", "non_finite", ""],
    })
    s, per = metrics.frame_scores(df, tolerance=0, merge=1)
    assert per["a"]["windows"][0]["delay"] == 0  # a: ts 1,2,3,4 -> labels 0,1,1,0; flag at ts 2
    assert per["b"]["n"] == 1 and s["false_events"] == 1


# ----------------------------------------------------------------------------- training
def test_small_fleet_trains_to_an_artifact_the_core_loads(trained, small_fleet):
    from worker.core import artifact as art
    from worker.core.detector import SlotDetector
    from worker.datafile import iter_readings

    out, path = trained
    a = art.load(out)  # through the latest pointer
    assert a.path == path and a.manifest.features == FEATS
    m = a.manifest
    assert m.model_version.endswith(m.training["data_hash"]) and "-small-" in m.model_version
    assert set(m.scaling.sensors) == set(small_fleet["sensor_id"])
    assert 0.99 <= m.calibration.threshold < 1 and m.calibration.warmup == 16 and len(m.calibration.residual_std) == 2
    assert m.metrics["epochs_run"] >= 1 and np.isfinite(m.metrics["val_loss"])
    assert (path / "report" / "loss.png").stat().st_size > 1000
    assert list((path / "report").glob("validation-*.png"))
    df = as_training_frame(small_fleet)
    det = SlotDetector(a, slots=4)  # fewer slots than sensors: paging
    res = det.process(list(iter_readings(df.iloc[:600], FEATS)))
    assert len(res) == 600 and all(hasattr(r, "score") for r in res)
    assert all(0.0 <= r.score <= 1.0 for r in res)


def test_same_seed_gives_the_same_artifact_metrics(small_fleet, tmp_path, trained):
    from worker.core import artifact as art

    _, first = trained
    fleet = prepare_fleet(as_training_frame(small_fleet), FEATS)
    again = train(fleet, small_cfg(), tmp_path, "small", ["memory"])
    m1, m2 = art.load(first).manifest, art.load(again).manifest
    assert m1.metrics["val_loss"] == m2.metrics["val_loss"]
    assert m1.calibration == m2.calibration
    assert m1.model_version.split("-", 1)[1] == m2.model_version.split("-", 1)[1]  # same data name + hash


def test_labeled_rows_do_not_count_in_the_loss():
    from training.train import _targets

    df = as_training_frame(simulate(2, 300, FEATS, seed=4, anomaly_every=100, margin=30))
    fleet = prepare_fleet(df, FEATS)
    _, _, w_train, w_val = _targets(fleet)
    lab_next = fleet.label[:, 1:] == 1
    assert lab_next.any() and not w_train[lab_next].any() and not w_val[lab_next].any()
    assert (w_train + w_val).max() == 1.0  # train and validation never overlap


# ----------------------------------------------------------------------------- bad input
def frame(ids, ts, temp, rpm=None):
    return pd.DataFrame({"sensor_id": ids, "ts_ms": ts, "temp": temp, "rpm": rpm if rpm is not None else [1.0] * len(ids)})


def test_no_rows_is_refused():
    with pytest.raises(TrainingError, match="no training rows"):
        prepare_fleet(frame([], [], []), FEATS)


def test_a_sensor_with_one_reading_is_refused_by_name():
    ids = ["a"] * 20 + ["lonely"]
    df = frame(ids, list(range(20)) + [0], list(np.sin(np.arange(21.0))))
    with pytest.raises(TrainingError, match=r"1 sensor\(s\) have fewer than 8 readings.*'lonely' \(1\)"):
        prepare_fleet(df, FEATS)


def test_nan_is_refused_with_where_it_is():
    t = np.sin(np.arange(20.0))
    t[7] = np.nan
    with pytest.raises(TrainingError, match=r"sensor 'a' at ts 7, feature 'temp'"):
        prepare_fleet(frame(["a"] * 20, list(range(20)), list(t)), FEATS)


def test_unknown_feature_names_are_refused(tmp_path):
    from training.train import load_files

    with pytest.raises(TrainingError, match=r"unknown feature\(s\) \['pressure'\]"):
        prepare_fleet(frame(["a"] * 20, list(range(20)), [0.0] * 20), ["temp", "pressure"])
    p = tmp_path / "r.csv"
    frame(["a"] * 20, list(range(20)), [0.0] * 20).rename(columns={"ts_ms": "ts"}).to_csv(p, index=False)
    with pytest.raises(TrainingError, match="pressure"):
        load_files([p], ["temp", "pressure"])


def test_unsorted_times_are_sorted_with_a_warning_or_refused(caplog):
    ts = list(range(20))
    ts[5], ts[6] = ts[6], ts[5]
    temp = [float(t) for t in ts]  # value follows time, so sorting is visible
    df = frame(["a"] * 20, ts, temp)
    with caplog.at_level(logging.WARNING, logger="slotwatch.train"):
        f = prepare_fleet(df, FEATS)
    assert "out of time order" in caplog.text and f.unsorted_fixed == 1
    assert np.all(np.diff(f.ts[0]) > 0) and np.all(np.diff(f.raw[0, :, 0]) > 0)
    with pytest.raises(TrainingError, match=r"not in time order \(ts 5 after 6\)"):
        prepare_fleet(df, FEATS, unsorted="refuse")


def test_repeated_time_stamps_are_kept_in_file_order_with_a_warning(caplog, tmp_path):
    from training.train import load_files

    ts = list(range(20))
    ts[6] = ts[5]  # two readings at the same time (real exports have them) ...
    ts[12] = ts[13] = ts[11]  # ... and three
    temp = [float(10 * i) for i in range(20)]  # the file order is visible in the values
    p = tmp_path / "r.csv"
    frame(["a"] * 20, ts, temp).rename(columns={"ts_ms": "ts"}).to_csv(p, index=False)
    df, feats = load_files([p], FEATS)
    with caplog.at_level(logging.WARNING, logger="slotwatch.train"):
        f = prepare_fleet(df, feats)
    assert "3 reading(s) of 1 sensor(s) repeat the time stamp" in caplog.text
    assert f.summary["repeated_timestamps"] == 3
    assert f.raw[0, :, 0].tolist() == temp  # file order kept
    assert f.ts[0].tolist() == ts
    # out of order *and* repeated: sorted by time, the repeated ones still in file order
    ts2 = [0, 1, 3, 2, 2, 4, 5, 6, 7, 8, 9, 10]
    g = prepare_fleet(frame(["b"] * 12, ts2, [float(i) for i in range(12)]), FEATS)
    assert g.ts[0].tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert g.raw[0, :, 0].tolist()[:5] == [0.0, 1.0, 3.0, 4.0, 2.0]


def test_train_cli_reports_bad_input_and_exits_2(tmp_path, capfd):
    from worker.cli import main

    p = tmp_path / "bad.csv"
    pd.DataFrame({"sensor_id": ["a", "a"], "ts": [0, 1], "temp": [1.0, float("nan")]}).to_csv(p, index=False)
    assert main(["train", "--data", str(p), "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "sensor 'a' at ts 1, feature 'temp'" in capfd.readouterr().err
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_replays_through_the_core_and_writes_the_report(trained, tmp_path):
    from training.evaluate import evaluate
    from worker.datafile import write_table

    out, _ = trained
    test = simulate(3, 300, FEATS, seed=12, anomaly_every=120, margin=60)
    write_table(test, tmp_path / "test.parquet")
    s = evaluate(out, tmp_path / "test.parquet", tmp_path / "rep", slots=4, plots=1, progress=False)
    got = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert got["detectors"]["slotwatch"]["windows"] == len(windows(test)) == s["detectors"]["slotwatch"]["windows"]
    assert got["readings"] == 900
    scored = pd.read_parquet(tmp_path / "rep" / "scores.parquet")
    recomputed, _ = metrics.frame_scores(scored)
    assert recomputed == got["detectors"]["slotwatch"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| slotwatch |" in md and ".png)" in md
    assert len(list((tmp_path / "rep").glob("sensor-*.png"))) == 1


def test_rolling_zscore_batch_equals_one_at_a_time():
    from training.baselines import RollingZScore

    rng = np.random.default_rng(0)
    v = rng.normal(size=(250, 2))
    batch = RollingZScore.score_series(v, window=100)
    z = RollingZScore(window=100)
    one = []
    for row in v:
        x = {"a": row[0], "b": row[1]}
        one.append(z.score_one(x))
        z.learn_one(x)
    np.testing.assert_allclose(batch, one, rtol=1e-6, atol=1e-6)


def test_autoencoder_batch_equals_one_at_a_time():
    from training.baselines import LSTMAutoencoder

    ae = LSTMAutoencoder(2, window=8, units=4, seed=1)
    xs = np.random.default_rng(1).normal(size=(20, 2)).astype(np.float32)
    batch = ae.score_series(xs)
    one = [ae.score_one(x) for x in xs]
    np.testing.assert_allclose(batch, one, rtol=1e-4, atol=1e-5)


def test_flatline_statistic_flags_a_stuck_sensor_through_the_core(trained, small_fleet):
    from worker.core import artifact as art
    from worker.core.detector import SlotDetector
    from worker.core.readings import Reading

    out, _ = trained
    a = art.load(out)
    cal = a.manifest.calibration
    assert cal.flat_window == 6  # the stuck check is on (stillness against the sensor's own history)
    g = small_fleet[small_fleet["sensor_id"] == "s11-000"]
    g = g[g["label"] == 0].iloc[:150]
    vals = g[FEATS].to_numpy()
    ts = g["ts"].to_numpy()
    step = int(ts[1] - ts[0])
    stuck = [vals[-1]] * 20  # the sensor repeats its last reading
    rs = [Reading("s11-000", int(t), v) for t, v in zip(ts, vals)]
    rs += [Reading("s11-000", int(ts[-1]) + step * (k + 1), np.array(v)) for k, v in enumerate(stuck)]
    res = SlotDetector(a, slots=2).process(rs)
    flags = [r.is_anomaly for r in res[150:]]
    first = flags.index(True)  # flagged ...
    assert first <= cal.flat_window  # ... within a few readings
    assert all(flags[first:])  # and for as long as it stays stuck
    assert all(r.score >= a.manifest.calibration.threshold for r in res[150 + first :])
    off = art.Artifact(a.path, art.Manifest.from_json(a.manifest.to_json()), a.model)
    off.manifest.calibration.flat_window = 0  # check off: the next-reading error (and level) alone miss it
    res_off = SlotDetector(off, slots=2).process(rs)
    assert sum(r.is_anomaly for r in res_off[150 + cal.flat_window :]) < len(stuck) - cal.flat_window


@pytest.mark.kafka
def test_simulate_to_kafka_then_train_from_a_time_range(kafka_broker, tmp_path, monkeypatch, capfd):
    from training.simulate import produce
    from training.train import load_kafka
    from worker.cli import main
    from worker.core import artifact as art
    from worker.settings import Settings

    topic = kafka_broker.topics("train", partitions=2, names=("readings",))["readings"]
    df = simulate(3, 200, FEATS, seed=21, anomaly_every=100, margin=30)
    settings = Settings(kafka={"bootstrap_servers": kafka_broker.bootstrap, "readings_topic": topic})
    assert produce(df, FEATS, settings, progress=False) == 600
    ts = np.sort(df["ts"].unique())
    since, until = int(ts[50]), int(ts[150])
    got = load_kafka(settings, FEATS, since, until, progress=False)
    want = df[(df["ts"] >= since) & (df["ts"] < until)]
    assert len(got) == len(want) == 300
    merged = got.merge(want, left_on=["sensor_id", "ts_ms"], right_on=["sensor_id", "ts"], suffixes=("", "_file"))
    assert len(merged) == 300 and np.allclose(merged["temp"], merged["temp_file"])
    monkeypatch.setenv("SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS", kafka_broker.bootstrap)
    rc = main(["train", "--from-kafka", "--topic", topic, "--since", str(since), "--until", str(until), "--features", "temp,rpm",
               "--out", str(tmp_path / "m"), "--epochs", "1", "--units", "4", "--warmup", "8", "--no-progress"])
    assert rc == 0, capfd.readouterr().err
    m = art.load(tmp_path / "m").manifest
    assert m.training["rows"] == 300 and m.training["sources"][0].startswith(f"kafka:{topic}")
    assert f"-topic-{topic}"[:30].replace(".", "-") in m.model_version


def test_simulate_and_train_commands_from_two_files(tmp_path, capfd):
    from worker.cli import main
    from worker.core import artifact as art

    assert main(["simulate", "--sensors", "3", "--steps", "300", "--features", "temp,rpm", "--seed", "4", "--out", str(tmp_path / "all.csv")]) == 0
    df = pd.read_csv(tmp_path / "all.csv", dtype={"sensor_id": str})
    assert list(df.columns) == ["sensor_id", "ts", "temp", "rpm", "label", "anomaly_kind"] and len(df) == 900
    cut = df["ts"].quantile(0.5)
    df[df["ts"] > cut].to_csv(tmp_path / "b.csv", index=False)  # later half first: sorted (with a warning)
    df[df["ts"] <= cut].to_csv(tmp_path / "a.csv", index=False)
    rc = main(["train", "--data", str(tmp_path / "b.csv"), "--data", str(tmp_path / "a.csv"), "--out", str(tmp_path / "m"),
               "--epochs", "1", "--units", "4", "--warmup", "8", "--seq-len", "32", "--no-progress"])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "out of time order" in err
    m = art.load(tmp_path / "m").manifest
    assert m.features == ["temp", "rpm"] and m.training["rows"] == 900 and "-b-" in m.model_version
    assert m.training["sources"] == [str(tmp_path / "b.csv"), str(tmp_path / "a.csv")]
