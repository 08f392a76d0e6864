"""Model handover on the real broker: a restart with a checkpoint of an older model version
restores warm; a new version behind `latest` is taken over by a running worker (every reading
scored exactly once, by one model); a broken candidate leaves the current model running."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import STEP_MS, T0, RunningWorker, fleet_messages, partition_by_index, worker_settings
from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _scores(broker, topic, expect):
    return [json.loads(r.value) for r in broker.read_all(topic, expect=expect)]


def test_restart_with_a_checkpoint_of_an_older_version_restores_warm(kafka_broker, artifact_1f, artifact_1f_b, tmp_path):
    a, b = art.load(artifact_1f), art.load(artifact_1f_b)
    ids = [f"s{i}" for i in range(4)]
    data = sine_fleet(4, 20, 1, seed=9)
    first, second = fleet_messages(data[:, :10], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=10)
    topics = kafka_broker.topics("restore-older")
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", handover={"live_swap": False})
    kafka_broker.produce(topics["readings"], first)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(first))
    assert w.stop() == 0

    kafka_broker.produce(topics["readings"], second)
    w = RunningWorker(s, artifact=b)  # the retrained model, the old checkpoint: no exit 3
    w.wait_consumed(len(second))
    assert w.metrics.handover_warmed.labels("restore")._value.get() == len(ids)
    det = w.worker.detector
    assert all(int(det.table.cols["count"][det.table.index[sid]]) == 20 for sid in ids)
    assert w.stop() == 0
    scores = _scores(kafka_broker, topics["scores"], len(first) + len(second))
    assert [x["model_version"] for x in scores] == [a.version] * len(first) + [b.version] * len(second)
    assert not any(x["warming_up"] for x in scores[len(first):])  # nobody warms up again
    assert len({(x["sensor_id"], x["ts_ms"]) for x in scores}) == len(scores)


def _models(tmp_path, *artifacts):
    """A models folder holding copies of the given artifacts; `latest` names the first."""
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    paths = []
    for a in artifacts:
        paths.append(Path(shutil.copytree(a, folder / Path(a).name)))
    art.point_latest(paths[0])
    return folder, paths


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _offline_state(artifact, ring_values, mean, std):
    """One slot, no XLA: the ring's readings stepped one by one from zero through ``artifact``."""
    from worker.core.engine import SlotEngine

    m = artifact.manifest
    eng = SlotEngine(artifact.model.get_weights(), m.n_features, m.units, slots=1, jit_compile=False)
    for v in ring_values:
        eng.step(((np.asarray(v, np.float64) - mean) / std).astype(np.float32).reshape(1, 1, -1), np.array([True]))
    return eng.read_state(np.array([0]))[0]


def test_a_new_latest_is_taken_over_while_running_and_rolled_back(kafka_broker, artifact_1f, artifact_1f_b, tmp_path):
    from worker.checkpointing.store import CheckpointStore
    from worker.core.handover import row_versions

    folder, (path_a, path_b) = _models(tmp_path, artifact_1f, artifact_1f_b)
    a = art.load(folder)
    b = art.load(path_b)
    n, steps = 8, 60
    ids = [f"s{i}" for i in range(n)]
    data = sine_fleet(n, steps, 1, seed=12)
    p1 = fleet_messages(data[:, :20], ids, ["temp"])
    p2 = fleet_messages(data, ids, ["temp"], start=20)
    topics = kafka_broker.topics("swap", partitions=2)
    s = worker_settings(kafka_broker, topics, folder, tmp_path / "ck",
                        handover={"watch_interval_s": 0.3, "chunk_sensors": 3})
    kafka_broker.produce(topics["readings"], p1, partition_by_index(2))
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(p1))
    art.point_latest(path_b)  # retrained: the worker takes it over by itself
    promoted = w.metrics.candidates.labels("promoted")._value.get
    _wait(lambda: promoted() == 1, 90, "the switch to model B")  # counted once the checkpoint after it is written
    assert w.worker.model_version == b.version
    det = w.worker.detector
    ring = det.table.recent
    for i, sid in enumerate(ids):  # nothing arrived meanwhile: the state is the ring stepped through B
        row = det.table.index[sid]
        want = _offline_state(b, data[i, max(0, 20 - ring) : 20].astype(np.float32), det.table.cols["mean"][row], det.table.cols["std"][row])
        assert np.max(np.abs(det.sensor_state(sid) - want)) < 1e-6, sid
    store = CheckpointStore(tmp_path / "ck", topics["readings"])
    for p in (0, 1):  # the checkpoint after the switch carries the new version, on every row
        ck = store.load(p)
        assert ck.model_version == b.version and set(row_versions(ck.columns, "?")) == {b.version}
    assert w.metrics.handover_warmed.labels("swap")._value.get() == n

    art.point_latest(path_a)  # roll back, while readings flow
    kafka_broker.produce(topics["readings"], p2, partition_by_index(2))
    _wait(lambda: promoted() == 2, 90, "the switch back to model A")
    w.wait_consumed(len(p1) + len(p2))
    assert w.worker.model_version == a.version
    assert w.stop() == 0
    scores = _scores(kafka_broker, topics["scores"], len(p1) + len(p2))
    keys = [(x["sensor_id"], x["ts_ms"]) for x in scores]
    assert len(keys) == len(set(keys)) == len(p1) + len(p2)  # every reading scored exactly once
    by_sensor: dict[str, list] = {}
    for x in sorted(scores, key=lambda x: x["ts_ms"]):
        by_sensor.setdefault(x["sensor_id"], []).append(x["model_version"])
    for sid, versions in by_sensor.items():  # A, then B, then A again: one model at a time, no gap
        runs = [v for k, v in enumerate(versions) if k == 0 or versions[k - 1] != v]
        assert runs in ([a.version, b.version, a.version], [a.version, b.version]), (sid, runs)
        assert versions[:20] == [a.version] * 20 and not any(x["warming_up"] for x in scores if x["sensor_id"] == sid and x["ts_ms"] > T0 + 20 * STEP_MS)
    assert not any(x["is_anomaly"] for x in scores[len(p1):]), "normal data flagged after a switch"


