"""``slotwatch simulate``: a synthetic sensor fleet with labeled anomaly windows.

Every sensor is a sum of parts, per feature (in the sensor's own units)::

    value = base + scale * (daily + weekly + trend + regime + noise) [+ anomaly]

- daily and weekly seasonality (readings every 15 min: 96 per day), sharing one phase
  per sensor so that the features move together;
- a slow linear trend;
- regime changes: the sensor switches between two operating modes (low/high load) with a
  smooth transition, which moves every feature by its own amount (normal behaviour, not
  labeled);
- AR(1) noise.

Anomaly windows (``label`` = 1, ``anomaly_kind`` names the kind) never overlap, keep a
gap between them and start after ``margin`` readings so that a detector can warm up:

============  ===============================================================
spike         one feature jumps by 8-15 noise steps for 1-3 readings
level_shift   one feature steps up or down and stays there for 30-80 readings
drift         one feature drifts away slowly (80-160 readings)
variance      the noise of every feature grows 4-7 times (20-60 readings)
stuck         the sensor repeats its last reading (flatline, 30-80 readings)
frequency     the daily cycle runs 4-8 times faster (40-100 readings)
correlated    every feature moves at once in a pattern never seen (20-50 readings)
silent        the sensor sends nothing (dropout, 8-40 readings); only when asked
              for (``kinds=[..., "silent"]``): its rows are left out of the frame,
              and :func:`windows` finds them as gaps in the sensor's time stamps
============  ===============================================================

:func:`simulate` is a pure function of its arguments (same seed, same frame):

>>> df = simulate(3, 600, ["temp", "rpm"], seed=1)
>>> list(df.columns)
['sensor_id', 'ts', 'temp', 'rpm', 'label', 'anomaly_kind']
>>> len(df), df["sensor_id"].nunique(), bool(df["label"].sum() > 0)
(1800, 3, True)
>>> simulate(3, 600, ["temp", "rpm"], seed=1).equals(df)
True
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

HELP = "write a synthetic sensor fleet with labeled anomalies (CSV/Parquet, or to Kafka)"

log = logging.getLogger("slotwatch.simulate")

KINDS = ("spike", "level_shift", "drift", "variance", "stuck", "frequency", "correlated")
#: every kind; ``silent`` (issue 16) is not in the default set, so default fleets stay as they were
ALL_KINDS = KINDS + ("silent",)
STEP_S = 900  # one reading every 15 minutes
DAY = 86_400 // STEP_S  # readings per day (96)
WEEK = 7 * DAY
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

#: typical base level and scale of well-known feature names (others: 0 and 1)
FEATURE_UNITS = {"temp": (60.0, 8.0), "rpm": (1500.0, 200.0), "vib": (2.0, 0.4), "pressure": (5.0, 0.6), "current": (12.0, 2.0)}

# (min, max) length in readings of each kind
_LENGTHS = {
    "spike": (1, 3),
    "level_shift": (30, 80),
    "drift": (80, 160),
    "variance": (20, 60),
    "stuck": (30, 80),
    "frequency": (40, 100),
    "correlated": (20, 50),
    "silent": (8, 40),
}


class SimulationError(ValueError):
    """Arguments that do not describe a fleet; the message says what."""


def simulate(
    n_sensors: int,
    steps: int,
    features: Sequence[str] = ("temp", "rpm", "vib"),
    seed: int = 0,
    *,
    anomaly_every: int = 400,
    margin: int = 250,
    gap: int = 60,
    kinds: Sequence[str] = KINDS,
    id_prefix: str | None = None,
    fleet_seed: int | None = None,
    start_step: int = 0,
    start_ms: int = START_MS,
    step_ms: int = STEP_S * 1000,
) -> pd.DataFrame:
    """A fleet of ``n_sensors`` with ``steps`` readings each, in time order.

    Columns: ``sensor_id``, ``ts`` (epoch ms), one per feature, ``label`` (1 inside an
    anomaly window) and ``anomaly_kind`` ("" outside).  About one anomaly every
    ``anomaly_every`` readings per sensor, none in the first ``margin`` readings.
    ``fleet_seed`` (default: ``seed``) draws the sensors themselves (levels, scales,
    seasonal shapes, noise levels) and their ids ``<id_prefix><n>`` (prefix
    ``s<fleet_seed>-``); ``seed`` draws what happens to them (noise, regime changes,
    anomalies).  So ``fleet_seed=1, seed=2, start_step=5000`` is the future of the sensors
    of ``seed=1``, with new noise and new anomalies, and ``seed=2`` alone is another fleet.
    """
    feats = list(features)
    if n_sensors < 1 or steps < 2:
        raise SimulationError(f"need at least 1 sensor and 2 steps, got {n_sensors} sensors, {steps} steps")
    if not feats or len(set(feats)) != len(feats):
        raise SimulationError(f"features must be distinct names, got {feats}")
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad:
        raise SimulationError(f"unknown anomaly kind(s) {bad}; known: {list(ALL_KINDS)}")
    kinds = [k for k in kinds if not (k == "correlated" and len(feats) < 2)]
    # separate streams: the sensors (fleet_seed), their noise and regimes, their anomalies
    fleet_seed = seed if fleet_seed is None else fleet_seed
    prng = np.random.default_rng(np.random.SeedSequence(fleet_seed).spawn(3)[0])
    rng, arng = (np.random.default_rng(ss) for ss in np.random.SeedSequence(seed).spawn(3)[1:])
    s_, t_, f_ = n_sensors, steps, len(feats)
    t = start_step + np.arange(t_, dtype=np.float64)

    # normal behaviour, in the sensor's standard units (scaled later)
    phase = prng.uniform(0, 2 * np.pi, (s_, 1, 1))
    feat_phase = prng.normal(0, 0.3, (s_, 1, f_))
    amp_d = prng.uniform(0.6, 1.0, (s_, 1, f_)) * prng.choice([-1.0, 1.0], (1, 1, f_))
    amp_w = prng.uniform(0.1, 0.3, (s_, 1, f_))
    w_phase = prng.uniform(0, 2 * np.pi, (s_, 1, 1))
    weekly = amp_w * np.sin(2 * np.pi * t[None, :, None] / WEEK + w_phase)
    trend = prng.uniform(-0.3, 0.3, (s_, 1, f_)) * t[None, :, None] / 4000.0  # about +-0.3 per 6 weeks
    regime_gain = prng.uniform(0.4, 0.8, (s_, 1, f_)) * prng.choice([-1.0, 1.0], (s_, 1, f_))
    mode = _regimes(rng, s_, t_)[:, :, None]
    sigma = prng.uniform(0.08, 0.15, (s_, 1, f_))
    phi = prng.uniform(0.4, 0.7, (s_, 1, f_))
    shocks = rng.normal(0.0, 1.0, (s_, t_, f_)) * sigma * np.sqrt(1 - phi**2)
    prev = rng.normal(0.0, 1.0, (s_, f_)) * sigma[:, 0]
    base_level = regime_gain * mode + weekly + trend

    # anomaly plan (decided before the noise is run, so variance bursts can scale shocks)
    label = np.zeros((s_, t_), np.int8)
    kind_of = np.full((s_, t_), "", dtype=object)
    plans: list[list[tuple[str, int, int, np.random.Generator]]] = []
    freq_mult = np.ones((s_, t_))
    for i in range(s_):
        plan = []
        pos = margin + int(arng.integers(0, max(anomaly_every // 2, 1)))
        while kinds:
            kind = kinds[int(arng.integers(len(kinds)))]
            lo, hi = _LENGTHS[kind]
            length = int(arng.integers(lo, hi + 1))
            if pos + length >= t_:
                break
            sub = np.random.default_rng(arng.integers(2**63))
            plan.append((kind, pos, pos + length, sub))
            label[i, pos : pos + length] = 1
            kind_of[i, pos : pos + length] = kind
            if kind == "variance":
                shocks[i, pos : pos + length] *= sub.uniform(4.0, 7.0)
            elif kind == "frequency":
                freq_mult[i, pos : pos + length] = sub.uniform(4.0, 8.0)
            pos += length + gap + int(arng.integers(anomaly_every // 2, anomaly_every * 3 // 2 + 1))
        plans.append(plan)

    noise = np.empty_like(shocks)
    for k in range(t_):
        prev = phi[:, 0] * prev + shocks[:, k]
        noise[:, k] = prev
    # frequency changes: the daily phase advances faster inside the window (continuous)
    dphase = 2 * np.pi / DAY * freq_mult
    daily_arg = np.cumsum(dphase, axis=1)[:, :, None] - dphase[:, :1, None] + phase + feat_phase
    x = amp_d * np.sin(daily_arg) + base_level + noise

    for i, plan in enumerate(plans):
        for kind, a, b, sub in plan:
            n = b - a
            step = sigma[i, 0] * np.sqrt(1 - phi[i, 0] ** 2)  # the noise step of each feature
            if kind == "spike":
                f = int(sub.integers(f_))
                x[i, a:b, f] += sub.choice([-1.0, 1.0]) * sub.uniform(8.0, 15.0) * step[f]
            elif kind == "level_shift":
                f = int(sub.integers(f_))
                x[i, a:b, f] += sub.choice([-1.0, 1.0]) * sub.uniform(0.8, 1.5)
            elif kind == "drift":
                f = int(sub.integers(f_))
                x[i, a:b, f] += sub.choice([-1.0, 1.0]) * np.linspace(0.0, sub.uniform(1.5, 2.5), n + 1)[1:]
            elif kind == "stuck":
                x[i, a:b] = x[i, a - 1] if a > 0 else x[i, 0]
            elif kind == "correlated":
                signs = sub.choice([-1.0, 1.0], f_)
                size = sub.uniform(0.5, 0.9, f_)
                ramp = np.minimum(np.arange(1, n + 1) / 3.0, 1.0)[:, None]
                x[i, a:b] += ramp * signs * size
            # variance and frequency were applied above

    base = np.empty((s_, 1, f_))
    scale = np.empty((s_, 1, f_))
    for j, name in enumerate(feats):
        b0, s0 = FEATURE_UNITS.get(name, (0.0, 1.0))
        base[:, 0, j] = b0 + abs(b0) * prng.uniform(-0.2, 0.2, s_) if b0 else prng.normal(0, 1, s_)
        scale[:, 0, j] = s0 * prng.uniform(0.7, 1.3, s_)
    values = base + scale * x

    prefix = f"s{fleet_seed}-" if id_prefix is None else id_prefix
    width = max(3, len(str(s_ - 1)))
    ids = np.array([f"{prefix}{i:0{width}d}" for i in range(s_)], dtype=object)
    ts = start_ms + (start_step + np.arange(t_, dtype=np.int64)) * step_ms
    # time-major order: every sensor's reading at t, then t+1 (as a fleet would send them)
    df = pd.DataFrame({"sensor_id": np.tile(ids, t_), "ts": np.repeat(ts, s_)})
    vt = values.transpose(1, 0, 2).reshape(t_ * s_, f_)
    for j, name in enumerate(feats):
        df[name] = np.round(vt[:, j], 6)
    df["label"] = label.T.reshape(-1)
    df["anomaly_kind"] = kind_of.T.reshape(-1)
    if "silent" in kinds:  # dropouts: the sensor sent nothing (windows() finds the gaps)
        df = df[df["anomaly_kind"].to_numpy() != "silent"].reset_index(drop=True)
    return df


def _regimes(rng: np.random.Generator, s_: int, t_: int) -> np.ndarray:
    """0/1 operating mode per sensor with smooth (logistic, ~24 readings) transitions."""
    out = np.zeros((s_, t_))
    for i in range(s_):
        level = float(rng.integers(2))
        target = np.empty(t_)
        pos = 0
        while pos < t_:
            length = int(rng.integers(2 * DAY, 8 * DAY))
            target[pos : pos + length] = level
            level = 1.0 - level
            pos += length
        # smooth: exponential approach with time constant 8 readings
        y = np.empty(t_)
        cur = target[0]
        for k in range(t_):
            cur += (target[k] - cur) / 8.0
            y[k] = cur
        out[i] = y
    return out


def windows(df: pd.DataFrame) -> pd.DataFrame:
    """The labeled anomaly windows of a simulated frame: sensor_id, kind, start/end ts and rows.

    Dropouts (kind ``silent``) have no rows: they are the gaps in a sensor's time stamps
    longer than 1.5 of its usual (median) interval; start/end are the missing readings' times.

    >>> w = windows(simulate(2, 800, ["temp"], seed=3))
    >>> list(w.columns), bool((w["length"] > 0).all())
    (['sensor_id', 'kind', 'start_ts', 'end_ts', 'length'], True)
    """
    rows = []
    for sid, g in df.groupby("sensor_id", sort=True):
        lab = g["label"].to_numpy()
        kind = g["anomaly_kind"].to_numpy() if "anomaly_kind" in g else np.full(len(g), "")
        ts = g["ts"].to_numpy()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], lab, [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            rows.append((sid, kind[a], int(ts[a]), int(ts[b - 1]), int(b - a)))
        d = np.diff(ts)
        if len(d) >= 2:
            step = int(np.median(d))
            for k in np.flatnonzero(d > 1.5 * step).tolist():
                rows.append((sid, "silent", int(ts[k]) + step, int(ts[k + 1]) - step, int(round(d[k] / step)) - 1))
    out = pd.DataFrame(rows, columns=["sensor_id", "kind", "start_ts", "end_ts", "length"])
    return out.sort_values(["sensor_id", "start_ts"], kind="stable").reset_index(drop=True)


def messages(df: pd.DataFrame, features: Sequence[str]) -> Iterator[tuple[str, dict, int]]:
    """(key, value, ts_ms) of every row in the readings-topic contract, in row order.

    >>> next(messages(simulate(1, 10, ["temp"], seed=0), ["temp"]))[1]["sensor_id"]
    's0-000'
    """
    from worker.core.readings import format_ts

    ids = df["sensor_id"].to_numpy()
    ts = df["ts"].to_numpy()
    vals = df[list(features)].to_numpy(dtype=np.float64)
    feats = list(features)
    for i in range(len(df)):
        t = int(ts[i])
        yield str(ids[i]), {"sensor_id": str(ids[i]), "ts": format_ts(t), "values": dict(zip(feats, vals[i].tolist()))}, t


def live_ts(sensor_id: str, now_ms: int, last: dict[str, int]) -> int:
    """The time stamp of a reading sent live: the wall clock, but always after the sensor's
    previous one (a fast producer sends many readings per millisecond).

    >>> last = {}
    >>> live_ts("a", 1000, last), live_ts("a", 1000, last), live_ts("b", 1000, last), live_ts("a", 1005, last)
    (1000, 1001, 1000, 1005)
    """
    ts = max(now_ms, last.get(sensor_id, now_ms - 1) + 1)
    last[sensor_id] = ts
    return ts


def produce(df: pd.DataFrame, features: Sequence[str], settings, topic: str | None = None, progress: bool = True,
            live: bool = False) -> int:
    """Send the frame to the readings topic (key: sensor id; record time: the reading's ts).

    ``live`` (what ``slotwatch simulate --to-kafka`` does unless ``--keep-timestamps``):
    every reading is stamped with the time it is sent (:func:`live_ts`), as a real fleet
    streaming now would, so that the worker's event-time lag means something; otherwise the
    simulated 15-minute time stamps (which lie in the past) are sent.  Files are never
    re-stamped: ``--out`` stays a pure function of the seed.
    """
    import time

    from worker.core.readings import format_ts
    from worker.kafka.clients import make_producer

    producer = make_producer(settings.kafka, linger_ms=20, key_serializer=lambda k: k.encode(),
                             value_serializer=lambda v: json.dumps(v, separators=(",", ":")).encode())
    topic = topic or settings.kafka.readings_topic
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(df), unit="msg", desc=f"-> {topic}")
    try:
        last: dict[str, int] = {}
        for key, value, ts in messages(df, features):
            if live:
                ts = live_ts(key, int(time.time() * 1000), last)
                value["ts"] = format_ts(ts)
            producer.send(topic, key=key, value=value, timestamp_ms=ts)
            n += 1
            if bar and n % 1000 == 0:
                bar.update(1000)
        producer.flush()
    finally:
        if bar:
            bar.update(n % 1000)
            bar.close()
        producer.close()
    return n


def parse_features(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (None stays None)."""
    if text is None:
        return None
    out = [f.strip() for f in text.split(",") if f.strip()]
    if not out:
        raise argparse.ArgumentTypeError("--features needs at least one name")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensors", type=int, default=32, help="number of sensors (default 32)")
    p.add_argument("--steps", type=int, default=4000, help="readings per sensor, one per 15 min (default 4000)")
    p.add_argument("--features", default="temp,rpm,vib", help="comma-separated feature names (default temp,rpm,vib)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the sensor ids carry it (s<seed>-NNN)")
    p.add_argument("--fleet-seed", type=int, default=None, help="seed of the sensors themselves (default: --seed); same fleet seed, other seed = same sensors, new data")
    p.add_argument("--start-step", type=int, default=0, help="first reading's index (e.g. the previous run's --steps, to simulate the future of the same fleet)")
    p.add_argument("--anomaly-every", type=int, default=400, help="about one anomaly per this many readings per sensor")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"anomaly kinds to inject (default: {','.join(KINDS)}; also: silent, a dropout with no readings)")
    p.add_argument("--out", type=Path, default=None, help="write a .csv/.parquet file (label and anomaly_kind included)")
    p.add_argument("--to-kafka", action="store_true", help="send the readings to the readings topic (SLOTWATCH_KAFKA__*)")
    p.add_argument("--topic", default=None, help="topic for --to-kafka (default SLOTWATCH_KAFKA__READINGS_TOPIC)")
    p.add_argument("--keep-timestamps", action="store_true",
                   help="with --to-kafka: send the simulated time stamps (15 min apart, in the past) instead of stamping "
                        "each reading with the time it is sent")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)")


