"""SKAB (Skoltech Anomaly Benchmark): slotwatch on a real pump testbed, counted as SKAB's leaderboard counts.

One command: ``python -m benchmarks.skab [--skab PATH]`` (also run by ``python -m benchmarks.quality``).
The data is read where it lies (default ``../shared/data/skab`` beside the repository;
``SOURCE.md`` there gives its origin, licence and protocol) and never copied into the repo.

Fleet protocol (what a slotwatch user would do):

1. One model trained with the project's own training path (:func:`training.fleet.prepare_fleet`
   and :func:`training.train.train`, i.e. ``slotwatch train``) on the anomaly-free file (cut
   into 8 consecutive pieces, see :func:`split_normal`) plus the first 400 readings of every
   experiment, each experiment one sensor (its labeled readings, if any fall in the first
   400, are kept out of the loss as usual).
2. All 34 experiments replayed at once as 34 sensors through
   :class:`worker.core.detector.SlotDetector`, built as the worker builds it (the settings'
   defaults), reading t of every experiment in the same tick.
3. Point F1, FAR (% of normal test readings flagged) and MAR (% of anomalous test readings
   missed) over every experiment's readings after the 400th, all files pooled (SKAB's
   "outlier detection" leaderboard).

Per-experiment protocol (SKAB's own: a model per file trained on its first 400 readings) is
``--per-experiment``: 34 trainings, slow on 2 cores, so it trains ``--per-epochs`` epochs each.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

log = logging.getLogger("slotwatch.bench.skab")

FEATURES = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple", "Voltage",
            "Volume Flow RateRMS"]
TRAIN_READINGS = 400  # SKAB's protocol: the first 400 readings of each file are training data
NORMAL_PARTS = 8  # the anomaly-free file is trained on as this many consecutive pieces (see split_normal)
DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "skab"

#: SKAB README, "Outlier detection problem" (copied in SOURCE.md): (F1, FAR %, MAR %)
LEADERBOARD = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T-squared + Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "T-squared": (0.66, 19.21, 42.60),
    "LSTM-VAE": (0.56, 9.13, 55.03),
    "Vanilla LSTM": (0.54, 12.54, 59.53),
    "Vanilla AE": (0.39, 2.59, 75.15),
    "Isolation forest": (0.29, 2.56, 82.89),
}


class SkabMissing(FileNotFoundError):
    pass


def default_path() -> Path | None:
    """``../shared/data/skab`` relative to the repository, when it is there."""
    return DEFAULT_PATH if (DEFAULT_PATH / "anomaly-free" / "anomaly-free.csv").is_file() else None


def _read(path: Path, sensor_id: str):
    import pandas as pd

    d = pd.read_csv(path, sep=";")
    missing = [f for f in FEATURES if f not in d.columns]
    if missing or "datetime" not in d.columns:
        raise ValueError(f"{path}: not a SKAB file (lacks {missing or ['datetime']})")
    ts = pd.to_datetime(d["datetime"]).astype("datetime64[ms]").astype(np.int64).to_numpy()
    out = pd.DataFrame({"sensor_id": sensor_id, "ts_ms": ts})
    for f in FEATURES:
        out[f] = d[f].astype(np.float64).to_numpy()
    out["label"] = (d["anomaly"].fillna(0).to_numpy() > 0).astype(np.int8) if "anomaly" in d.columns else np.zeros(len(d), np.int8)
    return out


def load(path: Path | str) -> tuple["object", dict[str, "object"]]:
    """(the anomaly-free frame, {experiment name: frame}) with ``sensor_id``, ``ts_ms``, features, ``label``.

    Experiment names are ``<folder>-<file stem>`` (``valve1-0``, ``other-13``), sorted.
    """
    root = Path(path)
    normal = root / "anomaly-free" / "anomaly-free.csv"
    if not normal.is_file():
        raise SkabMissing(f"no SKAB data at {root} (expected anomaly-free/anomaly-free.csv; see SOURCE.md)")
    exps = {}
    for folder in ("valve1", "valve2", "other"):
        for f in sorted((root / folder).glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
            name = f"{folder}-{f.stem}"
            exps[name] = _read(f, name)
    if not exps:
        raise SkabMissing(f"no SKAB experiments under {root} (valve1/, valve2/, other/)")
    return _read(normal, "anomaly-free"), exps


def pooled_metrics(label: np.ndarray, flag: np.ndarray) -> dict:
    """Point F1, FAR % and MAR % as SKAB counts them (binary classification of all pooled test readings).

    >>> m = pooled_metrics(np.array([0, 0, 1, 1, 1, 0]), np.array([0, 1, 1, 1, 0, 0]))
    >>> round(m["f1"], 3), m["far"], round(m["mar"], 2)
    (0.667, 33.33, 33.33)
    """
    label = np.asarray(label, bool)
    flag = np.asarray(flag, bool)
    tp = int((label & flag).sum())
    fp = int((~label & flag).sum())
    fn = int((label & ~flag).sum())
    tn = int((~label & ~flag).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"f1": f1, "precision": p, "recall": r, "far": round(100.0 * fp / max(fp + tn, 1), 2),
            "mar": round(100.0 * fn / max(fn + tp, 1), 2), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def replay_together(detector, exps: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every experiment through ``detector`` at once: tick t holds reading t of every experiment.

    Returns per experiment its ``score``, ``flag``, ``warming``, ``error`` and ``accepted`` arrays.
    """
    from worker.core.readings import Reading, Rejection

    names = list(exps)
    vals = {n: exps[n][FEATURES].to_numpy(np.float64) for n in names}
    ts = {n: exps[n]["ts_ms"].to_numpy(np.int64) for n in names}
    out = {n: {k: np.zeros(len(exps[n]), dt) for k, dt in
               (("score", float), ("flag", bool), ("warming", bool), ("error", float), ("accepted", bool))} for n in names}
    t_max = max(len(v) for v in vals.values())
    step = 50  # readings per sensor in one process() call (the worker's polls hold several per sensor too)
    for a in range(0, t_max, step):
        batch, where = [], []
        for t in range(a, min(a + step, t_max)):
            for n in names:
                if t < len(vals[n]):
                    batch.append(Reading(n, int(ts[n][t]), vals[n][t], offset=t))
                    where.append((n, t))
        for (n, t), res in zip(where, detector.process(batch)):
            if isinstance(res, Rejection):
                raise RuntimeError(f"SKAB {n} reading {t} rejected: {res.reason} {res.detail}")
            o = out[n]
            o["score"][t], o["flag"][t], o["warming"][t], o["error"][t] = res.score, res.is_anomaly, res.warming_up, res.error
            o["accepted"][t] = bool(getattr(res, "accepted", False))
    return out


