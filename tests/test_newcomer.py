"""Issue 13, a newcomer's first hour: settings in the form `--features` takes, one-line errors
with documented exit codes, training warnings, the two latencies, live time stamps,
progress bars only on a terminal, the validation pictures, Makefile and README promises.

The CLI tests run ``python -m worker.cli`` in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.simulate import simulate
from worker import exits

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, timeout: float = 180, cwd: Path | None = None, stdout=None):
    """``slotwatch ARGS`` in a child process; stderr is a pipe (not a terminal), like a log or CI."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLOTWATCH_")}
    e.pop("CI", None)  # the terminal rule, not the CI rule, must be what keeps bars away here
    e["SLOTWATCH_METRICS__PORT"] = "0"
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=e, cwd=cwd, timeout=timeout, text=True,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line]


def assert_one_clear_line(res, code: int, *needles: str) -> str:
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errs = error_lines(res.stderr)
    assert len(errs) == 1, res.stderr[-3000:]
    for n in needles:
        assert n in errs[0], (n, errs[0])
    return errs[0]


def free_port() -> int:
    from worker.kafka.embedded import free_port as fp

    return fp()


# ----------------------------------------------------------------------------- 2. settings
@pytest.mark.parametrize("value", ["temp,rpm", " temp , rpm ", '["temp","rpm"]', '["temp", "rpm"]'])
def test_features_setting_takes_the_comma_form_and_the_json_form(monkeypatch, value):
    from worker.settings import Settings

    monkeypatch.setenv("SLOTWATCH_MODEL__FEATURES", value)
    assert Settings.load().model.features == ["temp", "rpm"]


def test_a_broken_json_features_value_names_the_variable(monkeypatch):
    from pydantic import ValidationError

    from worker.settings import Settings

    monkeypatch.setenv("SLOTWATCH_MODEL__FEATURES", '["temp"')
    with pytest.raises(ValidationError) as ei:
        Settings.load()
    line = exits.describe_settings_error(ei.value)
    assert line.startswith("bad settings: SLOTWATCH_MODEL__FEATURES: not a JSON list")
    assert "\n" not in line


def test_bad_settings_end_in_one_line_and_exit_2(tmp_path):
    res = cli("simulate", "--sensors", "2", "--steps", "10", "--out", str(tmp_path / "x.csv"),
              env={"SLOTWATCH_MODEL__SLOTS": "0"})
    assert_one_clear_line(res, exits.EXIT_CONFIG, "SLOTWATCH_MODEL__SLOTS", "greater than 0")


