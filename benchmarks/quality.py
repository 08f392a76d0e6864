"""Detection quality: slotwatch vs. a rolling z-score and an LSTM autoencoder, on fleets training never saw.

One command: ``python -m benchmarks.quality`` (``--quick`` for a smaller run).

1. Simulate a training fleet (``slotwatch simulate``, seed 1) and train a model on it
   (``slotwatch train`` defaults).
2. Simulate two labeled test sets:

   * **new fleet** — other sensors (seed 2): their scaling is learned online during
     warm-up, the harder case;
   * **same fleet, later** — the training sensors' future with new noise, regimes and
     anomalies (fleet seed 1, seed 3, starting where training data ended).

3. Evaluate slotwatch through the core (``slotwatch evaluate``) and both baselines, fitted
   and calibrated on the same training file by the same rule (the threshold flags at most
   1e-4 of the held-out normal readings), on the same test sets in the same run.

Writes ``<results>/<machine>-<date>-quality.json`` and ``.md`` (``--results``, default ``bench-results/``; keeps the
evaluation reports with their plots under ``<results>/quality-reports/``).
Quality bar (issue 3): window-level F1 >= 0.9 and median detection delay <= 5 readings on
the new fleet, better than both baselines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import result_path, results_dir, write_results

FEATURES = ["temp", "rpm", "vib"]


def run(quick: bool = False, progress: bool = True, keep_reports: bool = True, seeds: tuple[int, int, int] = (1, 2, 3),
        baselines: bool = True) -> dict:
    """Train on fleet ``seeds[0]``; test on a new fleet ``seeds[1]`` and on the same fleet later (``seeds[2]``)."""
    from training.baselines import Baselines
    from training.evaluate import evaluate
    from training.fleet import prepare_fleet
    from training.simulate import simulate, windows
    from training.train import TrainConfig, load_files, train
    from worker.datafile import write_table

    sizes = dict(train=(16, 3000), new=(12, 2000), same=(16, 2000)) if quick else dict(train=(32, 5000), new=(24, 3000), same=(32, 3000))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s, t = sizes["train"]
        train_file = write_table(simulate(s, t, FEATURES, seed=seeds[0]), d / "fleet-train.parquet")
        tests = {
            "new fleet": simulate(*sizes["new"], FEATURES, seed=seeds[1]),
            "same fleet, later": simulate(*sizes["same"], FEATURES, seed=seeds[2], fleet_seed=seeds[0], start_step=t),
        }
        files = {k: write_table(v, d / f"test-{i}.parquet") for i, (k, v) in enumerate(tests.items())}
        cfg = TrainConfig(progress=progress, epochs=10 if quick else TrainConfig.epochs)
        df, feats = load_files([train_file], FEATURES)
        fleet = prepare_fleet(df, feats, val_fraction=cfg.val_fraction)
        t1 = time.perf_counter()
        model = train(fleet, cfg, d / "models", "fleet-train", [str(train_file.name)])
        train_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        bl = Baselines(feats, ae_epochs=6 if quick else 12).fit(df.assign(ts=df["ts_ms"]), progress=progress) if baselines else None
        baseline_fit_s = time.perf_counter() - t1
        results = {}
        for name, path in files.items():
            rep = d / "reports" / name.replace(" ", "-").replace(",", "")
            summ = evaluate(model, path, rep, baselines=bl, plots=4, progress=progress)
            results[name] = {
                "readings": summ["readings"],
                "sensors": summ["sensors"],
                "windows": int(len(windows(tests[name]))),
                "threshold": summ["threshold"],
                "detectors": summ["detectors"],
            }
            if keep_reports:
                dest = results_dir() / "quality-reports" / rep.name
                shutil.rmtree(dest, ignore_errors=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(rep, dest, ignore=shutil.ignore_patterns("scores.parquet"))
        from worker.core import artifact as art

        manifest = art.load(model).manifest
    new = results["new fleet"]["detectors"]
    ours = new["slotwatch"]
    best_baseline = max([v["window_f1"] for k, v in new.items() if k != "slotwatch"] or [0.0])
    return {
        "settings": {
            "quick": quick, "seeds": list(seeds), "baselines": baselines, "features": FEATURES, "train": sizes["train"], "new_fleet": sizes["new"], "same_fleet": sizes["same"],
            "mode": manifest.training.get("mode"), "units": manifest.units, "jitter": cfg.jitter, "warmup": cfg.warmup,
            "false_alarm_rate": cfg.false_alarm_rate, "model_version": manifest.model_version,
            "epochs_run": manifest.metrics.get("epochs_run"),
        },
        "seconds": {"train": round(train_s, 1), "baselines_fit": round(baseline_fit_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "results": results,
        "targets": {
            "window_f1_new_fleet": {"target": 0.9, "measured": ours["window_f1"], "met": ours["window_f1"] >= 0.9},
            "f1_vs_best_baseline": {"target": 1.0, "measured": ours["window_f1"] / max(best_baseline, 1e-9),
                                    "met": ours["window_f1"] > best_baseline},
        },
        "bar_met": bool(ours["window_f1"] >= 0.9 and ours["median_delay"] is not None and ours["median_delay"] <= 5
                        and ours["window_f1"] > best_baseline),
    }


def report(res: dict) -> str:
    from training.evaluate import kinds_md, table_md

    st = res["settings"]
    lines = [f"## Detection quality (model {st['model_version']}, mode {st['mode']}, units {st['units']})", ""]
    for name, r in res["results"].items():
        lines += [f"### {name}: {r['readings']:,} readings of {r['sensors']} sensors, {r['windows']} labeled anomaly windows", "",
                  table_md(r["detectors"]), "", kinds_md(r["detectors"]), ""]
    lines.append(f"Quality bar (new fleet: window F1 >= 0.9, median delay <= 5, better than both baselines): "
                 f"{'met' if res['bar_met'] else 'NOT met'}.")
    lines.append(f"Train {st['train'][0]} sensors x {st['train'][1]} readings; times (s): {res['seconds']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--quick", action="store_true", help="smaller fleets (a few minutes)")
    p.add_argument("--seeds", default="1,2,3", help="training fleet, new fleet, same-fleet-later seeds (default 1,2,3)")
    p.add_argument("--no-baselines", action="store_true", help="slotwatch only (faster; no comparison)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    seeds = tuple(int(x) for x in args.seeds.split(","))
    if len(seeds) != 3:
        p.error("--seeds needs three numbers")
    from worker.logs import setup_logging
    from worker.tf_threads import apply_tf_threads

    setup_logging(level="INFO")
    apply_tf_threads()
    default = seeds == (1, 2, 3) and not args.no_baselines
    res = run(quick=args.quick, progress=not args.no_progress, seeds=seeds, baselines=not args.no_baselines, keep_reports=default)
    suite = "quality" if default else f"quality-seeds-{'-'.join(map(str, seeds))}"
    path = write_results(suite, res)
    md = report(res)
    result_path(suite, "md").write_text(md)
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