def make_detector(artifact_path, settings=None):
    """A :class:`SlotDetector` built as the worker builds it (``worker.app``), from the settings."""
    from worker.core import artifact as art
    from worker.core.factory import detector_from_settings
    from worker.settings import Settings

    return detector_from_settings(art.load(artifact_path), settings or Settings())


def train_model(frames: list, out: Path, name: str, cfg) -> Path:
    import pandas as pd

    from training.fleet import prepare_fleet
    from training.train import train

    df = pd.concat(frames, ignore_index=True)
    fleet = prepare_fleet(df, FEATURES, val_fraction=cfg.val_fraction, min_readings=cfg.min_readings)
    return train(fleet, cfg, out, name, [name])


def split_normal(normal, parts: int = NORMAL_PARTS) -> list:
    """The anomaly-free file as ``parts`` consecutive sensors (``anomaly-free-0``, ...).

    Training pads every sensor to the longest one and validates over whole sequences; one
    sensor of 9,405 readings next to 34 of 400 made every epoch ~20x slower for nothing.
    """
    n = len(normal)
    cuts = np.linspace(0, n, parts + 1).astype(int)
    return [normal.iloc[a:b].assign(sensor_id=f"anomaly-free-{i}") for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


def pooled_test_readings(exps: dict, results: dict) -> tuple[np.ndarray, np.ndarray]:
    lab = np.concatenate([exps[n]["label"].to_numpy()[TRAIN_READINGS:] for n in exps])
    flg = np.concatenate([results[n]["flag"][TRAIN_READINGS:] for n in exps])
    return lab, flg


GROUPS = ("valve1", "valve2", "other")


def per_group(exps: dict, results: dict) -> dict[str, dict]:
    """Pooled metrics of each experiment folder (``valve1``, ``valve2``, ``other``): a constant chosen on
    some groups is reported on the others (README "Detection quality")."""
    out = {}
    for g in GROUPS:
        sub = [n for n in exps if n.split("-")[0] == g]
        if sub:
            lab, flg = pooled_test_readings({n: exps[n] for n in sub}, results)
            out[g] = {k: v for k, v in pooled_metrics(lab, flg).items() if k in ("f1", "far", "mar", "tp", "fp", "fn", "tn")}
    return out


def per_file(exps: dict, results: dict) -> dict[str, dict]:
    return {n: {k: v for k, v in pooled_metrics(exps[n]["label"].to_numpy()[TRAIN_READINGS:],
                                                results[n]["flag"][TRAIN_READINGS:]).items() if k in ("f1", "far", "mar")}
            for n in exps}


def run_fleet(path: Path, epochs: int | None = None, progress: bool = False, seed: int = 0, model: Path | None = None,
              keep: Path | None = None) -> dict:
    """The fleet protocol (module doc); returns the result dict.

    ``model``: score with this artifact instead of training one (to compare scorers on one
    model); ``keep``: train into this models folder and keep it.
    """
    from training.train import TrainConfig

    normal, exps = load(path)
    cfg = TrainConfig(progress=progress, seed=seed)
    if epochs is not None:
        cfg.epochs = epochs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            frames = split_normal(normal) + [e.iloc[:TRAIN_READINGS] for e in exps.values()]
            model = train_model(frames, Path(keep or Path(tmp) / "models"), "skab-fleet", cfg)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        det = make_detector(model)
        results = replay_together(det, exps)
        replay_s = time.perf_counter() - t1
        from worker.core import artifact as art

        manifest = art.load(model).manifest
    lab, flg = pooled_test_readings(exps, results)
    m = pooled_metrics(lab, flg)
    accepted = int(sum(results[n]["accepted"][TRAIN_READINGS:].sum() for n in exps))
    return {
        "protocol": "fleet",
        "experiments": len(exps),
        "train_readings": int(len(normal) + sum(min(len(e), TRAIN_READINGS) for e in exps.values())),
        "test_readings": int(len(lab)),
        "test_anomalous": int(lab.sum()),
        "model_version": manifest.model_version,
        "threshold": manifest.calibration.threshold,
        "epochs_run": manifest.metrics.get("epochs_run"),
        "metrics": m,
        "accepted_readings": accepted,
        "per_group": per_group(exps, results),
        "per_file": per_file(exps, results),
        "seconds": {"train": round(train_s, 1), "replay": round(replay_s, 1)},
    }


def run_per_experiment(path: Path, epochs: int = 5, progress: bool = False, seed: int = 0) -> dict:
    """SKAB's own protocol: one model per experiment, trained on its first 400 readings (``epochs`` each)."""
    from training.fleet import TrainingError
    from training.train import TrainConfig

    _, exps = load(path)
    cfg = TrainConfig(progress=progress, seed=seed, epochs=epochs, warmup=32)
    labs, flgs, untrainable = [], [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (n, e) in enumerate(exps.items()):
            labs.append(e["label"].to_numpy()[TRAIN_READINGS:])
            try:
                model = train_model([e.iloc[:TRAIN_READINGS]], Path(tmp) / n, n, cfg)
            except TrainingError as err:  # e.g. other-2: its anomaly covers the whole validation part
                log.warning("per-experiment %s: cannot train (%s); its test readings count as not flagged", n, err)
                untrainable.append(n)
                flgs.append(np.zeros(len(labs[-1]), bool))
                continue
            det = make_detector(model)
            res = replay_together(det, {n: e})
            flgs.append(res[n]["flag"][TRAIN_READINGS:])
            log.info("per-experiment %d/%d %s done (%.0f s so far)", i + 1, len(exps), n, time.perf_counter() - t0)
    m = pooled_metrics(np.concatenate(labs), np.concatenate(flgs))
    return {"protocol": "per-experiment", "epochs": epochs, "warmup": cfg.warmup, "metrics": m, "untrainable": untrainable,
            "seconds": round(time.perf_counter() - t0, 1)}


def report(res: dict) -> str:
    lines = ["## SKAB (real pump testbed), outlier detection, all test readings pooled", "",
             "| detector | F1 | FAR % | MAR % |", "|---|---|---|---|"]
    for key, title in (("fleet", "slotwatch, fleet protocol (one model, 34 sensors at once)"),
                       ("per_experiment", "slotwatch, per-experiment protocol")):
        r = res.get(key)
        if r:
            m = r["metrics"]
            extra = f" ({r['epochs']} epochs each)" if key == "per_experiment" else ""
            lines.append(f"| **{title}{extra}** | **{m['f1']:.3f}** | {m['far']:.2f} | {m['mar']:.2f} |")
    for name, (f1, far, mar) in LEADERBOARD.items():
        lines.append(f"| {name} (published) | {f1:.2f} | {far:.2f} | {mar:.2f} |")
    f = res.get("fleet")
    if f and f.get("per_group"):
        lines += ["", "Fleet protocol per experiment group: " + "; ".join(
            f"{g} F1 {m['f1']:.3f}, FAR {m['far']:.2f}%, MAR {m['mar']:.2f}%" for g, m in f["per_group"].items()) + "."]
    if f:
        lines += ["", f"Fleet protocol: {f['test_readings']:,} test readings ({f['test_anomalous']:,} anomalous) of "
                      f"{f['experiments']} experiments; model {f['model_version']} trained on {f['train_readings']:,} readings "
                      f"({f['epochs_run']} epochs), threshold {f['threshold']:.15g}; {f['accepted_readings']} test readings "
                      f"accepted as a new normal; times (s) {f['seconds']}."]
    return "\n".join(lines) + "\n"


def run(path: Path | None, per_experiment: bool = False, epochs: int | None = None, per_epochs: int = 5,
        progress: bool = False, model: Path | None = None, keep: Path | None = None) -> dict | None:
    """Both protocols (the second if asked); ``None`` with a logged message when the data is absent."""
    path = Path(path) if path is not None else default_path()
    if path is None or not (path / "anomaly-free" / "anomaly-free.csv").is_file():
        log.warning("SKAB skipped: no data at %s (give --skab PATH; see the SKAB SOURCE.md for where it comes from)",
                    path or DEFAULT_PATH)
        return None
    res: dict = {"path": str(path), "fleet": run_fleet(path, epochs=epochs, progress=progress, model=model, keep=keep)}
    log.info("SKAB fleet protocol: F1 %.3f, FAR %.2f%%, MAR %.2f%%", res["fleet"]["metrics"]["f1"],
             res["fleet"]["metrics"]["far"], res["fleet"]["metrics"]["mar"])
    if per_experiment:
        res["per_experiment"] = run_per_experiment(path, epochs=per_epochs, progress=progress)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skab", type=Path, default=None, help=f"SKAB data folder (default {DEFAULT_PATH} when present)")
    p.add_argument("--skab-epochs", type=int, default=None, help="maximum training epochs of the fleet model (default: slotwatch train's)")
    p.add_argument("--skab-model", type=Path, default=None, help="score with this artifact instead of training the fleet model")
    p.add_argument("--skab-keep", type=Path, default=None, help="train the fleet model into this models folder and keep it")
    p.add_argument("--per-experiment", action="store_true", help="also SKAB's own protocol: a model per file (34 trainings; slow)")
    p.add_argument("--per-epochs", type=int, default=5, help="epochs per model in --per-experiment (default 5)")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import finish
    from worker.logs import setup_logging
    from worker.tf_threads import apply_tf_threads

    from benchmarks.common import add_results_option

    p = argparse.ArgumentParser(prog="python -m benchmarks.skab", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    add_results_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    setup_logging(level="INFO")
    apply_tf_threads()
    res = run(args.skab, per_experiment=args.per_experiment, epochs=args.skab_epochs, per_epochs=args.per_epochs,
              progress=not args.no_progress, model=args.skab_model, keep=args.skab_keep)
    if res is None:
        print("SKAB skipped: data not found (give --skab PATH)")
        return 0
    finish("skab", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
