"""Handover benchmark: how long a ring must be, and how fast a fleet is handed to a new model.

In one run, on real trained models (``slotwatch train`` on a simulated fleet, twice with
different seeds: version A and its retrained successor B):

* **convergence** — for held-out readings of the training fleet, the state built from the
  last R readings only (the ring) against the state built from the whole history (600
  readings), under model B: the max |h/c| difference and, what scoring sees, the
  difference of the next reading's error (in residual units) — median, p95, p99, max.
  The ring default (``SLOTWATCH_MODEL__RECENT_READINGS``) is chosen from this.
* **while consuming** — the same handover done the worker's way, a chunk of sensors per
  poll-loop turn between polls of readings (the candidate stepping the readings of sensors
  already warmed): its wall time and the readings/s of the core meanwhile against before;
* **handover** — ``handover.hand_over`` of N sensors (default 100,000) with full rings from
  a detector of model A to one of model B (warmed state, scaling, scorer statistics), wall
  time and sensors/s; baseline in the same run: the core scoring the same number of
  readings (N x R) in ticks (``SlotDetector.process``), so ``handover / scoring`` says what
  the handover costs beyond stepping the readings.

Run: ``python -m benchmarks.handover [--sensors N] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import finish, md_table

FEATURES = ["temp", "rpm", "vib"]
RINGS = [2, 4, 8, 12, 16, 24, 32, 48, 64]


def _train(data: Path, out: Path, seed: int, epochs: int, units: int) -> Path:
    cmd = [sys.executable, "-m", "worker.cli", "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
           "--patience", str(epochs + 1), "--seed", str(seed), "--units", str(units), "--name", f"seed{seed}", "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    from worker.core.artifact import resolve

    return resolve(out)


def convergence(artifact, df, history: int, slots: int = 256) -> list[dict]:
    from worker.core.engine import SlotEngine
    from worker.core.handover import step_rings

    m = artifact.manifest
    ids = sorted(df.sensor_id.unique())
    x = np.stack([df[df.sensor_id == s][FEATURES].to_numpy()[: history + 1] for s in ids])  # (n, history+1, F)
    mean = np.stack([artifact.manifest.scaling.for_sensor(s)[0] for s in ids])[:, None, :]
    std = np.stack([artifact.manifest.scaling.for_sensor(s)[1] for s in ids])[:, None, :]
    xs = ((x - mean) / std).astype(np.float32)
    res = np.asarray(m.calibration.residual_std or [1.0] * m.n_features)
    eng = SlotEngine(artifact.model.get_weights(), m.n_features, m.units, slots)
    ones = np.ones(xs.shape[:2], bool)
    ref_state, ref_err = step_rings(eng, xs[:, :-1], ones[:, :-1], res)
    _, ref_next = step_rings(eng, xs, ones, res)
    rows = []
    for r in RINGS:
        st, _ = step_rings(eng, xs[:, -1 - r : -1], ones[:, :r], res)
        _, e = step_rings(eng, xs[:, -1 - r :], ones[:, : r + 1], res)
        d_err = np.abs(e[:, -1] - ref_next[:, -1])
        rows.append({"ring": r, "state_max_abs": float(np.abs(st - ref_state).max()),
                     "err_diff_median": float(np.median(d_err)), "err_diff_p95": float(np.quantile(d_err, 0.95)),
                     "err_diff_p99": float(np.quantile(d_err, 0.99)), "err_diff_max": float(d_err.max()),
                     "typical_error": float(np.median(ref_next[:, -1]))})
    return rows


def bench_handover(art_a, art_b, n: int, ring: int, slots: int) -> dict:
    from worker.core.detector import SlotDetector
    from worker.core.handover import hand_over
    from worker.core.readings import Reading

    f = art_a.manifest.n_features
    a = SlotDetector(art_a, slots=slots, recent=ring)
    rng = np.random.default_rng(0)
    ids = [f"bench-{i}" for i in range(n)]
    rows = a.table.add_many(ids, partition=0)
    c = a.table.cols
    c["mean"][rows], c["std"][rows] = 0.0, 1.0
    c["count"][rows] = c["total"][rows] = 1000
    c["recent"][rows] = rng.normal(size=(n, ring, f)).astype(np.float32)
    c["recent_ts"][rows] = np.arange(ring)[None, :] * 60_000
    c["last_ts"][rows] = (ring - 1) * 60_000
    c["state"][rows] = rng.normal(scale=0.1, size=(n, a.engine.state_size)).astype(np.float32)
    b = SlotDetector(art_b, slots=slots, recent=ring)
    t0 = time.perf_counter()
    hand_over(a, b)
    handover_s = time.perf_counter() - t0
    # baseline: scoring the same number of readings (n x ring) in full ticks, on a fresh detector
    base = SlotDetector(art_b, slots=slots, recent=ring)
    per_round = [Reading(f"base-{i}", 0, np.zeros(f)) for i in range(slots)]
    base.process(per_round)
    vals = rng.normal(size=(8, slots, f))
    chunk = [Reading(per_round[i].sensor_id, 60_000 * (t + 1), vals[t, i]) for t in range(8) for i in range(slots)]
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 3.0:
        base.process(chunk)
        for r in chunk:  # keep time moving forward (no late rejections)
            r.ts_ms += 8 * 60_000
        reps += 1
    per_reading = (time.perf_counter() - t0) / (reps * len(chunk))
    scoring_s = per_reading * n * ring
    return {"sensors": n, "ring": ring, "slots": slots, "units": art_b.manifest.units, "handover_s": handover_s,
            "sensors_per_s": n / handover_s, "baseline_scoring_same_readings_s": scoring_s,
            "ratio_handover_to_scoring": handover_s / scoring_s}


def bench_dip(art_a, art_b, n: int, ring: int, slots: int, chunk: int = 4096, poll: int = 2000) -> dict:
    """Readings/s of the core while a handover runs beside it, as the worker's loop does it.

    Each turn: one poll's readings scored by the current detector, the same readings of
    already-warmed sensors stepped by the candidate (unpublished), then ``chunk`` more
    sensors warmed.  Baseline: the same loop without a handover, in the same run.
    """
    from worker.core.detector import SlotDetector
    from worker.core.handover import hand_over
    from worker.core.readings import Reading

    f = art_a.manifest.n_features
    rng = np.random.default_rng(1)
    ids = [f"dip-{i}" for i in range(n)]
    a = SlotDetector(art_a, slots=slots, recent=ring, max_gap_ms=10**15)
    rows = a.table.add_many(ids, partition=0)
    c = a.table.cols
    c["std"][rows], c["count"][rows] = 1.0, 1000
    c["recent"][rows] = rng.normal(size=(n, ring, f)).astype(np.float32)
    c["recent_ts"][rows] = np.arange(ring)[None, :]
    c["last_ts"][rows] = ring
    clock = [ring + 1]

    def polls():
        while True:
            pick = rng.integers(0, n, poll)
            vals = rng.normal(size=(poll, f))
            clock[0] += 1
            yield [Reading(ids[k], clock[0], vals[j]) for j, k in enumerate(pick.tolist())]

    feed = polls()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        done += len(a.process(next(feed)))
    base_rate = done / (time.perf_counter() - t0)
    b = SlotDetector(art_b, slots=slots, recent=ring, max_gap_ms=10**15)  # built on the loader thread in the worker
    hand_over(a, b, np.arange(1))  # traces the handover function (the worker does it on the loader thread)
    t0, done, turns = time.perf_counter(), 0, 0
    while b.table.n_rows < a.table.n_rows:
        batch = next(feed)
        done += len(a.process(batch))
        mine = [r for r in batch if r.sensor_id in b.table.index]
        if mine:
            b.process(mine)
        index = b.table.index
        missing = np.fromiter((r for r, sid in enumerate(a.table.ids) if sid not in index), np.int64)
        hand_over(a, b, missing[:chunk])
        turns += 1
    took = time.perf_counter() - t0
    return {"sensors": n, "chunk": chunk, "poll": poll, "handover_with_consuming_s": took, "turns": turns,
            "readings_per_s_before": base_rate, "readings_per_s_during": done / took, "dip_ratio": (done / took) / base_rate}


def run(sensors: int = 100_000, quick: bool = False, ring: int = 16, slots: int = 256, epochs: int = 3, units: int = 32) -> dict:
    from training.simulate import simulate
    from worker.core import artifact as art
    from worker.datafile import write_table

    if quick:
        sensors, epochs = min(sensors, 10_000), 1
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        train_df = simulate(40, 1500, FEATURES, seed=1, anomaly_every=10**9)
        data = write_table(train_df, d / "fleet.parquet")
        t0 = time.perf_counter()
        pa = _train(data, d / "models-a", seed=0, epochs=epochs, units=units)
        pb = _train(data, d / "models-b", seed=1, epochs=epochs, units=units)
        train_s = time.perf_counter() - t0
        a, b = art.load(pa), art.load(pb)
        held = simulate(40, 700, FEATURES, seed=2, fleet_seed=1, start_step=1500, anomaly_every=10**9)
        conv = convergence(b, held, history=600)
        hand = bench_handover(a, b, sensors, ring, slots)
        dip = bench_dip(a, b, sensors, ring, slots)
    return {"settings": {"sensors": sensors, "ring": ring, "slots": slots, "epochs": epochs, "units": units,
                         "train_fleet": "simulate(40 sensors x 1500, temp/rpm/vib, no anomalies)", "train_s": train_s,
                         "models": [a.version, b.version]},
            "convergence": conv, "handover": hand, "while_consuming": dip}


def report(res: dict) -> str:
    cols = ["ring", "state_max_abs", "err_diff_median", "err_diff_p95", "err_diff_p99", "err_diff_max", "typical_error"]
    conv = md_table([{k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in r.items()} for r in res["convergence"]], cols)
    h, d = res["handover"], res["while_consuming"]
    return (f"## Handover (models {', '.join(res['settings']['models'])})\n\n"
            f"State from the last R readings vs from 600 readings (model B, held-out readings, 40 sensors):\n\n{conv}\n\n"
            f"Warm handover of {h['sensors']:,} sensors (ring {h['ring']}, B={h['slots']}, units {h['units']}): "
            f"**{h['handover_s']:.2f} s** ({h['sensors_per_s']:,.0f} sensors/s); baseline in the same run: the core "
            f"scoring the same {h['sensors'] * h['ring']:,} readings takes {h['baseline_scoring_same_readings_s']:.2f} s "
            f"(ratio {h['ratio_handover_to_scoring']:.2f}).\n\n"
            f"While consuming (the worker's loop: a poll of {d['poll']} readings, the candidate steps those of warmed "
            f"sensors, {d['chunk']} more sensors warmed): the handover of {d['sensors']:,} sensors took "
            f"**{d['handover_with_consuming_s']:.2f} s** in {d['turns']} turns; the core scored "
            f"{d['readings_per_s_during']:,.0f} readings/s meanwhile vs {d['readings_per_s_before']:,.0f} before "
            f"(**{d['dip_ratio']:.2f}x**).\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handover", description=__doc__.split("\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--sensors", type=int, default=100_000)
    p.add_argument("--ring", type=int, default=16)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    res = run(sensors=a.sensors, quick=a.quick, ring=a.ring)
    finish("handover", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