# ----------------------------------------------------------------------------- 3. brokers and options
def test_simulate_to_kafka_without_a_broker_says_so_in_one_line_and_exits_5():
    bootstrap = f"127.0.0.1:{free_port()}"
    res = cli("simulate", "--sensors", "2", "--steps", "10", "--to-kafka",
              env={"SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap})
    assert_one_clear_line(res, exits.EXIT_BROKER, "cannot send the readings", bootstrap, "SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS")


@pytest.mark.slow
def test_run_create_topics_without_a_broker_gives_up_after_the_request_timeout_with_exit_5(tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    res = cli("run", "--create-topics", "2", "--bootstrap", bootstrap, "--model", str(tmp_path / "none"),
              env={"SLOTWATCH_KAFKA__REQUEST_TIMEOUT_MS": "1000"})
    assert_one_clear_line(res, exits.EXIT_BROKER, "cannot create the topics", bootstrap)
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
def test_train_from_kafka_accepts_comma_features_and_reports_a_missing_broker_with_exit_5(tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}"
    res = cli("train", "--from-kafka", "--out", str(tmp_path / "m"),
              env={"SLOTWATCH_MODEL__FEATURES": "temp,rpm", "SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap})
    assert_one_clear_line(res, exits.EXIT_BROKER, "cannot read the readings topic", bootstrap)


@pytest.mark.slow
def test_train_with_zero_epochs_is_refused_by_name(tmp_path):
    data = tmp_path / "f.csv"
    simulate(2, 50, ["temp"], seed=1).to_csv(data, index=False)
    res = cli("train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "0")
    assert_one_clear_line(res, exits.EXIT_CONFIG, "--epochs must be at least 1, got 0")
    assert not (tmp_path / "m").exists()


def test_impossible_replay_options_are_refused_by_argparse_with_exit_2(tmp_path):
    res = cli("replay", "--model", "m", "--data", "d", "--out", "o", "--chunk", "0")
    assert res.returncode == 2 and "argument --chunk: must be at least 1, got 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_train_options_that_cannot_train_are_refused():
    from training.checks import check_config
    from training.fleet import TrainingError
    from training.train import TrainConfig

    for kw, option in [({"epochs": 0}, "--epochs"), ({"patience": 0}, "--patience"), ({"seq_len": 1}, "--seq-len"),
                       ({"false_alarm_rate": 0.0}, "--false-alarm-rate"), ({"val_fraction": 1.0}, "--val-fraction")]:
        with pytest.raises(TrainingError, match=re.escape(option)):
            check_config(TrainConfig(**kw))
    check_config(TrainConfig())  # the defaults are fine


# ----------------------------------------------------------------------------- 7 + 10. replay/evaluate output
@pytest.mark.slow
def test_evaluate_redirected_to_files_is_clean_and_a_wrong_model_names_the_option(artifact_1f, tmp_path):
    data = tmp_path / "labeled.csv"
    simulate(3, 300, ["temp"], seed=4, anomaly_every=120, margin=40).to_csv(data, index=False)
    out = tmp_path / "stdout.txt"
    with out.open("w") as fh:  # `slotwatch evaluate ... > stdout.txt`
        res = cli("evaluate", "--model", str(artifact_1f), "--data", str(data), "--report", str(tmp_path / "rep"),
                  "--plots", "1", stdout=fh, env={"SLOTWATCH_MODEL__FEATURES": "temp"})
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("| detector |") and "| slotwatch |" in text
    assert "\n\n" not in text.strip() and "\r" not in text
    assert "\r" not in res.stderr and "it/s" not in res.stderr and "rd/s" not in res.stderr  # no progress bar
    assert "oneDNN" not in res.stderr and "absl::InitializeLog" not in res.stderr  # no TensorFlow start-up lines
    assert re.search(r"Threshold 0\.999\b", (tmp_path / "rep" / "report.md").read_text())

    res = cli("replay", "--model", str(tmp_path / "models-typo"), "--data", str(data), "--out", str(tmp_path / "o.csv"))
    line = assert_one_clear_line(res, exits.EXIT_CONFIG, "--model", "models-typo")
    assert "SLOTWATCH_MODEL__PATH" not in line


def test_progress_only_on_a_terminal_and_never_under_ci(monkeypatch):
    import io
    import pty

    from worker.progress import want_progress

    monkeypatch.delenv("CI", raising=False)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert want_progress(True, tty) is True
            assert want_progress(False, tty) is False
            monkeypatch.setenv("CI", "true")
            assert want_progress(True, tty) is False
            monkeypatch.setenv("CI", "false")
            assert want_progress(True, tty) is True
    finally:
        os.close(master)
        os.close(slave)
    assert want_progress(True, io.StringIO()) is False


# ----------------------------------------------------------------------------- 4. thresholds
def test_thresholds_keep_the_digits_that_differ_from_one():
    from worker.fmt import fmt_threshold

    assert fmt_threshold(0.99999995) == "0.99999995"
    assert f"{0.99999995:.6g}" == "1"  # what the logs printed before
    for v in (0.9, 0.999, 0.99999995, 1 - 3e-12, 0.9999999512345):
        shown = float(fmt_threshold(v))
        assert shown < 1.0 and abs(shown - v) <= 0.1 * (1.0 - v), (v, shown)


# ----------------------------------------------------------------------------- 5 + 8. training warnings, plots
@pytest.mark.slow
def test_training_warns_when_the_false_alarm_target_is_missed_and_strict_keeps_latest(tmp_path, caplog):
    """Unlabeled stuck sensors and level shifts count as normal readings: the calibrated model
    flags some of them, more than a target of 1e-6 allows."""
    import logging

    from training.fleet import prepare_fleet
    from training.train import CheckFailed, TrainConfig, train
    from worker.core import artifact as art

    df = simulate(6, 500, ["temp", "rpm"], seed=11, anomaly_every=120, margin=60, kinds=["stuck", "level_shift", "spike"])
    df["label"] = 0  # nobody labeled them
    fleet = prepare_fleet(df.rename(columns={"ts": "ts_ms"}), ["temp", "rpm"])
    cfg = dict(units=[8], epochs=1, patience=1, seq_len=32, batch=8, warmup=16, flat_window=6, progress=False, seed=3,
               false_alarm_rate=1e-6)
    out = tmp_path / "models"
    with caplog.at_level(logging.WARNING, logger="slotwatch.train"):
        first = train(fleet, TrainConfig(**cfg), out, "unlabeled", ["memory"])
    mf = art.load(first).manifest
    far = mf.metrics["val_false_alarm_rate"]
    assert far > 1e-6, "the fixture should miss the target"
    assert mf.metrics["warnings"] and "above the target --false-alarm-rate" in mf.metrics["warnings"][0]
    assert any("above the target" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    report = json.loads((first / "report" / "report.json").read_text())
    assert report["warnings"] == mf.metrics["warnings"]
    assert art.resolve(out) == first  # default: it becomes latest all the same

    # the pictures: the sensors with the most flagged or labeled readings, most first
    drawn = report["plots"]
    counts = [p["flagged_or_labeled"] for p in drawn]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    for p in drawn:
        assert (first / "report" / f"validation-{p['sensor_id']}.png").stat().st_size > 5000

    time.sleep(1.1)  # the version has a 1-second clock in it
    with pytest.raises(CheckFailed, match="--strict"):
        train(fleet, TrainConfig(**cfg, strict=True), out, "unlabeled", ["memory"])
    assert art.resolve(out) == first, "--strict must leave latest where it was"
    assert len([d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]) == 2


def test_no_warning_when_the_target_is_met():
    from training.checks import false_alarm_warning

    assert false_alarm_warning(1e-4, 1e-4) is None
    assert false_alarm_warning(0.0, 1e-4) is None
    assert "2.10e-02" in false_alarm_warning(2.1e-2, 1e-4)


def test_validation_pictures_pick_the_busy_sensors_and_show_the_threshold(tmp_path):
    from training.report import focus_span, interesting, series_plot, surprise

    flags = np.array([[0] * 50, [1] * 3 + [0] * 47, [0] * 50, [1] * 10 + [0] * 40])
    assert interesting(flags.sum(axis=1), 2) == [3, 1]
    assert surprise([0.99999995])[0] == pytest.approx(7.30, abs=0.01)
    marks = np.zeros(2000, bool)
    marks[1500] = True
    a, b = focus_span(marks, 1000, 2000, 400)
    assert b - a == 400 and a <= 1500 < b
    t = np.arange(200) * 900_000
    v = np.sin(np.arange(200) / 10.0)[:, None]
    score = np.full(200, 0.5)
    score[100:105] = 0.9999999
    path = series_plot(tmp_path / "p.png", "t", t, v, v * 0.9, ["temp"], score, 0.99999995,
                       flag=score > 0.99999995, label=(np.arange(200) >= 98) & (np.arange(200) < 110))
    assert path.stat().st_size > 5000


# ----------------------------------------------------------------------------- 6. latencies and live stamps
@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_event_time_lag_and_processing_latency_are_separate(kafka_broker, artifact_1f, tmp_path):
    from tests.conftest import sine_fleet
    from tests.worker_helpers import T0, RunningWorker, fleet_messages, worker_settings
    from worker.core import artifact as art

    data = sine_fleet(4, 30, 1, seed=2)
    topics = kafka_broker.topics("latency")
    msgs = fleet_messages(data, [f"s{i}" for i in range(4)], ["temp"])  # stamped days in the past
    kafka_broker.produce(topics["readings"], msgs)
    w = RunningWorker(worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck"), artifact=art.load(artifact_1f))
    try:
        w.wait_consumed(len(msgs))
    finally:
        assert w.stop() == 0
    m = w.metrics

    def count_sum(h):
        samples = {s.name: s.value for s in h.collect()[0].samples}
        name = h._name  # noqa: SLF001
        return samples[name + "_count"], samples[name + "_sum"]

    n_lag, s_lag = count_sum(m.event_lag)
    n_proc, s_proc = count_sum(m.processing)
    assert n_lag == n_proc == len(msgs)
    age = time.time() - (T0 + 15 * 60_000) / 1000  # mean reading time stamp
    assert s_lag / n_lag == pytest.approx(age, rel=0.01)
    assert s_proc / n_proc < 10.0  # the worker's own share: no days in it
    assert count_sum(m.latency) == (n_lag, s_lag)  # the deprecated name still says the same


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_simulator_stamps_live_readings_now_and_keeps_files_deterministic(kafka_broker):
    from training.simulate import produce
    from worker.settings import Settings

    df = simulate(3, 40, ["temp"], seed=1)
    settings = Settings(kafka={"bootstrap_servers": kafka_broker.bootstrap})
    live_topic = kafka_broker.topics("live", names=("readings",))["readings"]
    t0 = time.time() * 1000
    assert produce(df, ["temp"], settings, live_topic, progress=False, live=True) == len(df)
    t1 = time.time() * 1000
    recs = kafka_broker.read_all(live_topic, expect=len(df))
    vals = [json.loads(r.value) for r in recs]
    from worker.core.readings import parse_ts

    stamps = [parse_ts(v["ts"]) for v in vals]
    assert all(t0 - 1 <= s <= t1 + 1000 for s in stamps)
    assert [r.timestamp for r in recs] == stamps  # record time = reading time
    per: dict[str, list[int]] = {}
    for v, s in zip(vals, stamps):
        per.setdefault(v["sensor_id"], []).append(s)
    assert all(all(b > a for a, b in zip(x, x[1:])) for x in per.values())

    kept = kafka_broker.topics("kept", names=("readings",))["readings"]
    produce(df, ["temp"], settings, kept, progress=False, live=False)
    got = sorted((json.loads(r.value)["sensor_id"], parse_ts(json.loads(r.value)["ts"]))
                 for r in kafka_broker.read_all(kept, expect=len(df)))
    assert got == sorted(zip(df["sensor_id"], df["ts"].astype(int)))
    pd.testing.assert_frame_equal(simulate(3, 40, ["temp"], seed=1), df)


# ----------------------------------------------------------------------------- 1, 3, 9, 10. docs and Makefile
def test_readme_lists_every_exit_code_and_says_how_to_reach_slotwatch():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {code for code, _ in exits.CODES}
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo     #" in quick and "make test     #" in quick  # .ci/run calls `make test`
    assert ". .venv/bin/activate" in quick and ".venv/bin/slotwatch" in quick


def test_make_help_says_what_ci_runs_and_clean_says_where_the_broker_binary_is():
    helptext = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    test_line = next(line for line in helptext.splitlines() if line.startswith("test "))
    assert "CI" in test_line and "SLOTWATCH_REQUIRE_DEPLOY_TOOLS" in test_line
    clean = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "~/.calfkit/bin" in clean
    assert "SLOTWATCH_REQUIRE_DEPLOY_TOOLS=1" in (ROOT / ".ci" / "run").read_text()


def test_deploy_skip_message_points_at_debians_prometheus_package():
    from tests.test_deploy import HOW_TO_GET

    assert "Debian's `prometheus` package" in HOW_TO_GET["promtool"]
    assert "pip" not in HOW_TO_GET["promtool"]
