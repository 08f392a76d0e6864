"""``slotwatch replay``: stream a CSV/Parquet file through the scoring core, as the worker would.

Rows are taken in time order (ties keep file order) and fed to the same
:class:`~worker.core.detector.SlotDetector` the worker runs, in chunks like Kafka polls.
The chunks go through the columnar entry point (``process_columns``), as the worker's polls do.
One output row per input row: sensor_id, ts, the values, expected values, error, score,
is_anomaly, warming_up, surprise, episode (the episode events the row caused: ``open``,
``close:<reason>``, joined by ``;``) (and label when the input has one; rejected rows carry
the reason).

Silent sensors (``SLOTWATCH_SILENCE__*``) are tracked in stream time exactly as the worker
does; ``--silent-episodes FILE`` writes their episode messages (JSON lines, the bytes the worker
publishes on the anomalies topic).  Stream time is per Kafka partition in the worker:
``--partitions N`` assigns each sensor the partition Kafka's default partitioner gives its
key (murmur2 of the sensor id), so that a replay of what went through N partitions gives
the same episodes; without it the file is one stream.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "score a CSV/Parquet file through the scoring core, exactly as the worker would"

log = logging.getLogger("slotwatch.replay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worker.argtypes import non_negative_int, positive_int

    p.add_argument("--model", required=True, type=Path, help="artifact directory (or a folder with a `latest` pointer)")
    p.add_argument("--data", required=True, type=Path, help="input file: sensor_id, ts, feature columns[, label]")
    p.add_argument("--out", required=True, type=Path, help="output .csv or .parquet")
    p.add_argument("--slots", type=positive_int, default=None, help="batch slots B (default: SLOTWATCH_MODEL__SLOTS, 256)")
    p.add_argument("--chunk", type=positive_int, default=2000, help="readings per call, like one Kafka poll (default 2000)")
    p.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)")
    p.add_argument("--silent-episodes", type=Path, default=None,
                   help="write the silent-sensor episode messages here (JSON lines, as published by the worker)")
    p.add_argument("--partitions", type=non_negative_int, default=0, metavar="N",
                   help="stream time per partition, as the worker sees the readings topic with N partitions "
                        "(Kafka's default partitioner on the sensor id); 0: one stream (default)")


def kafka_partition(sensor_id: str, n_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives a sensor id.

    >>> kafka_partition("pump-17", 1)
    0
    """
    from kafka.partitioner.default import murmur2

    return (murmur2(sensor_id.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


def replay_frame(detector, df, features, chunk: int = 2000, progress: bool = False, silence_events: list | None = None,
                 partitions: int = 0):
    """Score a frame from :func:`worker.datafile.load_readings`; returns the output frame.

    ``silence_events``: a list that receives the silent-sensor events (:class:`worker.core.silence.
    SilenceEvent`) when the detector tracks silence; ``partitions``: see ``--partitions``.
    """
    import numpy as np
    import pandas as pd

    from worker.core.columns import SCORED, ReadingColumns
    from worker.core.readings import REASONS

    n = len(df)
    f = len(features)
    ids = df["sensor_id"].to_numpy()
    ts = df["ts_ms"].to_numpy()
    vals = df[features].to_numpy(dtype=np.float64)
    finite = np.isfinite(vals).all(axis=1)
    exp = np.full((n, f), np.nan)
    err = np.full(n, np.nan)
    score = np.full(n, np.nan)
    surp = np.full(n, np.nan)
    episode = np.full(n, "", dtype=object)
    anom = np.zeros(n, bool)
    warm = np.zeros(n, bool)
    reason = np.full(n, "", dtype=object)
    reason[~finite] = "non_finite"
    part = np.full(n, -1, np.int64)
    if partitions:
        of = {sid: kafka_partition(str(sid), partitions) for sid in pd.unique(ids)}
        part = np.fromiter((of[sid] for sid in ids), np.int64, n)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="rd", desc="replay", smoothing=0.1)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pos = start + np.nonzero(finite[start:stop])[0]
        batch = ReadingColumns.build([s if type(s) is str else "" for s in ids[pos].tolist()], ts[pos], vals[pos],
                                     partition=part[pos], offset=pos)
        sc = detector.process_columns(batch)
        ok = sc.status == SCORED
        for i, code in zip(pos[~ok].tolist(), sc.status[~ok].tolist()):
            reason[i] = REASONS[code]
        at = pos[ok]
        exp[at] = sc.expected[ok]
        err[at] = sc.error[ok]
        score[at] = sc.score[ok]
        surp[at] = sc.surprise[ok]
        anom[at] = sc.is_anomaly[ok]
        warm[at] = sc.warming_up[ok]
        for k, events in sc.episodes.items():
            if events:
                episode[pos[k]] = ";".join(e.event if e.event == "open" else f"close:{e.close_reason}" for e in events)
        if detector.silence is not None:
            got = detector.silence.drain()
            if silence_events is not None:
                silence_events.extend(got)
        if bar:
            bar.update(stop - start)
    if bar:
        bar.close()
    out = pd.DataFrame({"sensor_id": ids, "ts": ts})
    for k, name in enumerate(features):
        out[name] = vals[:, k]
    for k, name in enumerate(features):
        out[f"expected_{name}"] = exp[:, k]
    out["error"] = err
    out["score"] = score
    out["is_anomaly"] = anom
    out["warming_up"] = warm
    out["surprise"] = surp
    out["episode"] = episode
    out["rejected"] = reason
    if "label" in df.columns:
        out["label"] = df["label"].to_numpy()
    return out


def replay_detector(artifact, settings, slots: int | None = None, threshold: float | None = None):
    """The detector `slotwatch replay` runs: the worker's (:func:`worker.core.factory.detector_from_settings`),
    with ``--slots``/``--threshold`` when given."""
    from worker.core.factory import detector_from_settings

    over = {}
    if slots:
        over["slots"] = slots
    if threshold is not None:
        over["threshold"] = threshold
    return detector_from_settings(artifact, settings, **over)


def main(args: argparse.Namespace) -> int:
    from worker.core import artifact as art
    from worker.codec import encode_silence
    from worker.datafile import DataFileError, load_readings, write_table
    from worker.logs import setup_logging
    from worker.settings import Settings
    from worker import startup

    settings = Settings.load()
    setup_logging(settings.log)
    try:
        startup.begin()
    except startup.StartupError as e:
        log.error("%s", e)
        return 2
    try:
        a = art.load(args.model)
        startup.loaded()
        df, features = load_readings(args.data, a.manifest.features)
    except art.ArtifactError as e:
        from worker.exits import model_error

        log.error("%s", model_error(e, "--model"))
        return 2
    except DataFileError as e:
        log.error("%s", e)
        return 2
    det = replay_detector(a, settings, slots=args.slots, threshold=args.threshold)
    slots = det.slots
    from worker.progress import want_progress

    events: list = []
    out = replay_frame(det, df, features, chunk=args.chunk, progress=want_progress(not args.no_progress),
                       silence_events=events,
                       partitions=args.partitions)
    write_table(out, args.out)
    if args.silent_episodes is not None:
        with open(args.silent_episodes, "wb") as fh:
            for ev in events:
                fh.write(encode_silence(ev, a.version) + b"\n")
    if events:
        log.info("silent sensors: %d episodes opened, %d closed%s", sum(e.event == "open" for e in events),
                 sum(e.event == "close" for e in events), f" -> {args.silent_episodes}" if args.silent_episodes else
                 " (--silent-episodes FILE writes them)")
    rejected = int((out["rejected"] != "").sum())
    log.info(
        "replayed %d readings of %d sensors with model %s in %d slots: %d anomalies, %d rejected -> %s",
        len(out), df["sensor_id"].nunique(), a.version, slots, int(out["is_anomaly"].sum()), rejected, args.out,
    )
    return 0
