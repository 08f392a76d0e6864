"""Pictures and summaries of training and evaluation runs (matplotlib, Agg backend; files only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worker.core.attribution import format_score


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: list[dict], best_epoch: int, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["loss"] for h in history], "o-", label="train loss")
    ax.plot(ep, [h["val_loss"] for h in history], "o-", label="validation loss")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled units)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def series_plot(path: Path, title: str, ts, values, expected, features: list[str], score, threshold: float,
                flag=None, label=None, warming=None) -> Path:
    """Values and expected values per feature, then the score with the threshold; labeled
    windows shaded red, flags marked."""
    plt = _plt()
    f_ = len(features)
    fig, axes = plt.subplots(f_ + 1, 1, figsize=(12, 2.0 * (f_ + 1)), sharex=True)
    t = np.asarray(ts)
    t = (t - t[0]) / 3_600_000.0 if len(t) else t
    lab_runs = []
    if label is not None:
        from training.metrics import runs

        lab_runs = runs(np.asarray(label) > 0)
    for k, ax in enumerate(axes[:-1]):
        ax.plot(t, values[:, k], lw=0.7, label="value")
        ax.plot(t, expected[:, k], lw=0.7, alpha=0.8, label="expected")
        if flag is not None and np.any(flag):
            fl = np.asarray(flag, bool)
            ax.plot(t[fl], values[fl, k], "r.", ms=3, label="flagged")
        ax.set_ylabel(features[k])
    ax = axes[-1]
    ax.plot(t, score, lw=0.7, color="k", label="score")
    ax.axhline(threshold, color="r", ls="--", lw=0.8, label=f"threshold {format_score(threshold)}")
    if warming is not None and np.any(warming):
        w = np.asarray(warming, bool)
        ax.fill_between(t, 0, 1, where=w, color="grey", alpha=0.15, step="mid", label="warming up")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("score")
    ax.set_xlabel("hours")
    for a in axes:
        for s, e in lab_runs:
            a.axvspan(t[s], t[min(e, len(t) - 1)], color="red", alpha=0.12, lw=0)
    axes[0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1].legend(loc="upper right", fontsize=7, ncol=3)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_training_report(out: Path, manifest, fleet, arrays: dict, n_sensors: int = 3, span: int = 600) -> Path:
    """``loss.png``, ``validation-<sensor>.png`` and ``report.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr = manifest.training
    loss_curve(tr.get("history", []), manifest.metrics.get("best_epoch", 0), out / "loss.png")
    thr = manifest.calibration.threshold
    for s in range(min(n_sensors, fleet.n_sensors)):
        a, b = int(fleet.val_start[s]), int(fleet.lengths[s])
        a = max(a, b - span)
        mean, std = fleet.mean[s], fleet.std[s]
        exp = arrays["expected"][s, a:b] * std + mean
        series_plot(out / f"validation-{fleet.ids[s]}.png", f"validation: {fleet.ids[s]} ({manifest.model_version})",
                    fleet.ts[s, a:b], fleet.raw[s, a:b], exp, fleet.features, arrays["score"][s, a:b], thr,
                    flag=arrays["flag"][s, a:b], label=fleet.label[s, a:b])
    (out / "report.json").write_text(json.dumps({"model_version": manifest.model_version, "metrics": manifest.metrics,
                                                 "calibration": manifest.to_json()["calibration"]}, indent=2))
    return out
