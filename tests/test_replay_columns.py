"""Issue 11: ``slotwatch replay`` (and so ``slotwatch evaluate``) scores through ``process_columns``;
its output frame equals, bit for bit, that of the per-reading path it replaced (``process`` of
``Reading`` objects per chunk), rejected rows, episodes and silence included."""

from __future__ import annotations

import numpy as np
import pandas as pd

from worker.core import artifact as art
from worker.core.factory import detector_from_settings
from worker.core.readings import Reading, Rejection
from worker.replay import replay_frame
from worker.settings import Settings


def _old_replay(det, df, features, chunk):
    """The per-reading replay loop of before issue 11 (the columns it fills)."""
    n = len(df)
    ids, ts = df["sensor_id"].to_numpy(), df["ts_ms"].to_numpy()
    vals = df[features].to_numpy(dtype=np.float64)
    finite = np.isfinite(vals).all(axis=1)
    out = {k: np.full(n, np.nan) for k in ("error", "score", "surprise")}
    exp = np.full((n, len(features)), np.nan)
    episode, reason = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
    reason[~finite] = "non_finite"
    anom, warm = np.zeros(n, bool), np.zeros(n, bool)
    for start in range(0, n, chunk):
        pos = [i for i in range(start, min(start + chunk, n)) if finite[i]]
        for i, r in zip(pos, det.process([Reading(ids[i], int(ts[i]), vals[i], offset=i) for i in pos])):
            if isinstance(r, Rejection):
                reason[i] = r.reason
                continue
            exp[i], anom[i], warm[i] = r.expected, r.is_anomaly, r.warming_up
            out["error"][i], out["score"][i], out["surprise"][i] = r.error, r.score, r.surprise
            if r.episodes:
                episode[i] = ";".join(e.event if e.event == "open" else f"close:{e.close_reason}" for e in r.episodes)
        if det.silence is not None:
            det.silence.drain()
    return out, exp, episode, reason, anom, warm


def test_replay_frame_equals_the_per_reading_replay(artifact_3f):
    a = art.load(artifact_3f)
    features = list(a.manifest.features)
    rng = np.random.default_rng(5)
    rows = []
    for s in range(20):
        t = 1_795_000_000_000
        for k in range(60):
            t += 1000 if k % 17 else 600_000
            v = rng.normal(size=3) * (30 if rng.random() < 0.05 else 1)
            if rng.random() < 0.01:
                v[1] = np.nan
            rows.append((f"p{s}", t, *v))
        rows.append((f"p{s}", t - 5000, 0.0, 0.0, 0.0))  # out of order: the core rejects it
    df = pd.DataFrame(rows, columns=["sensor_id", "ts_ms", *features])  # sensor after sensor: late rows stay late
    settings = Settings.load(model={"slots": 8}, silence={"enabled": True})
    got = replay_frame(detector_from_settings(a, settings), df, features, chunk=97)
    out, exp, episode, reason, anom, warm = _old_replay(detector_from_settings(a, settings), df, features, 97)
    for k in ("error", "score", "surprise"):
        assert got[k].to_numpy().tobytes() == out[k].tobytes()
    for k, f in enumerate(features):
        assert got[f"expected_{f}"].to_numpy().tobytes() == exp[:, k].tobytes()
    assert got["episode"].tolist() == episode.tolist() and got["rejected"].tolist() == reason.tolist()
    assert (got["is_anomaly"].to_numpy() == anom).all() and (got["warming_up"].to_numpy() == warm).all()
    assert (reason == "non_finite").any() and (reason == "late").any() and (episode != "").any()
