"""Detection quality: slotwatch vs. a rolling z-score and an LSTM autoencoder, on fleets training never saw.

One command: ``python -m benchmarks.quality`` (``--quick`` for a smaller run).  It first runs
the SKAB real-data benchmark (:mod:`benchmarks.skab`; ``--skab PATH``, default
``../shared/data/skab`` beside the repository, skipped with a message when absent;
``--skab-only``, ``--no-skab``).

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
        baselines: bool = True, keep: Path | None = None) -> dict:
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
        later = tests["same fleet, later"]
        shift = lasting_shift(model, later.assign(ts_ms=later["ts"]), FEATURES)  # simulate() gives ts in epoch ms
        if keep is not None:  # the model and the test sets, to compare scorers on them later
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(d, keep, ignore=shutil.ignore_patterns("reports"))
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
        "lasting_shift": shift,
        "targets": {
            "window_f1_new_fleet": {"target": 0.9, "measured": ours["window_f1"], "met": ours["window_f1"] >= 0.9},
            "f1_vs_best_baseline": {"target": 1.0, "measured": ours["window_f1"] / max(best_baseline, 1e-9),
                                    "met": ours["window_f1"] > best_baseline},
        },
        "bar_met": bool(ours["window_f1"] >= 0.9 and ours["median_delay"] is not None and ours["median_delay"] <= 5
                        and ours["window_f1"] > best_baseline),
    }


def lasting_shift(model, df, features: list[str], shift_std: float = 4.0, at: int = 1000, settings=None) -> dict:
    """A lasting level shift on every normal sensor of ``df``: how soon it is flagged, and when it is accepted.

    Each sensor's readings (label 0 only, the labeled anomalies dropped) get ``shift_std`` of
    its own standard deviation added to its first feature from reading ``at`` on, for good.
    Returns the median delay of the first flag (readings), the share of sensors flagged at
    the shift's first reading, the readings from the shift to acceptance (median, max) and the
    horizon, and the flags in the last 500 readings (after acceptance they should be gone).
    """
    import numpy as np

    from worker.core import artifact as art
    from worker.core.factory import detector_from_settings
    from worker.core.readings import Reading, Score
    from worker.settings import Settings

    s = settings or Settings()
    det = detector_from_settings(model if isinstance(model, art.Artifact) else art.load(model), s, slots=256)
    horizon = det.adapt.accept_after
    first, at_once, accepted, late_flags, n = [], 0, [], 0, 0
    for sid, g in df[df["label"] == 0].groupby("sensor_id", sort=True):
        v = g[features].to_numpy(np.float64).copy()
        if len(v) < at + horizon + 600:
            continue
        v[at:, 0] += shift_std * v[:at, 0].std()
        ts = g["ts_ms"].to_numpy()
        out = det.process([Reading(f"shift-{sid}", int(t), x) for t, x in zip(ts, v)])
        flag = np.array([o.is_anomaly for o in out if isinstance(o, Score)])
        acc = np.array([o.accepted for o in out if isinstance(o, Score)])
        n += 1
        hits = np.flatnonzero(flag[at:])
        if len(hits):
            first.append(int(hits[0]))
            at_once += int(hits[0] == 0)
        a = np.flatnonzero(acc[at:])
        if len(a):
            accepted.append(int(a[0]))
        late_flags += int(flag[-500:].sum())
    return {"sensors": n, "shift_std": shift_std, "horizon": horizon,
            "flagged_at_first_reading": at_once / max(n, 1),
            "median_first_flag_delay": float(np.median(first)) if first else None,
            "accepted_share": len(accepted) / max(n, 1),
            "median_readings_to_accept": float(np.median(accepted)) if accepted else None,
            "max_readings_to_accept": int(max(accepted)) if accepted else None,
            "flags_in_last_500_per_sensor": late_flags / max(n, 1)}


def report(res: dict) -> str:
    from training.evaluate import kinds_md, table_md

    st = res["settings"]
    lines = [f"## Detection quality (model {st['model_version']}, mode {st['mode']}, units {st['units']})", ""]
    for name, r in res["results"].items():
        lines += [f"### {name}: {r['readings']:,} readings of {r['sensors']} sensors, {r['windows']} labeled anomaly windows", "",
                  table_md(r["detectors"]), "", kinds_md(r["detectors"]), ""]
    lines.append(f"Quality bar (new fleet: window F1 >= 0.9, median delay <= 5, better than both baselines): "
                 f"{'met' if res['bar_met'] else 'NOT met'}.")
    sh = res.get("lasting_shift")
    if sh:
        lines.append(f"Lasting level shift (+{sh['shift_std']} std on the first feature of {sh['sensors']} sensors, for good): "
                     f"flagged at its first reading on {sh['flagged_at_first_reading']:.0%} of them (median delay "
                     f"{sh['median_first_flag_delay']}), accepted as the new normal on {sh['accepted_share']:.0%} after a median "
                     f"{sh['median_readings_to_accept']} (max {sh['max_readings_to_accept']}) readings, horizon {sh['horizon']}; "
                     f"{sh['flags_in_last_500_per_sensor']:.1f} flags per sensor in the last 500 readings.")
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
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the trained model and the simulated test sets in this folder (to re-score them with --rescore)")
    p.add_argument("--skab-only", action="store_true", help="only the SKAB real-data benchmark (benchmarks/skab.py)")
    p.add_argument("--no-skab", action="store_true", help="skip the SKAB real-data benchmark")
    from benchmarks import skab

    skab.add_arguments(p)
    args = p.parse_args(argv)
    seeds = tuple(int(x) for x in args.seeds.split(","))
    if len(seeds) != 3:
        p.error("--seeds needs three numbers")
    from worker.logs import setup_logging
    from worker.tf_threads import apply_tf_threads

    setup_logging(level="INFO")
    apply_tf_threads()
    if not args.no_skab:  # real data first (a few minutes); skipped with a message when the data is absent
        sres = skab.run(args.skab, per_experiment=args.per_experiment, epochs=args.skab_epochs, per_epochs=args.per_epochs,
                        progress=not args.no_progress, model=args.skab_model, keep=args.skab_keep)
        if sres is None:
            print("SKAB skipped: data not found (give --skab PATH)")
        else:
            from benchmarks.common import finish

            finish("skab", sres, skab.report(sres))
    if args.skab_only:
        return 0
    default = seeds == (1, 2, 3) and not args.no_baselines
    res = run(quick=args.quick, progress=not args.no_progress, seeds=seeds, baselines=not args.no_baselines, keep_reports=default,
              keep=args.keep)
    suite = "quality" if default else f"quality-seeds-{'-'.join(map(str, seeds))}"
    path = write_results(suite, res)
    md = report(res)
    result_path(suite, "md").write_text(md)
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
