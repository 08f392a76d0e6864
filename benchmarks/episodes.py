"""Alert load on a healthy fleet: episodes per 100 sensor-hours with no anomaly injected.

One command: ``python -m benchmarks.episodes`` (``--model DIR`` picks the artifact; default
``demo-data/models`` when ``make demo`` has trained one, otherwise the demo's model is trained
first: 32 sensors x 4,000 readings, seed 1, 12 epochs, a few minutes on 2 cores).

1. The demo's stream fleet (``slotwatch demo``: 200 sensors ``pump-N``, fleet seed 2), with
   anomalies off (``simulate(..., kinds=())``), for ``--steps`` readings per sensor.
2. Replayed through the worker's core (:class:`~worker.core.detector.SlotDetector`, 128 slots
   as in the demo, chunks of 2,000 like polls) with the default episode settings.
3. Counted: readings flagged (what the anomalies topic carried per reading before episodes)
   and episodes opened, per 100 sensor-hours of stream time (the simulator's: one reading
   per 15 minutes; also given at the demo's live cadence, 200 sensors at 2,000 readings/s =
   one reading per sensor every 0.1 s), by close reason; then the same scores again through
   the episode tracker alone with other quiet periods, to show what that setting buys.

Target (issue 9): fewer than 1 episode per 100 sensor-hours.  Writes
``<results>/<machine>-<date>-episodes.{json,md}`` (``--results``, default ``bench-results/``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import finish, md_table

FEATURES = ["temp", "rpm", "vib"]
DEMO_RATE = 2000.0  # readings per second the demo streams


def train_demo_model(workdir: Path) -> Path:
    """The demo's model, trained by the demo's own recipe (``training.demo.ensure_model``) into ``workdir``."""
    from training.demo import ensure_model

    return ensure_model(workdir, retrain=False, epochs=12)


def healthy_fleet(sensors: int, steps: int):
    """The demo's stream fleet with no anomaly injected."""
    from training.simulate import simulate
    from training.demo import ID_PREFIX

    return simulate(sensors, steps, FEATURES, seed=2, id_prefix=ID_PREFIX, kinds=())


def count_episodes(scored: dict, params, features) -> dict:
    """Run the episode tracker alone over recorded per-reading scores (time-major arrays)."""
    import numpy as np

    from worker.core.episodes import EpisodeTracker

    n = scored["score"].shape[0]
    t = EpisodeTracker.from_params(features, params)
    rows = t.table.add_many([f"x{i}" for i in range(n)])
    opened, reasons = 0, {}
    for k in range(scored["score"].shape[1]):
        ok = scored["valid"][:, k]
        if not ok.any():
            continue
        r = rows[ok]
        for _, e in t.step(r, scored["ts"][ok, k], scored["score"][ok, k], scored["surprise"][ok, k], scored["flag"][ok, k],
                           np.zeros(int(ok.sum()), bool), scored["x"][ok, k], scored["exp"][ok, k], scored["z"][ok, k]):
            if e.event == "open":
                opened += 1
            else:
                reasons[e.close_reason] = reasons.get(e.close_reason, 0) + 1
    return {"opened": opened, "closed": reasons, "open_at_end": t.open_count()}


