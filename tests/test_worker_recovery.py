"""Issue 10: a failure that still escapes the core (a bug) costs one dead letter, not the worker.

The fault is injected into the real detector of a real worker (real broker, real model): the
tick that holds one particular reading raises *after* it changed the state, the worst case.
The worker reloads its checkpoints, replays, isolates that reading (dead letter
``internal_error`` with the exception in ``detail``) and carries on; the final state equals
an uninterrupted run without that reading.  A checkpoint writer failing with something other
than OSError is handled like OSError.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.conftest import sine_fleet
from tests.worker_helpers import fleet_messages, final_states, reference_detector, worker_settings
from worker.codec import ReadingCodec
from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

POISON = 42.4242


def _run(worker):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("code", worker.run()), daemon=True)
    t.start()
    return t, box


def _wait(worker, n, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    m = worker.metrics
    while time.monotonic() < deadline:
        done = m.scored._value.get() + sum(m.rejected.labels(r)._value.get() for r in ("internal_error",))  # noqa: SLF001
        if done >= n and worker.applied.get(0, -1) >= n - 1:  # duplicates count too: also every offset applied
            return
        time.sleep(0.05)
    raise AssertionError("worker did not get through the stream")


def test_a_reading_that_makes_the_core_fail_is_isolated_and_nothing_else_changes(kafka_broker, kafka_client, artifact_1f, tmp_path):
    from worker.app import Worker

    ids = [f"s{i}" for i in range(4)]
    data = sine_fleet(4, 40, 1, seed=3)
    data[2, 25, 0] = POISON
    msgs = fleet_messages(data, ids, ["temp"])
    poison_offset = 25 * 4 + 2
    topics = kafka_broker.topics("recover", partitions=1)
    kafka_broker.produce(topics["readings"], msgs)
    s = worker_settings(kafka_broker, topics, artifact_1f, tmp_path / "ck", model={"slots": 4},
                        kafka={"max_poll_records": 37}, checkpoint={"interval_readings": 30, "interval_s": 30.0})
    a = art.load(artifact_1f)
    w = Worker(s, artifact=a)
    det = w.detector
    real_tick = det._tick
    failures = []

    def tick(chunk, idx, readings, out):
        real_tick(chunk, idx, readings, out)  # the state has moved on ...
        if any(readings[i].values[0] == POISON for i in idx):
            failures.append(len(idx))
            raise RuntimeError("injected fault after the state changed")  # ... and then it fails

    det._tick = tick
    real_save = w.store.save
    save_calls = []

    def save(ck):  # the 3rd checkpoint write fails with something that is not an OSError
        save_calls.append(ck.next_offset)
        if len(save_calls) == 3:
            raise ValueError("injected: encoding failed")
        return real_save(ck)

    w.store.save = save
    t, box = _run(w)
    _wait(w, len(msgs))
    m = w.metrics
    consumed, scored, skipped = m.consumed._value.get(), m.scored._value.get(), m.skipped._value.get()  # noqa: SLF001
    rejected = {r: m.rejected.labels(r)._value.get() for r in ("internal_error", "late")}  # noqa: SLF001
    w.request_stop()
    t.join(60)
    assert box.get("code") == 0
    assert failures and len(failures) >= 2  # the poll, then the reading alone
    assert m.rewinds._value.get() == len(failures)  # noqa: SLF001
    assert m.checkpoint_failures._value.get() >= 1  # noqa: SLF001
    assert rejected["internal_error"] >= 1 and rejected["late"] == 0
    assert consumed >= len(msgs) and consumed == scored + sum(
        m.rejected.labels(r)._value.get() for r in _reasons()) + skipped  # noqa: SLF001

    dead = kafka_broker.read_all(topics["dead"], expect=1, timeout=30)
    assert dead and {int(dict(r.headers)["source_offset"]) for r in dead} == {poison_offset}
    h = dict(dead[0].headers)
    assert h["reason"] == b"internal_error" and h["detail"].startswith(b"RuntimeError: injected fault")
    assert dead[0].value == msgs[poison_offset][1]

    # the final state equals an uninterrupted run without the poison reading; every other reading scored
    codec = ReadingCodec(["temp"])
    good = [codec.decode(v, 0, k) for k, (_, v) in enumerate(msgs) if k != poison_offset]
    ref, _ = reference_detector(a, s, good)
    states = final_states(tmp_path / "ck", topics["readings"])
    for sid in ids:
        np.testing.assert_allclose(states[sid][0], ref.sensor_state(sid), atol=1e-6, err_msg=sid)
        assert states[sid][2] == (39 if sid == "s2" else 40)
    recs = kafka_broker.read_all(topics["scores"], expect=None, timeout=60, idle=3.0)
    by_key: dict[int, set[bytes]] = {}
    for r in recs:
        by_key.setdefault(json.loads(r.value)["offset"], set()).add(r.value)
    assert set(by_key) == set(range(len(msgs))) - {poison_offset}
    assert all(len(v) == 1 for v in by_key.values()), "a duplicate after a rewind carries other bytes"


def _reasons():
    from worker.core.readings import REASONS

    return REASONS