def main(args: argparse.Namespace) -> int:
    from worker.datafile import write_table
    from worker.logs import setup_logging
    from worker.settings import Settings

    settings = Settings.load()
    setup_logging(settings.log)
    if args.out is None and not args.to_kafka:
        log.error("nothing to do: give --out FILE and/or --to-kafka")
        return 2
    try:
        feats = parse_features(args.features)
        df = simulate(args.sensors, args.steps, feats, args.seed, anomaly_every=args.anomaly_every,
                      kinds=parse_features(args.kinds), fleet_seed=args.fleet_seed, start_step=args.start_step)
    except (SimulationError, argparse.ArgumentTypeError) as e:
        log.error("%s", e)
        return 2
    w = windows(df)
    log.info("simulated %d sensors x %d readings (%d rows), %d anomaly windows: %s", args.sensors, args.steps, len(df), len(w),
             ", ".join(f"{k}={n}" for k, n in w["kind"].value_counts().sort_index().items()))
    if args.out is not None:
        write_table(df, args.out)
        log.info("wrote %s", args.out)
    if args.to_kafka:
        from worker.exits import EXIT_BROKER, describe_broker_error, is_broker_error
        from worker.progress import want_progress

        topic = args.topic or settings.kafka.readings_topic
        try:
            n = produce(df, feats, settings, topic, progress=want_progress(not args.no_progress),
                        live=not args.keep_timestamps)
        except Exception as e:  # noqa: BLE001 - NoBrokersAvailable, KafkaTimeoutError: one line, exit 5
            if not is_broker_error(e):
                raise
            log.error("%s", describe_broker_error(e, settings.kafka.bootstrap_servers, f"send the readings to {topic}"))
            return EXIT_BROKER
        log.info("sent %d readings to %s (%s)", n, topic,
                 "simulated time stamps" if args.keep_timestamps else "stamped with the time they were sent")
    return 0
