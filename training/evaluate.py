"""``slotwatch evaluate``: replay labeled readings through the scoring core and measure detection.

The readings go through :func:`worker.replay.replay_frame` and a
:class:`~worker.core.detector.SlotDetector` — the code the worker runs — so the numbers
are those of production.  Metrics (:mod:`training.metrics`): precision/recall/F1 per
point and per anomaly window, detection delay in readings, false alarms per 1,000
readings, recall per anomaly kind when the data says the kind (``slotwatch simulate``).

With ``--baselines TRAIN_FILE`` the two baselines of :mod:`training.baselines` (rolling
z-score, LSTM autoencoder) are fitted on that file and scored on the same data in the
same run.

Writes to ``--report``: ``summary.json``, ``report.md`` (the table and the pictures),
``scores.parquet`` (every reading's score) and ``sensor-<id>.png`` for a few sensors.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


HELP = "replay labeled data through the scoring core: precision/recall/F1, detection delay, false alarms, plots"

log = logging.getLogger("slotwatch.evaluate")

SUMMARY_KEYS = ("window_f1", "window_precision", "window_recall", "median_delay", "false_alarms_per_1000",
                "point_precision", "point_recall", "point_f1")


def score_with_core(artifact, df, features: list[str], settings=None, chunk: int = 2000, progress: bool = False, **overrides):
    """The scored frame of ``df`` (from :func:`worker.datafile.load_readings`) by the worker's core, built as
    the worker builds it from ``settings`` (default: the settings' defaults); ``overrides`` e.g. ``slots``."""
    from worker.core.factory import detector_from_settings
    from worker.replay import replay_frame

    if settings is None:
        from worker.settings import Settings

        settings = Settings()
    det = detector_from_settings(artifact, settings, **overrides)
    out = replay_frame(det, df, features, chunk=chunk, progress=progress)
    if "anomaly_kind" in df.columns:
        out["anomaly_kind"] = df["anomaly_kind"].to_numpy()
    return out, det


def plot_sensors(scored, features: list[str], threshold: float, out_dir: Path, sensors: list[str], title: str = "") -> list[Path]:
    from training.report import series_plot

    paths = []
    for sid in sensors:
        g = scored[scored["sensor_id"] == sid].sort_values("ts", kind="stable")
        exp = g[[f"expected_{f}" for f in features]].to_numpy()
        p = out_dir / f"sensor-{sid}.png"
        series_plot(p, f"{sid} {title}".strip(), g["ts"].to_numpy(), g[features].to_numpy(), exp, features,
                    g["score"].fillna(0).to_numpy(), threshold, flag=g["is_anomaly"].to_numpy(),
                    label=g["label"].to_numpy() if "label" in g else None, warming=g["warming_up"].to_numpy())
        paths.append(p)
    return paths


def pick_sensors(per: dict[str, dict], n: int) -> list[str]:
    """Sensors worth a picture: the ones with missed windows or false alarms first, then the rest."""
    def badness(item):
        sid, r = item
        missed = sum(not w["detected"] for w in r["windows"])
        false = sum(e["false"] for e in r["events"])
        return (-(missed + false), sid)

    return [sid for sid, _ in sorted(per.items(), key=badness)[:n]]


def table_md(rows: dict[str, dict]) -> str:
    """A Markdown table of detectors (rows) and the main metrics.

    >>> print(table_md({"m": {"window_f1": 0.9, "window_precision": 1.0, "window_recall": 0.82, "median_delay": 2.0,
    ...                       "false_alarms_per_1000": 0.1, "point_precision": 0.5, "point_recall": 0.4, "point_f1": 0.44}}))
    | detector | window F1 | window precision | window recall | median delay | false alarms / 1000 | point precision | point recall | point F1 |
    |---|---|---|---|---|---|---|---|---|
    | m | 0.900 | 1.000 | 0.820 | 2.0 | 0.10 | 0.500 | 0.400 | 0.440 |
    """
    head = "| detector | window F1 | window precision | window recall | median delay | false alarms / 1000 | point precision | point recall | point F1 |"
    lines = [head, "|" + "---|" * 9]
    for name, s in rows.items():
        d = s.get("median_delay")
        lines.append(
            f"| {name} | {s['window_f1']:.3f} | {s['window_precision']:.3f} | {s['window_recall']:.3f} | "
            f"{'—' if d is None else f'{d:.1f}'} | {s['false_alarms_per_1000']:.2f} | {s['point_precision']:.3f} | "
            f"{s['point_recall']:.3f} | {s['point_f1']:.3f} |"
        )
    return "\n".join(lines)


def kinds_md(rows: dict[str, dict]) -> str:
    """Recall (and median delay) per anomaly kind, one column per detector."""
    kinds = sorted({k for s in rows.values() for k in s.get("by_kind", {})})
    if not kinds:
        return ""
    lines = ["| kind | windows | " + " | ".join(f"{n} recall (delay)" for n in rows) + " |", "|" + "---|" * (len(rows) + 2)]
    for k in kinds:
        first = next(iter(rows.values()))["by_kind"].get(k, {})
        cells = []
        for s in rows.values():
            v = s["by_kind"].get(k)
            if v is None:
                cells.append("—")
            else:
                d = v["median_delay"]
                cells.append(f"{v['recall']:.2f} ({'—' if d is None else f'{d:.0f}'})")
        lines.append(f"| {k} | {first.get('windows', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(model_path, data_path, report_dir, *, baselines_train=None, baselines=None, slots: int = 256, plots: int = 6,
             progress: bool = True, threshold: float | None = None, settings=None) -> dict:
    """The whole evaluation; returns the summary (also written to ``report_dir/summary.json``).

    Baselines: fitted on ``baselines_train`` (a file), or ``baselines`` already fitted
    (:class:`training.baselines.Baselines`).
    """
    import time

    from training.metrics import frame_scores
    from worker.core import artifact as art
    from worker.datafile import load_readings, write_table
    from worker.fmt import fmt_threshold

    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    a = art.load(model_path)
    feats = a.manifest.features
    df, feats = load_readings(data_path, feats)
    if "label" not in df.columns:
        raise ValueError(f"{data_path}: no label column; evaluation needs labeled anomaly windows (see `slotwatch simulate`)")
    kw = {"slots": slots}
    if threshold is not None:
        kw["threshold"] = threshold
    t0 = time.monotonic()
    scored, det = score_with_core(a, df, feats, settings, progress=progress, **kw)
    secs = time.monotonic() - t0
    summ, per = frame_scores(scored)
    results = {"slotwatch": summ}
    log.info("slotwatch %s: window F1 %.3f (P %.3f, R %.3f), median delay %s, %.2f false alarms / 1000 readings",
             a.version, summ["window_f1"], summ["window_precision"], summ["window_recall"], summ["median_delay"],
             summ["false_alarms_per_1000"])
    if baselines is None and baselines_train is not None:
        from training.baselines import Baselines

        train_df, _ = load_readings(baselines_train, feats)
        baselines = Baselines(feats).fit(train_df, progress=progress)
    if baselines is not None:
        for name, flags in baselines.flags(df).items():
            s2, _ = frame_scores(df.assign(ts=df["ts_ms"], is_anomaly=flags))
            results[name] = s2
            log.info("%s: window F1 %.3f (P %.3f, R %.3f), median delay %s, %.2f false alarms / 1000 readings", name,
                     s2["window_f1"], s2["window_precision"], s2["window_recall"], s2["median_delay"], s2["false_alarms_per_1000"])
    write_table(scored, report / "scores.parquet")
    pics = plot_sensors(scored, feats, det.threshold, report, pick_sensors(per, plots), a.version) if plots else []
    summary = {
        "model_version": a.version,
        "model_path": str(a.path),
        "data": str(data_path),
        "readings": int(len(df)),
        "sensors": int(df["sensor_id"].nunique()),
        "threshold": det.threshold,
        "slots": slots,
        "replay_seconds": round(secs, 2),
        "detectors": results,
    }
    (report / "summary.json").write_text(json.dumps(summary, indent=2))
    md = [f"# Evaluation of {a.version}", "", f"Data: `{data_path}` — {summary['readings']} readings of "
          f"{summary['sensors']} sensors, {summ['windows']} labeled anomaly windows. Threshold {fmt_threshold(det.threshold)}.",
          "", table_md(results), "", "## Recall by anomaly kind (median delay in readings)", "", kinds_md(results), "",
          "## Sensors", ""]
    md += [f"![{p.stem}]({p.name})" for p in pics]
    (report / "report.md").write_text("\n".join(md) + "\n")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worker.argtypes import non_negative_int, positive_int

    p.add_argument("--model", required=True, type=Path, help="artifact directory (or a folder with a `latest` pointer)")
    p.add_argument("--data", required=True, type=Path, help="labeled readings (CSV/Parquet with a label column)")
    p.add_argument("--report", required=True, type=Path, help="folder for summary.json, report.md, scores and PNGs")
    p.add_argument("--baselines", type=Path, default=None, metavar="TRAIN_FILE",
                   help="also fit the rolling z-score and LSTM autoencoder baselines on TRAIN_FILE and evaluate them")
    p.add_argument("--slots", type=positive_int, default=None, help="batch slots B (default: SLOTWATCH_MODEL__SLOTS)")
    p.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold")
    p.add_argument("--plots", type=non_negative_int, default=6, help="sensors to draw (default 6; 0 = none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either when stderr is not a terminal)")


def main(args: argparse.Namespace) -> int:
    from worker.core.artifact import ArtifactError
    from worker.datafile import DataFileError
    from worker.logs import setup_logging
    from worker.settings import Settings
    from worker.progress import want_progress
    from worker import startup

    settings = Settings.load()
    setup_logging(settings.log)
    try:
        startup.begin()
    except startup.StartupError as e:
        log.error("%s", e)
        return 2
    startup.loaded()
    try:
        s = evaluate(args.model, args.data, args.report, baselines_train=args.baselines, slots=args.slots or settings.model.slots,
                     plots=args.plots, progress=want_progress(not args.no_progress), threshold=args.threshold, settings=settings)
    except ArtifactError as e:
        from worker.exits import model_error

        log.error("%s", model_error(e, "--model"))
        return 2
    except (DataFileError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("report: %s", Path(args.report) / "report.md")
    print(table_md(s["detectors"]))
    return 0