def run(model: Path | None = None, sensors: int = 200, steps: int = 3000, slots: int = 128, progress: bool = True,
        quick: bool = False) -> dict:
    """``quick``: 50 sensors x 1,000 readings (the model is still the demo's)."""
    if quick:
        sensors, steps = min(sensors, 50), min(steps, 1000)
    import numpy as np

    from worker.core import artifact as art
    from worker.core.detector import SlotDetector
    from worker.core.episodes import EpisodeParams
    from worker.core.readings import Reading, Score
    from worker.settings import EpisodeSettings

    t0 = time.perf_counter()
    tmp = None
    if model is None and (Path("demo-data") / "models" / "latest").exists():
        model = Path("demo-data") / "models"  # the model `make demo` trained
    if model is None:
        tmp = tempfile.TemporaryDirectory()
        if progress:
            print("training the demo model (32 sensors x 4,000 readings, 12 epochs) ...", flush=True)
        model = train_demo_model(Path(tmp.name))
    a = art.load(model)
    df = healthy_fleet(sensors, steps)
    assert int(df["label"].sum()) == 0
    defaults = EpisodeSettings()
    det = SlotDetector(a, slots=slots, episodes=defaults.params())
    ids = df["sensor_id"].to_numpy()
    ts = df["ts"].to_numpy().astype(np.int64)
    vals = df[a.manifest.features].to_numpy(np.float64)
    order = {s: i for i, s in enumerate(dict.fromkeys(ids.tolist()))}
    n, f = len(order), len(a.manifest.features)
    shape = (n, steps)
    rec = {"score": np.zeros(shape), "surprise": np.zeros(shape), "flag": np.zeros(shape, bool), "valid": np.zeros(shape, bool),
           "ts": np.zeros(shape, np.int64), "x": np.zeros(shape + (f,)), "exp": np.zeros(shape + (f,)), "z": np.zeros(shape + (f,))}
    step_of = np.zeros(len(df), np.int64)
    seen = np.zeros(n, np.int64)
    for i, s in enumerate(ids.tolist()):
        j = order[s]
        step_of[i] = seen[j]
        seen[j] += 1
    flagged = warming = scored = 0
    opened, closed = 0, {}
    events = []
    t_core = time.perf_counter()
    for start in range(0, len(df), 2000):
        stop = min(start + 2000, len(df))
        res = det.process([Reading(ids[i], int(ts[i]), vals[i], offset=i) for i in range(start, stop)])
        for i, r in zip(range(start, stop), res):
            if not isinstance(r, Score):
                continue
            scored += 1
            warming += r.warming_up
            flagged += r.is_anomaly
            j, k = order[r.sensor_id], step_of[i]
            if not r.warming_up:
                rec["valid"][j, k] = True
            rec["score"][j, k], rec["surprise"][j, k], rec["flag"][j, k], rec["ts"][j, k] = r.score, r.surprise, r.is_anomaly, r.ts_ms
            rec["x"][j, k], rec["exp"][j, k], rec["z"][j, k] = r.values, r.expected, r.feature_z
            for e in r.episodes or ():
                events.append(e)
                if e.event == "open":
                    opened += 1
                else:
                    closed[e.close_reason] = closed.get(e.close_reason, 0) + 1
        if progress and (start // 2000) % 50 == 0:
            print(f"  {stop:,}/{len(df):,} readings, {opened} episodes so far", flush=True)
    core_s = time.perf_counter() - t_core
    step_s = float(np.median(np.diff(np.sort(df.loc[df["sensor_id"] == ids[0], "ts"].to_numpy())))) / 1000
    live = scored - warming
    sensor_hours = live * step_s / 3600
    demo_sensor_hours = live * (n / DEMO_RATE) / 3600
    per100 = lambda c, h: 100.0 * c / h if h else float("nan")  # noqa: E731
    closes = [e for e in events if e.event == "close"]
    sweep = []
    for qr in (5, 20, 50, 200):
        c = count_episodes(rec, EpisodeParams(quiet_readings=qr), a.manifest.features)
        sweep.append({"quiet_readings": qr, "episodes": c["opened"],
                      "episodes_per_100_sensor_hours": per100(c["opened"], sensor_hours), "closed": c["closed"]})
    res = {
        "model": str(a.path), "model_version": a.version, "threshold": a.manifest.calibration.threshold,
        "sensors": n, "steps": steps, "slots": slots, "readings": int(scored), "readings_after_warmup": int(live),
        "reading_interval_s": step_s, "sensor_hours": sensor_hours, "demo_cadence_sensor_hours": demo_sensor_hours,
        "episode_settings": defaults.model_dump(),
        "flagged_readings": int(flagged), "flagged_share": flagged / max(live, 1),
        "flagged_per_100_sensor_hours": per100(flagged, sensor_hours),
        "episodes": opened, "episodes_closed": closed, "episodes_open_at_end": det.episodes.open_count(),
        "episodes_per_100_sensor_hours": per100(opened, sensor_hours),
        "episodes_per_100_sensor_hours_demo_cadence": per100(opened, demo_sensor_hours),
        "messages_per_100_sensor_hours": {"per_reading": per100(flagged, sensor_hours),
                                          "episodes": per100(opened + sum(closed.values()), sensor_hours)},
        "median_episode_readings_flagged": float(np.median([e.readings_flagged for e in closes])) if closes else None,
        "median_episode_duration_s": float(np.median([e.duration_s for e in closes])) if closes else None,
        "top_features": _count([e.features[0]["feature"] for e in events if e.event == "open" and e.features]),
        "quiet_sweep": sweep,
        "core_seconds": core_s, "total_seconds": time.perf_counter() - t0,
    }
    res["targets"] = {"episodes_per_100_sensor_hours": {"target": 1.0, "measured": res["episodes_per_100_sensor_hours"],
                                                        "met": res["episodes_per_100_sensor_hours"] < 1.0}}
    if tmp is not None:
        tmp.cleanup()
    return res


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def report(res: dict) -> str:
    t = res["targets"]["episodes_per_100_sensor_hours"]
    lines = [
        "# Alert load on a healthy fleet (no anomaly injected)",
        "",
        f"Model `{res['model_version']}` (threshold {res['threshold']:.9g}), the demo's stream fleet: {res['sensors']} sensors x "
        f"{res['steps']:,} readings ({res['readings']:,} scored, {res['readings_after_warmup']:,} after warm-up), "
        f"{res['slots']} slots; episode settings {res['episode_settings']}.",
        "",
        f"Stream time: one reading every {res['reading_interval_s']:.0f} s = {res['sensor_hours']:,.0f} sensor-hours "
        f"(at the demo's live cadence, one reading per sensor every {res['sensors'] / DEMO_RATE:.2f} s: "
        f"{res['demo_cadence_sensor_hours']:.1f} sensor-hours).",
        "",
        md_table([
            {"what": "readings flagged", "count": res["flagged_readings"],
             "per 100 sensor-hours": f"{res['flagged_per_100_sensor_hours']:.3g}", "share of readings": f"{res['flagged_share']:.2e}"},
            {"what": "episodes opened", "count": res["episodes"],
             "per 100 sensor-hours": f"{res['episodes_per_100_sensor_hours']:.3g}",
             "share of readings": f"{res['episodes'] / max(res['readings_after_warmup'], 1):.2e}"},
        ], ["what", "count", "per 100 sensor-hours", "share of readings"]),
        "",
        f"Messages on the anomalies topic per 100 sensor-hours: per reading (the old default) "
        f"{res['messages_per_100_sensor_hours']['per_reading']:.3g}, episodes (open + close) "
        f"{res['messages_per_100_sensor_hours']['episodes']:.3g}.  Closed by reason: {res['episodes_closed']}; open at the end: "
        f"{res['episodes_open_at_end']}; median readings flagged per episode {res['median_episode_readings_flagged']}, "
        f"median duration {res['median_episode_duration_s']} s; top feature at open: {res['top_features']}.",
        "",
        f"At the demo's live cadence the same episodes are {res['episodes_per_100_sensor_hours_demo_cadence']:.3g} per 100 sensor-hours.",
        "",
        "Quiet period (same scores, tracker alone):",
        "",
        md_table([{"quiet_readings": s["quiet_readings"], "episodes": s["episodes"],
                   "per 100 sensor-hours": f"{s['episodes_per_100_sensor_hours']:.3g}"} for s in res["quiet_sweep"]],
                 ["quiet_readings", "episodes", "per 100 sensor-hours"]),
        "",
        f"- target: fewer than {t['target']:g} episode per 100 sensor-hours, measured {t['measured']:.3g} — "
        f"{'met' if t['met'] else 'MISSED'}",
        f"- core time {res['core_seconds']:.0f} s, total {res['total_seconds']:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.episodes", description=__doc__.splitlines()[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--model", type=Path, default=None,
                   help="artifact (or models folder); default demo-data/models if present, else train the demo's model")
    p.add_argument("--sensors", type=int, default=200, help="sensors of the healthy fleet (default 200, the demo's)")
    p.add_argument("--steps", type=int, default=3000, help="readings per sensor (default 3000)")
    p.add_argument("--slots", type=int, default=128, help="batch slots (default 128, the demo's)")
    args = p.parse_args(argv)
    res = run(args.model, args.sensors, args.steps, args.slots)
    finish("episodes", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