def test_a_broken_candidate_is_refused_and_the_current_model_goes_on(kafka_broker, artifact_1f, artifact_1f_b, tmp_path):
    folder, (path_a, path_b) = _models(tmp_path, artifact_1f, artifact_1f_b)
    (path_b / "model.keras").write_bytes(b"not a keras file")
    a = art.load(folder)
    ids = [f"s{i}" for i in range(4)]
    data = sine_fleet(4, 20, 1, seed=3)
    p1, p2 = fleet_messages(data[:, :10], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=10)
    topics = kafka_broker.topics("broken")
    s = worker_settings(kafka_broker, topics, folder, tmp_path / "ck", handover={"watch_interval_s": 3600})
    kafka_broker.produce(topics["readings"], p1)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(p1))
    art.point_latest(path_b)
    w.worker.watch.request_check()  # what SIGHUP does: read the pointer now, not in an hour
    _wait(lambda: w.metrics.candidate_refused._value.get() == 1, 60, "the refusal")
    kafka_broker.produce(topics["readings"], p2)
    w.wait_consumed(len(p1) + len(p2))
    for _ in range(3):  # more pointer reads: the same candidate is not tried again
        w.worker.watch.request_check()
        time.sleep(0.3)
    assert w.metrics.candidates.labels("refused_invalid")._value.get() == 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5).read().decode()
    assert "slotwatch_model_candidate_refused 1.0" in body
    assert f'candidate_stage="idle"' in body and f'model_version="{a.version}"' in body
    assert w.stop() == 0
    scores = _scores(kafka_broker, topics["scores"], len(p1) + len(p2))
    assert {x["model_version"] for x in scores} == {a.version} and len(scores) == len(p1) + len(p2)


def test_shadow_check_keeps_a_candidate_that_flags_far_more_out(kafka_broker, artifact_1f, artifact_1f_b, tmp_path):
    folder, (path_a, path_b) = _models(tmp_path, artifact_1f, artifact_1f_b)
    mf = json.loads((path_b / "manifest.json").read_text())
    mf["calibration"]["threshold"] = 0.5  # flags about half of all readings
    mf["model_version"] = "test-temp-16-trigger-happy"
    (path_b / "manifest.json").write_text(json.dumps(mf))
    a = art.load(folder)
    ids = [f"s{i}" for i in range(4)]
    data = sine_fleet(4, 60, 1, seed=3)
    p1, p2 = fleet_messages(data[:, :12], ids, ["temp"]), fleet_messages(data, ids, ["temp"], start=12)
    topics = kafka_broker.topics("shadow")
    s = worker_settings(kafka_broker, topics, folder, tmp_path / "ck",
                        handover={"watch_interval_s": 0.3, "shadow_readings": 80, "max_flag_rate_diff": 0.05})
    kafka_broker.produce(topics["readings"], p1)
    w = RunningWorker(s, artifact=a)
    w.wait_consumed(len(p1))
    art.point_latest(path_b)
    _wait(lambda: w.worker.watch.stage == "shadow", 60, "the candidate in shadow")
    for start in range(0, len(p2), 8):  # readings keep coming while it is in shadow
        kafka_broker.produce(topics["readings"], p2[start : start + 8])
        time.sleep(0.05)
    _wait(lambda: w.metrics.candidates.labels("refused_shadow")._value.get() == 1, 60, "the shadow refusal")
    rate = w.metrics.shadow_flag_rate.labels
    assert rate("candidate")._value.get() > 0.2 and rate("candidate")._value.get() - rate("current")._value.get() > 0.05
    assert w.metrics.shadow_readings._value.get() >= 80
    err = w.metrics.shadow_error.labels
    assert err("candidate")._sum.get() > 0 and err("current")._sum.get() > 0  # error quantiles of both
    w.wait_consumed(len(p1) + len(p2))
    assert w.worker.model_version == a.version and w.metrics.candidate_refused._value.get() == 1
    assert w.stop() == 0
    scores = _scores(kafka_broker, topics["scores"], len(p1) + len(p2))
    assert {x["model_version"] for x in scores} == {a.version}
