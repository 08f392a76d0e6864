"""Engine benchmark: readings/s of the scoring core against what a user would do instead.

For each batch size B and LSTM width, in one run:

* **core** — :class:`SlotDetector.process` on full ticks (routing, scaling, the compiled
  step, scoring, result objects), B sensors with one reading each per tick, fed in
  poll-sized chunks;
* **step** — the compiled step alone on the same shapes, so ``around / step`` says what
  the Python around it costs;
* **(a) predict per reading** — ``model.predict`` on a batch-1 stateful model, once per
  reading (the pattern in the seed articles);
* **(b) stateless window** — a stateless copy of the network re-scoring the last 64
  readings for every reading, batched 256 windows per compiled call; timed alone and again
  interleaved with each core configuration of the same width (the ratios use the stronger);
* **columnar** — :meth:`SlotDetector.process_columns` on the same ticks (ReadingColumns in,
  ScoreColumns out), next to the per-reading path in the same run;
* **codec** — one poll (5,000 readings, 4 features) decoded by ``ReadingCodec.decode`` per
  message and by ``BatchCodec.decode_batch`` with each decoder; scores encoded by
  ``encode_score`` per score and ``encode_scores`` for the poll.

Run: ``python -m benchmarks.engine [--quick]`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import Timer, finish, md_table, result_path, targets_md


def _artifact(units: int, f: int):
    from worker.core.artifact import Artifact, Calibration, Manifest, Scaling, build_network

    net = build_network(f, [units], seed=0)
    m = Manifest(f"bench-u{units}", [f"x{i}" for i in range(f)], [units], Scaling([0.0] * f, [1.0] * f), Calibration())
    return Artifact(None, m, net)


def bench_core(slots: int, units: int, f: int = 1, min_seconds: float = 1.0, max_ticks: int = 400, repeats: int = 3,
               baseline=None) -> dict:
    """The core on full ticks, per-reading path (``process``: Reading objects in, Score objects out) and
    columnar path (``process_columns``: ReadingColumns in, ScoreColumns out), interleaved with the bare step
    and, when given, ``baseline`` (:func:`stateless_window_round`: readings/s of one round of the
    stateless baseline of the same width), so the ratios against it come from the same moments of the run."""
    from worker.core.columns import ReadingColumns
    from worker.core.detector import SlotDetector
    from worker.core.readings import Reading

    det = SlotDetector(_artifact(units, f), slots=slots)
    rng = np.random.default_rng(0)
    ids = [f"sensor-{i}" for i in range(slots)]

    def make(ticks: int, t0: int) -> list:
        vals = rng.normal(size=(ticks, slots, f))
        return [Reading(ids[s], (t0 + t) * 1000, vals[t, s]) for t in range(ticks) for s in range(slots)]

    def columns(readings: list) -> ReadingColumns:
        return ReadingColumns.build([r.sensor_id for r in readings], [r.ts_ms for r in readings],
                                    np.array([r.values for r in readings]), partition=-1, offset=-1)

    det.process(make(3, 0))  # trace, allocate, fill every slot
    # size the run from a probe so every config takes about min_seconds
    probe = make(3, 3)
    with Timer() as t:
        det.process(probe)
    ticks = int(np.clip(min_seconds / max(t.seconds / 3, 1e-6), 10, max_ticks))
    chunk = slots * max(4, -(-2000 // slots))  # whole ticks per poll-sized chunk
    x = np.zeros((slots, 1, f), np.float32)
    mask = np.ones(slots, bool)
    tick_s = col_s = step_s = float("inf")
    base_rate = 0.0
    t_next = 6
    for rep in range(repeats):  # best of N, paths and step interleaved: robust to a busy machine
        data = make(ticks, t_next)
        t_next += ticks
        ticks_before = det.stats.ticks
        with Timer() as t:
            for start in range(0, len(data), chunk):
                det.process(data[start : start + chunk])
        assert det.stats.ticks - ticks_before == ticks, "every tick should be full"
        tick_s = min(tick_s, t.seconds / ticks)
        polls = [columns(p) for p in (make(ticks, t_next)[s : s + chunk] for s in range(0, ticks * slots, chunk))]
        t_next += ticks
        ticks_before = det.stats.ticks
        with Timer() as t:
            for cols in polls:
                det.process_columns(cols)
        assert det.stats.ticks - ticks_before == ticks, "every tick should be full"
        col_s = min(col_s, t.seconds / ticks)
        with Timer() as t:
            for _ in range(ticks):
                det.engine.step(x, mask)
        step_s = min(step_s, t.seconds / ticks)
        if baseline is not None:
            base_rate = max(base_rate, baseline())
    return {
        "slots": slots,
        "units": units,
        "ticks": ticks,
        "core_readings_per_s": slots / tick_s,
        "columnar_readings_per_s": slots / col_s,
        "tick_us": tick_s * 1e6,
        "columnar_tick_us": col_s * 1e6,
        "step_us": step_s * 1e6,
        "around_us": (tick_s - step_s) * 1e6,
        "around_over_step": (tick_s - step_s) / step_s,
        "columnar_around_us": (col_s - step_s) * 1e6,
        "columnar_around_over_step": (col_s - step_s) / step_s,
        "stateless_readings_per_s": base_rate,  # side by side (0: not measured)
    }


def bench_codec(n: int = 5000, repeats: int = 5) -> list[dict]:
    """Microseconds per reading: decoding one poll into columns, and encoding its scores (same run)."""
    from worker.batch_codec import DECODERS, BatchCodec, best_decoder, encode_scores
    from worker.codec import ReadingCodec, encode_reading, encode_score
    from worker.core.columns import ScoreColumns

    feats = ["temp", "rpm", "vib", "load"]
    rng = np.random.default_rng(0)
    t0 = 1_795_168_800_000
    rows = []
    for fmt in ("epoch_ms", "iso"):
        from worker.core.readings import format_ts

        raws = [encode_reading(f"pump-{k % 500}", format_ts(t0 + k) if fmt == "iso" else t0 + k,
                               {f: float(v) for f, v in zip(feats, rng.normal(size=4))}) for k in range(n)]
        offs = list(range(n))
        codec = ReadingCodec(feats)
        cands = {"ReadingCodec.decode per message": lambda: [codec.decode(r, 0, o) for r, o in zip(raws, offs)]}
        for d in DECODERS:
            try:
                bc = BatchCodec(feats, decoder=d)
            except (AttributeError, TypeError):  # not installed
                continue
            cands[f"decode_batch ({d})"] = lambda bc=bc: bc.decode_batch(raws, 0, offs)
        for name, fn in cands.items():
            best = min(_timed(fn) for _ in range(repeats))
            rows.append({"what": f"decode {fmt}", "how": name, "us_per_reading": best / n * 1e6})
    # encoding: the scores of the last poll (as the detector would give them; the values do not matter for speed)
    cols, _ = BatchCodec(feats, decoder=best_decoder()).decode_batch(raws, 0, offs)
    sc = ScoreColumns.empty(cols, 4, 0.999)
    sc.score[:] = rng.uniform(size=n)
    sc.surprise[:], sc.error[:] = rng.uniform(0, 3, n), rng.uniform(0, 2, n)
    sc.expected[:], sc.feature_z[:] = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    idx = np.arange(n)
    objs = sc.to_objects()
    for name, fn in {"encode_score per score": lambda: [encode_score(o, feats, "v1") for o in objs],
                     "encode_scores (batch)": lambda: encode_scores(sc, idx, feats, "v1")}.items():
        best = min(_timed(fn) for _ in range(repeats))
        rows.append({"what": "encode score", "how": name, "us_per_reading": best / n * 1e6})
    for what in {r["what"] for r in rows}:
        base = next(r for r in rows if r["what"] == what)["us_per_reading"]
        for r in rows:
            if r["what"] == what:
                r["x_per_message"] = base / r["us_per_reading"]
    return rows


def _timed(fn) -> float:
    with Timer() as t:
        fn()
    return t.seconds


def bench_predict_per_reading(units: int, f: int = 1, n: int = 60) -> dict:
    from worker.core.artifact import build_network

    model = build_network(f, [units], batch_size=1, stateful=True, seed=0)
    x = np.zeros((1, 1, f), np.float32)
    model.predict(x, verbose=0)
    best = float("inf")
    for _ in range(3):
        with Timer() as t:
            for i in range(n):
                x[0, 0, 0] = np.sin(i)
                model.predict(x, verbose=0)
        best = min(best, t.seconds / n)
    return {"units": units, "calls": 3 * n, "readings_per_s": 1 / best, "ms_per_reading": best * 1e3}


def stateless_window_round(units: int, f: int = 1, window: int = 64, batch: int = 256, min_seconds: float = 0.3):
    """A function that runs the stateless baseline for about ``min_seconds`` and returns its readings/s.

    A stateless copy of the network re-scores the last ``window`` readings for every reading,
    ``batch`` windows per compiled call (the core's B), called the way the engine calls its step
    (:func:`worker.core.engine.concrete_caller`).  Not XLA-compiled: measured here, XLA made this
    graph slower (about 6,400 vs 11,700 readings/s at units 64), and the baseline should be the
    strongest of the two."""
    import tensorflow as tf

    from worker.core.artifact import build_network
    from worker.core.engine import concrete_caller

    model = build_network(f, [units], seed=0)
    call = concrete_caller(tf.function(lambda w: model(w, training=False)[:, -1, :]).get_concrete_function(
        tf.TensorSpec((batch, window, f), tf.float32)
    ))
    rng = np.random.default_rng(0)
    series = rng.normal(size=(batch, window + 400, f)).astype(np.float32)
    call(series[:, :window])
    state = {"calls": 0}

    def one_round() -> float:
        calls = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < min_seconds or calls < 5:
            k = (state["calls"] + calls) % 400
            w = series[:, k : k + window]  # every reading re-scores its last `window` readings
            call(np.ascontiguousarray(w)).numpy()
            calls += 1
        state["calls"] += calls
        return calls * batch / (time.perf_counter() - t0)

    one_round.calls = state  # type: ignore[attr-defined]
    return one_round


def bench_stateless_window(units: int, f: int = 1, window: int = 64, batch: int = 256, min_seconds: float = 1.0) -> dict:
    """The stateless baseline alone (best of 3 rounds)."""
    one_round = stateless_window_round(units, f, window, batch, min_seconds / 3)
    best = max(one_round() for _ in range(3))
    return {"units": units, "window": window, "batch": batch, "calls": one_round.calls["calls"], "readings_per_s": best}


def chart(rows: list[dict], base_a: dict, base_b: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = sorted({r["units"] for r in rows})
    slots = sorted({r["slots"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / len(units)
    for k, u in enumerate(units):
        ys = [next((r["core_readings_per_s"] for r in rows if r["units"] == u and r["slots"] == b), 0) for b in slots]
        xs = np.arange(len(slots)) + k * width
        ax.bar(xs, ys, width, label=f"slotwatch core, units {u}")
        ax.hlines(base_b[u]["readings_per_s"], xs[0] - width / 2, xs[-1] + width / 2, colors="gray", linestyles="--")
        ax.hlines(base_a[u]["readings_per_s"], xs[0] - width / 2, xs[-1] + width / 2, colors="red", linestyles=":")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(slots)) + width * (len(units) - 1) / 2)
    ax.set_xticklabels([f"B={b}" for b in slots])
    ax.set_ylabel("readings / s (log)")
    ax.set_title("Scoring core vs. baselines (dashed: stateless 64-window, dotted: predict per reading)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(quick: bool = False, progress: bool = True) -> dict:
    from tqdm import tqdm

    from worker.runtime import tune_gc

    tune_gc()  # as the worker does

    slots_grid = [64, 256, 1024] if quick else [64, 256, 1024, 4096]
    units_grid = [64] if quick else [32, 64, 128]
    min_s = 0.3 if quick else 1.0
    base_a, base_b, rows = {}, {}, []
    configs = [(b, u) for u in units_grid for b in slots_grid]
    bar = tqdm(total=len(configs) + 2 * len(units_grid), desc="engine bench", unit="cfg", disable=not progress)
    for u in units_grid:
        base_a[u] = bench_predict_per_reading(u, n=30 if quick else 60)
        bar.update()
        base_b[u] = bench_stateless_window(u, min_seconds=min_s)
        bar.update()
    rounds = {u: stateless_window_round(u, min_seconds=min_s / 3) for u in units_grid}
    for b, u in configs:
        r = bench_core(b, u, min_seconds=min_s, baseline=rounds[u])
        # against the baseline measured side by side with this config (and never a weaker one than alone)
        base = max(r["stateless_readings_per_s"], base_b[u]["readings_per_s"])
        r["stateless_readings_per_s"] = base
        r["x_predict_per_reading"] = r["core_readings_per_s"] / base_a[u]["readings_per_s"]
        r["x_stateless_window"] = r["core_readings_per_s"] / base
        r["columnar_x_stateless_window"] = r["columnar_readings_per_s"] / base
        rows.append(r)
        bar.set_postfix_str(f"B={b} u={u}: {r['core_readings_per_s']:,.0f}/s")
        bar.update()
    bar.close()
    targets = {}
    ref = next((r for r in rows if r["slots"] == 256 and r["units"] == 64), None)
    if ref:
        targets = {
            "x_predict_per_reading_at_B256_u64": {"target": 1000, "measured": ref["x_predict_per_reading"], "met": ref["x_predict_per_reading"] >= 1000},
            "x_stateless_window_at_B256_u64": {"target": 20, "measured": ref["x_stateless_window"], "met": ref["x_stateless_window"] >= 20},
            "around_over_step_at_B256_u64": {"target": 1.0, "measured": ref["around_over_step"], "met": ref["around_over_step"] <= 1.0},
            # issue 11: the columnar path
            "columnar_around_over_step_at_B256_u64": {"target": 0.5, "measured": ref["columnar_around_over_step"],
                                                      "met": ref["columnar_around_over_step"] <= 0.5},
            "columnar_x_stateless_window_at_B256_u64": {"target": 20, "measured": ref["columnar_x_stateless_window"],
                                                        "met": ref["columnar_x_stateless_window"] >= 20},
        }
    codec = bench_codec(2000 if quick else 5000)
    return {"settings": {"quick": quick, "features": 1, "window": 64}, "baseline_predict_per_reading": base_a,
            "baseline_stateless_window": base_b, "core": rows, "codec": codec, "targets": targets,
            "load_average": os.getloadavg()}


def report(res: dict) -> str:
    cols = ["slots", "units", "core_readings_per_s", "step_us", "around_us", "around_over_step", "x_predict_per_reading", "x_stateless_window"]
    ccols = ["slots", "units", "columnar_readings_per_s", "step_us", "columnar_around_us", "columnar_around_over_step",
             "stateless_readings_per_s", "columnar_x_stateless_window"]
    lines = ["## Engine: readings/s of the scoring core vs. baselines (same run)", "",
             f"Load average at the end: {', '.join(f'{x:.1f}' for x in res.get('load_average', ()))}", "",
             "Per-reading path (`process`: Reading objects in, Score objects out):", "", md_table(res["core"], cols), "",
             "Columnar path (`process_columns`: ReadingColumns in, ScoreColumns out), same run:", "",
             md_table(res["core"], ccols), ""]
    if res.get("codec"):
        lines += ["Codec, microseconds per reading (one poll, 4 features; x = against the per-message call):", "",
                  md_table(res["codec"], ["what", "how", "us_per_reading", "x_per_message"]), ""]
    lines.append("Baselines (readings/s): " + ", ".join(
        f"units {u}: predict per reading {res['baseline_predict_per_reading'][u]['readings_per_s']:.1f}, "
        f"stateless 64-window {res['baseline_stateless_window'][u]['readings_per_s']:,.0f}"
        for u in res["baseline_predict_per_reading"]))
    lines.append("")
    lines += targets_md(res.get("targets", {}))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--quick", action="store_true", help="a smaller grid (B up to 1024, units 64)")
    args = p.parse_args(argv)
    res = run(quick=args.quick)
    finish("engine", res, report(res))
    chart(res["core"], res["baseline_predict_per_reading"], res["baseline_stateless_window"], result_path("engine", "png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
