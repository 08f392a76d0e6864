"""Detection quality: pure functions from labels and flags to numbers.

Per point: precision, recall and F1 of the flags against the labels.

Per window: a labeled window (a run of label = 1) is *detected* when at least one reading
inside it is flagged; its *detection delay* is the number of readings from its first
reading to the first flag (0 = flagged at once).  Flags form *events* (runs of flags,
runs closer than ``merge`` readings joined); an event is a *false alarm* when it does not
touch any labeled window or the ``tolerance`` readings after one (the return to normal
after an incident is often flagged too).  Window precision = true events / events, window
recall = detected windows / windows, F1 their harmonic mean.  False alarms per 1,000
readings counts false events.

>>> label = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0]
>>> flag  = [0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
>>> r = series_scores(label, flag, tolerance=1, merge=1)
>>> [(w["start"], w["detected"], w["delay"]) for w in r["windows"]]
[(2, True, 1), (10, False, None)]
>>> [(e["start"], e["end"], e["false"]) for e in r["events"]]
[(3, 6, False), (8, 9, True)]
>>> s = summarize([r])
>>> s["window_recall"], s["window_precision"], s["point_precision"], round(s["point_recall"], 2)
(0.5, 0.5, 0.5, 0.4)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

TOLERANCE = 10  # readings after a window in which a flag is not a false alarm
MERGE = 3  # flags closer than this form one event


def runs(mask: Sequence[bool] | np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every run of True, end exclusive.

    >>> runs([0, 1, 1, 0, 1])
    [(1, 3), (4, 5)]
    """
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    if m.size == 0:
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def merge_runs(rs: list[tuple[int, int]], merge: int) -> list[tuple[int, int]]:
    """Join runs separated by fewer than ``merge`` readings.

    >>> merge_runs([(0, 2), (3, 4), (9, 10)], merge=2)
    [(0, 4), (9, 10)]
    """
    out: list[tuple[int, int]] = []
    for a, b in rs:
        if out and a - out[-1][1] < merge:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def series_scores(label, flag, kinds: Sequence[str] | None = None, *, tolerance: int = TOLERANCE, merge: int = MERGE) -> dict:
    """Windows, events and point counts of one sensor's series (readings in time order)."""
    lab = np.asarray(label, dtype=bool)
    flg = np.asarray(flag, dtype=bool)
    if lab.shape != flg.shape:
        raise ValueError(f"label and flag differ in length: {lab.shape} vs {flg.shape}")
    n = lab.size
    wins = runs(lab)
    windows = []
    for a, b in wins:
        hits = np.flatnonzero(flg[a:b])
        windows.append({
            "start": a, "end": b, "length": b - a,
            "kind": (str(kinds[a]) if kinds is not None else ""),
            "detected": bool(hits.size), "delay": int(hits[0]) if hits.size else None,
        })
    near = lab.copy()
    for a, b in wins:
        near[b : min(n, b + tolerance)] = True
    events = []
    for a, b in merge_runs(runs(flg), merge):
        events.append({"start": a, "end": b, "false": not bool(near[a:b].any())})
    return {
        "n": int(n),
        "tp": int((lab & flg).sum()),
        "fp": int((~lab & flg).sum()),
        "fn": int((lab & ~flg).sum()),
        "windows": windows,
        "events": events,
    }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def summarize(per_series: Iterable[dict]) -> dict:
    """Fleet totals from :func:`series_scores` results."""
    n = tp = fp = fn = 0
    windows: list[dict] = []
    events: list[dict] = []
    for r in per_series:
        n += r["n"]
        tp += r["tp"]
        fp += r["fp"]
        fn += r["fn"]
        windows += r["windows"]
        events += r["events"]
    pp, pr = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    detected = [w for w in windows if w["detected"]]
    false_events = sum(e["false"] for e in events)
    wp, wr = _ratio(len(events) - false_events, len(events)), _ratio(len(detected), len(windows))
    delays = np.array([w["delay"] for w in detected], dtype=float)
    by_kind: dict[str, dict] = {}
    for w in windows:
        k = by_kind.setdefault(w["kind"] or "any", {"windows": 0, "detected": 0, "delays": []})
        k["windows"] += 1
        if w["detected"]:
            k["detected"] += 1
            k["delays"].append(w["delay"])
    kinds = {
        k: {"windows": v["windows"], "recall": _ratio(v["detected"], v["windows"]),
            "median_delay": float(np.median(v["delays"])) if v["delays"] else None}
        for k, v in sorted(by_kind.items())
    }
    return {
        "readings": n,
        "point_precision": pp,
        "point_recall": pr,
        "point_f1": _f1(pp, pr),
        "windows": len(windows),
        "windows_detected": len(detected),
        "events": len(events),
        "false_events": int(false_events),
        "window_precision": wp,
        "window_recall": wr,
        "window_f1": _f1(wp, wr),
        "median_delay": float(np.median(delays)) if delays.size else None,
        "mean_delay": float(delays.mean()) if delays.size else None,
        "p90_delay": float(np.percentile(delays, 90)) if delays.size else None,
        "false_alarms_per_1000": _ratio(1000.0 * false_events, n),
        "by_kind": kinds,
    }


def frame_scores(df, flag_col: str = "is_anomaly", *, tolerance: int = TOLERANCE, merge: int = MERGE) -> tuple[dict, dict[str, dict]]:
    """Summary and per-sensor results of a scored frame (sensor_id, ts, label, a flag column[, anomaly_kind]).

    Rows are taken per sensor in time order; rejected rows (non-empty ``rejected``) are skipped.
    """
    if "label" not in df.columns:
        raise ValueError("the data has no label column: evaluation needs labeled anomaly windows")
    d = df
    if "rejected" in d.columns:
        d = d[d["rejected"].fillna("") == ""]
    per: dict[str, dict] = {}
    for sid, g in d.sort_values("ts", kind="stable").groupby("sensor_id", sort=True):
        kinds = g["anomaly_kind"].to_numpy() if "anomaly_kind" in g.columns else None
        per[str(sid)] = series_scores(g["label"].to_numpy(), g[flag_col].to_numpy(), kinds, tolerance=tolerance, merge=merge)
    return summarize(per.values()), per
