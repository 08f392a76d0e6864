"""Pictures and summaries of training and evaluation runs (matplotlib, Agg backend; files only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


#: largest surprise drawn: -log10(1 - score) of float64 scores ends near 16
MAX_SURPRISE = 16.0


def surprise(score) -> np.ndarray:
    """``-log10(1 - score)``: a score of 0.999 is 3, 0.99999995 about 7.3 (capped at 16).

    Scores crowd against 1, where a linear axis shows a solid band touching the threshold;
    on this scale each 9 after the point is one unit, so what crossed the threshold shows.

    >>> surprise([0.0, 0.9, 0.999, 1.0]).round(3).tolist()
    [0.0, 1.0, 3.0, 16.0]
    """
    from worker.core.attribution import surprise as of_tail  # the one definition (score messages, episodes)

    s = np.asarray(score, dtype=np.float64)
    return np.minimum(of_tail(1.0 - np.clip(np.where(np.isfinite(s), s, 0.0), 0.0, 1.0)), MAX_SURPRISE)


def interesting(counts, n: int) -> list[int]:
    """Indices of the ``n`` sensors most worth a picture: most flagged plus labeled readings
    first (ties: the earlier sensor); quiet sensors only to fill up.

    >>> interesting([0, 5, 0, 2, 9], 3)
    [4, 1, 3]
    >>> interesting([0, 0], 3)
    [0, 1]
    """
    c = np.asarray(counts, dtype=np.int64)
    order = sorted(range(len(c)), key=lambda i: (-int(c[i]), i))
    return order[:n]


def focus_span(marks: np.ndarray, lo: int, hi: int, span: int) -> tuple[int, int]:
    """A window of at most ``span`` rows of ``[lo, hi)`` that starts a little before the first
    marked row (flag or label), or the last ``span`` rows when nothing is marked.

    >>> m = np.zeros(1000, bool); m[700] = True
    >>> focus_span(m, 200, 1000, 400), focus_span(np.zeros(1000, bool), 200, 1000, 400)
    ((600, 1000), (600, 1000))
    >>> m[300] = True
    >>> focus_span(m, 200, 1000, 400)
    (200, 600)
    """
    hit = np.flatnonzero(marks[lo:hi])
    if hi - lo <= span:
        return lo, hi
    if not hit.size:
        return hi - span, hi
    a = max(lo, lo + int(hit[0]) - span // 4)
    b = min(hi, a + span)
    return b - span, b


def series_plot(path: Path, title: str, ts, values, expected, features: list[str], score, threshold: float,
                flag=None, label=None, warming=None) -> Path:
    """Values and expected values per feature, then the score as surprise (``-log10(1 - score)``)
    with the threshold; labeled windows shaded red, flags marked; legends right of the panels."""
    from matplotlib.patches import Patch

    from worker.fmt import fmt_threshold

    plt = _plt()
    f_ = len(features)
    fig, axes = plt.subplots(f_ + 1, 1, figsize=(12, 2.0 * (f_ + 1)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    t = np.asarray(ts)
    t = (t - t[0]) / 3_600_000.0 if len(t) else t
    lab_runs = []
    if label is not None:
        from training.metrics import runs

        lab_runs = runs(np.asarray(label) > 0)
    fl = np.asarray(flag, bool) if flag is not None else np.zeros(len(t), bool)
    for k, ax in enumerate(axes[:-1]):
        ax.plot(t, values[:, k], lw=0.8, color="tab:blue", zorder=2, label="value")
        # drawn above the value, thinner and dashed: where the two agree both stay visible
        ax.plot(t, expected[:, k], lw=0.9, ls=(0, (4, 2)), color="tab:orange", zorder=3, label="expected")
        if fl.any():
            ax.plot(t[fl], values[fl, k], "o", ms=3, color="red", mfc="none", mew=0.8, zorder=4, label="flagged")
        ax.set_ylabel(features[k])
    ax = axes[-1]
    sup = surprise(score)
    thr_s = float(surprise([threshold])[0])
    ax.plot(t, sup, lw=0.7, color="k", label="surprise")
    if fl.any():
        ax.plot(t[fl], sup[fl], "o", ms=3, color="red", mfc="none", mew=0.8, label="flagged")
    ax.axhline(thr_s, color="r", ls="--", lw=0.9, label=f"threshold {fmt_threshold(threshold)}")
    top = max(thr_s * 1.3, float(np.max(sup)) * 1.05 if sup.size else 0.0, 1.0)
    if warming is not None and np.any(warming):
        w = np.asarray(warming, bool)
        ax.fill_between(t, 0, top, where=w, color="grey", alpha=0.15, step="mid", label="warming up")
    ax.set_ylim(0, top)
    ax.set_ylabel("-log10(1 - score)")
    ax.set_xlabel("hours")
    for a in axes:
        for s, e in lab_runs:
            a.axvspan(t[s], t[min(e, len(t) - 1)], color="red", alpha=0.12, lw=0, zorder=1)
    extra = [Patch(color="red", alpha=0.25, label="labeled anomaly")] if lab_runs else []
    for a in (axes[0], axes[-1]):
        handles, _ = a.get_legend_handles_labels()
        a.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False,
                 borderaxespad=0.0)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def write_training_report(out: Path, manifest, fleet, arrays: dict, n_sensors: int = 3, span: int = 600) -> Path:
    """``loss.png``, ``validation-<sensor>.png`` (the ``n_sensors`` with most flags and labels in
    their validation part) and ``report.json`` (with any warnings of the run) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr = manifest.training
    loss_curve(tr.get("history", []), manifest.metrics.get("best_epoch", 0), out / "loss.png")
    thr = manifest.calibration.threshold
    inval = fleet.in_validation()
    marks = (np.asarray(arrays["flag"], bool) | (np.asarray(fleet.label) > 0)) & inval
    drawn = []
    for s in interesting(marks.sum(axis=1), min(n_sensors, fleet.n_sensors)):
        a, b = focus_span(marks[s], int(fleet.val_start[s]), int(fleet.lengths[s]), span)
        mean, std = fleet.mean[s], fleet.std[s]
        exp = arrays["expected"][s, a:b] * std + mean
        series_plot(out / f"validation-{fleet.ids[s]}.png", f"validation: {fleet.ids[s]} ({manifest.model_version})",
                    fleet.ts[s, a:b], fleet.raw[s, a:b], exp, fleet.features, arrays["score"][s, a:b], thr,
                    flag=arrays["flag"][s, a:b], label=fleet.label[s, a:b])
        drawn.append({"sensor_id": fleet.ids[s], "flagged_or_labeled": int(marks[s].sum())})
    (out / "report.json").write_text(json.dumps({"model_version": manifest.model_version, "metrics": manifest.metrics,
                                                 "warnings": manifest.metrics.get("warnings", []),
                                                 "calibration": manifest.to_json()["calibration"],
                                                 "plots": drawn}, indent=2))
    return out
