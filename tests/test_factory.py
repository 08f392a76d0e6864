"""One factory builds the detector from settings (issue 11 item 1): the worker, `slotwatch replay`,
`slotwatch evaluate` and the SKAB benchmark build equal detectors from the same settings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import sine_fleet
from worker.core import artifact as art
from worker.settings import Settings


def _settings(model_path, ckpt) -> Settings:
    """Every setting the detector takes away from its default, so nothing matches by accident."""
    return Settings(
        model=dict(path=str(model_path), slots=8, when_full="reject", max_gap_s=120.0, threshold=0.995, warmup=7,
                   recent_readings=8),
        scoring=dict(accept_after=77, level=False, move_window=300, flat_min_run=6, flat_p_max=0.8),
        episodes=dict(quiet_readings=9, quiet_s=30.0, top_features=1),
        limits=dict(max_sensors=500, max_sensor_id_bytes=40),
        silence=dict(multiple=5.0, min_intervals=3),
        checkpoint=dict(dir=str(ckpt)),
    )


def params(det) -> dict:
    """What a detector was built with (everything that decides its scores, episodes, capacity)."""
    return dict(slots=det.slots, when_full=det.router.when_full, max_gap_ms=det.max_gap_ms, scorer=det.params,
                adapt=det.adapt, level_on=det._level_on, flat_on=det._flat_on, episodes=det.episodes.params,
                recent=det.table.recent, max_sensors=det.max_sensors, max_sensor_id_bytes=det.max_sensor_id_bytes,
                model_version=det.model_version, silence=_silence(det.silence))


def _silence(t):
    return None if t is None else (type(t).__name__, t.multiple, t.floor_s, t.spread_weight, t.min_intervals,
                                   t.last_seen_size, t.alpha, t.seeds)


def test_worker_replay_evaluate_and_skab_build_equal_detectors(artifact_1f, tmp_path):
    from benchmarks.skab import make_detector
    from training.evaluate import score_with_core
    from worker.app import Worker
    from worker.metrics import Metrics
    from worker.replay import replay_detector

    s = _settings(artifact_1f, tmp_path / "ck")
    a = art.load(artifact_1f)
    worker = params(Worker(s, metrics=Metrics(), artifact=a).detector)
    # the settings arrived (so the equality below is not one of defaults)
    assert (worker["slots"], worker["when_full"], worker["max_gap_ms"], worker["recent"]) == (8, "reject", 120_000, 8)
    assert (worker["scorer"].threshold, worker["scorer"].warmup) == (0.995, 7)
    assert (worker["adapt"].accept_after, worker["adapt"].quiet, worker["adapt"].flat_min_run) == (77, 9, 6)
    assert worker["level_on"] is False and worker["adapt"].level_scale == 0.0
    assert (worker["episodes"].quiet_readings, worker["episodes"].quiet_s, worker["episodes"].top_features) == (9, 30.0, 1)
    assert (worker["max_sensors"], worker["max_sensor_id_bytes"]) == (500, 40)
    assert worker["silence"][1] == 5.0 and worker["silence"][4] == 3

    assert params(replay_detector(a, s)) == worker
    df = pd.DataFrame({"sensor_id": ["s1"] * 20, "ts_ms": np.arange(20) * 1000,
                       "temp": sine_fleet(1, 20, 1, seed=1)[0, :, 0]})
    _, det = score_with_core(a, df, ["temp"], s, slots=s.model.slots)
    assert params(det) == worker
    assert params(make_detector(artifact_1f, s)) == worker
    # command-line overrides change only what they name
    over = params(replay_detector(a, s, slots=16, threshold=0.9))
    assert over["slots"] == 16 and over["scorer"].threshold == 0.9
    assert {k: v for k, v in over.items() if k not in ("slots", "scorer")} == \
        {k: v for k, v in worker.items() if k not in ("slots", "scorer")}
