"""``slotwatch train``: fit the core's network on sensor history, calibrate its scorer, write an artifact.

Steps (each one logged, the long ones with a progress bar):

1. Read CSV/Parquet files (or a time range of the readings topic with ``--from-kafka``),
   check them (:mod:`training.fleet`): every sensor's readings in time order, per-sensor
   scaling from its normal readings, the last ``--val-fraction`` of each sensor's time
   held out for validation.  Rows labeled anomalous (label = 1) never count in the loss.
2. Fit the network of :func:`worker.core.artifact.build_network` to predict each next
   reading.  ``--mode windows`` (default): shuffled windows of ``--seq-len`` readings,
   each from a zero state.  ``--mode stateful``: a fixed batch of sensors, their
   sequences cut into chunks fed in time order (shuffle off), states reset between
   epochs.  Both were measured on the quality benchmark; they score about the same and
   windows a little more precisely (README, "Detection quality").  Each epoch shifts and
   stretches every sensor's scaled values a little (``--jitter``) so that sensors the
   model never saw, scaled online from their first readings, are not flagged for it.
   Validation loss is measured on the held-out time after every epoch by running the
   network over each whole sequence (what the worker sees); early stopping keeps the best.
3. Calibrate the scorer on held-out normal readings (:mod:`training.calibrate`).
4. Save the artifact ``<out>/<version>`` and move ``<out>/latest`` to it; write a
   report (loss curves, a validation plot, ``report.json``) in ``<out>/<version>/report``.

The version says when and from what: ``<UTC time>-<data name>-<hash of the data>``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.fleet import Fleet, TrainingError, prepare_fleet

HELP = "fit and calibrate the model on sensor history (CSV/Parquet or a Kafka time range); write a versioned artifact"

log = logging.getLogger("slotwatch.train")


@dataclass
class TrainConfig:
    units: list[int] = field(default_factory=lambda: [32])
    mode: str = "windows"  # or "stateful" (measured: about the same F1, windows a little more precise; see README)
    epochs: int = 30
    patience: int = 4
    seq_len: int = 96  # chunk (stateful) or window (windows) length
    batch: int | None = None  # sensors per batch (stateful, default 32) or windows per batch (windows, default 64)
    learning_rate: float = 0.005
    val_fraction: float = 0.2
    seed: int = 0
    warmup: int = 96
    short_window: int = 4
    long_window: int = 1000
    false_alarm_rate: float = 1e-4
    flat_window: int = 8  # stuck-sensor check on (> 0) or off (0); stillness is judged against each sensor's own history
    level_window: int = 8  # level channel EWMA window (0 = off); see worker.core.adaptive
    feature_scales: bool = True  # calibrate the level channel's scale per feature (else one for all, as before)
    level_fresh: bool = True  # per feature the larger of the whole-sequence rule (no floor) and the rule as sensors start live, known and unseen (training.calibrate_fresh)
    level_passes: int = 8  # at most this many re-calibrations of the level scales on a pass that freezes while flagged, as live (stops at < 1% change; 0 = off)
    accept_after: int = 600  # horizon used for the validation metrics (the worker's is SLOTWATCH_SCORING__ACCEPT_AFTER)
    jitter: float = 1.0  # scaling jitter per sensor and epoch (offset sd; log-scale sd is half of it)
    min_delta: float = 0.002  # relative val_loss improvement that counts
    min_readings: int = 8
    unsorted: str = "sort"
    progress: bool = True
    strict: bool = False  # a failed check (false-alarm rate above target) leaves `latest` where it was, exit 6


@dataclass
class FitResult:
    net: object
    history: list[dict]
    best_epoch: int
    seconds: float


# ----------------------------------------------------------------------------- data
def load_files(paths: list[Path], features: list[str] | None):
    """One frame from several reading files (features default to the first file's)."""
    import pandas as pd

    from worker.datafile import DataFileError, load_readings

    frames = []
    for p in paths:
        try:
            df, feats = load_readings(p, features, sort=False)
        except DataFileError as e:
            msg = str(e)
            if "no column for feature" in msg:
                raise TrainingError(f"unknown feature(s): {msg}") from None
            raise TrainingError(msg) from None
        features = feats
        frames.append(df)
    return pd.concat(frames, ignore_index=True), list(features or [])


def load_kafka(settings, features: list[str], since_ms: int | None, until_ms: int | None, topic: str | None = None,
               progress: bool = True, idle_s: float = 5.0):
    """Readings of a time range of the readings topic, as a frame (record time filters the range).

    Seeks to the beginning and filters by the record timestamps: the test broker answers
    ``offsets_for_times`` with 0 for any time, and a real cluster gives the same result.
    Rejected messages (what the worker would dead-letter) are counted and skipped.
    """
    import pandas as pd
    from kafka import TopicPartition

    from worker.codec import ReadingCodec
    from worker.core.readings import Reading
    from worker.kafka.clients import make_consumer

    topic = topic or settings.kafka.readings_topic
    codec = ReadingCodec(features, settings.kafka.max_message_bytes)
    consumer = make_consumer(settings.kafka, group_id=None, enable_auto_commit=False)
    rows: list[tuple] = []
    rejected: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.5)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TrainingError(f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        total = sum(end.values())
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="msg", desc=f"<- {topic}")
        last_data = time.monotonic()
        while any(consumer.position(tp) < end[tp] for tp in tps):
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            if not batch:
                if time.monotonic() - last_data > idle_s:
                    log.warning("no more records after %.0f s; stopping before the end offsets", idle_s)
                    break
                continue
            last_data = time.monotonic()
            for tp, recs in batch.items():
                for rec in recs:
                    if (since_ms is not None and rec.timestamp < since_ms) or (until_ms is not None and rec.timestamp >= until_ms):
                        continue
                    r = codec.decode(rec.value, tp.partition, rec.offset)
                    if isinstance(r, Reading):
                        rows.append((r.sensor_id, r.ts_ms, *r.values.tolist()))
                    else:
                        rejected[r.reason] = rejected.get(r.reason, 0) + 1
                if bar:
                    bar.update(len(recs))
        if bar:
            bar.close()
    finally:
        consumer.close()
    if rejected:
        log.warning("skipped %d unusable messages: %s", sum(rejected.values()), rejected)
    df = pd.DataFrame(rows, columns=["sensor_id", "ts_ms", *features])
    log.info("read %d readings of %d sensors from %s", len(df), df["sensor_id"].nunique() if len(df) else 0, topic)
    return df


def data_fingerprint(fleet: Fleet) -> str:
    """A short hash of the training arrays (same data, same hash)."""
    h = hashlib.sha256()
    h.update("|".join(fleet.ids).encode())
    h.update("|".join(fleet.features).encode())
    h.update(np.ascontiguousarray(fleet.raw).tobytes())
    h.update(np.ascontiguousarray(fleet.label).tobytes())
    return h.hexdigest()[:8]


def make_version(name: str, fleet: Fleet, now: datetime | None = None) -> str:
    """``<UTC time>-<data name>-<data hash>``, e.g. ``20261122T021500Z-fleet-3fa2c1d9``."""
    now = now or datetime.now(timezone.utc)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40].strip("-") or "data"
    return f"{now:%Y%m%dT%H%M%SZ}-{safe}-{data_fingerprint(fleet)}"


# ----------------------------------------------------------------------------- fitting
def _targets(fleet: Fleet):
    """Inputs x[t], targets x[t+1], and the weights of train and validation targets."""
    x = fleet.x
    s_, t_, _ = x.shape
    xin = x[:, :-1]
    y = x[:, 1:]
    t_next = np.arange(1, t_)[None, :]
    ok = fleet.normal[:, 1:]
    w_train = (ok & (t_next < fleet.val_start[:, None])).astype(np.float32)
    w_val = (ok & (t_next >= fleet.val_start[:, None])).astype(np.float32)
    return xin, y, w_train, w_val


def _val_loss(net, xin: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    out = predict_sequences(net, xin)
    se = np.mean((out - y) ** 2, axis=-1)
    return float((se * w).sum() / max(w.sum(), 1.0))


def predict_sequences(net, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The sequence network's output over whole sequences (S, T, F), in sensor batches."""
    outs = []
    for a in range(0, x.shape[0], batch):
        outs.append(np.asarray(net(x[a : a + batch].astype(np.float32), training=False)))
    return np.concatenate(outs, axis=0).astype(np.float64)


def fit(fleet: Fleet, cfg: TrainConfig) -> FitResult:
    """Fit the sequence network (``cfg.mode``) with early stopping on the validation loss."""
    import keras
    import tensorflow as tf

    from worker.core.artifact import build_network

    keras.utils.set_random_seed(cfg.seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # noqa: BLE001 - older TF
        pass
    f_ = len(fleet.features)
    net = build_network(f_, cfg.units, seed=cfg.seed)
    xin, y, w_train, w_val = _targets(fleet)
    if w_train.sum() == 0:
        raise TrainingError("no normal readings in the training part: every row is labeled anomalous or too short")
    if w_val.sum() == 0:
        raise TrainingError("no normal readings in the validation part: give more history per sensor")
    rng = np.random.default_rng(cfg.seed)
    batch = cfg.batch or (32 if cfg.mode == "stateful" else 64)
    if cfg.mode == "stateful":
        b = max(1, min(batch, fleet.n_sensors))
        trainer = build_network(f_, cfg.units, batch_size=b, stateful=True, steps=cfg.seq_len, seed=cfg.seed)
        trainer.set_weights(net.get_weights())
        lstms = [l for l in trainer.layers if l.__class__.__name__ == "LSTM"]
    elif cfg.mode == "windows":
        trainer = net
        batches = None
        lstms = []
    else:
        raise TrainingError(f"unknown training mode {cfg.mode!r} (stateful or windows)")
    trainer.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=1.0), loss="mse")

    history: list[dict] = []
    best, best_w, best_epoch, bad = np.inf, net.get_weights(), 0, 0
    t0 = time.monotonic()
    bar_cls = None
    if cfg.progress:
        from tqdm import tqdm as bar_cls
    for epoch in range(1, cfg.epochs + 1):
        xe, ye = _jitter(xin, y, fleet.valid()[:, :-1], cfg.jitter, rng)
        if cfg.mode == "windows":
            batches = _window_batches(xe, ye, w_train, cfg.seq_len, batch, rng)
        else:
            batches = _stateful_batches(xe, ye, w_train, b, cfg.seq_len)
        it = batches if bar_cls is None else bar_cls(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        losses = []
        for item in it:
            if item is None:  # next group of sensors: a new set of sequences
                for l in lstms:
                    l.reset_state()
                continue
            xb, yb, wb = item
            losses.append(float(trainer.train_on_batch(xb, yb, sample_weight=wb)))
        for l in lstms:
            l.reset_state()
        if trainer is not net:
            net.set_weights(trainer.get_weights())
        vl = _val_loss(net, xin, y, w_val)
        tl = float(np.mean(losses)) if losses else float("nan")
        history.append({"epoch": epoch, "loss": tl, "val_loss": vl})
        improved = vl < best * (1.0 - cfg.min_delta)
        log.info("epoch %d: loss %.4f, val_loss %.4f%s", epoch, tl, vl, " (best)" if improved else "")
        if improved:
            best, best_w, best_epoch, bad = vl, net.get_weights(), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                log.info("early stop: no better val_loss for %d epochs", cfg.patience)
                break
    net.set_weights(best_w)
    return FitResult(net, history, best_epoch, time.monotonic() - t0)


def _jitter(xin, y, valid, amount: float, rng: np.random.Generator):
    """Shift and stretch each sensor's scaled values a little (new draw every epoch).

    A sensor the model never saw is scaled by statistics learned online from its first
    readings, which are off by a fraction of a standard deviation; training on jittered
    scaling makes the network rely on the shape of the signal rather than on its exact
    level, so unseen sensors are not flagged merely for being scaled imperfectly.
    """
    if amount <= 0:
        return xin, y
    s_, _, f_ = xin.shape
    off = rng.normal(0.0, amount, (s_, 1, f_)).astype(np.float32)
    mul = np.exp(rng.normal(0.0, amount / 2, (s_, 1, f_))).astype(np.float32)
    m = valid[:, :, None]
    return (xin * mul + off) * m, (y * mul + off) * m


def _stateful_batches(xin, y, w, b: int, seq_len: int) -> list:
    """Chunks of a fixed batch of sensors in time order; ``None`` marks a new group (reset)."""
    s_, t_, f_ = xin.shape
    out: list = []
    for g in range(0, s_, b):
        idx = np.arange(g, g + b)
        real = idx < s_
        idx = np.where(real, idx, 0)
        xg, yg, wg = xin[idx], y[idx], w[idx] * real[:, None]
        last = int(np.flatnonzero(wg.any(axis=0)).max()) + 1 if wg.any() else 0
        if last == 0:
            continue
        n_chunks = -(-last // seq_len)
        pad = n_chunks * seq_len - t_
        if pad > 0:
            xg = np.pad(xg, ((0, 0), (0, pad), (0, 0)))
            yg = np.pad(yg, ((0, 0), (0, pad), (0, 0)))
            wg = np.pad(wg, ((0, 0), (0, pad)))
        out.append(None)
        for c in range(n_chunks):
            sl = slice(c * seq_len, (c + 1) * seq_len)
            out.append((xg[:, sl], yg[:, sl], wg[:, sl]))
    return out


def _window_batches(xin, y, w, seq_len: int, batch: int, rng: np.random.Generator, burn_in: int = 8) -> list:
    """Shuffled windows (zero state each) with the first ``burn_in`` steps out of the loss."""
    s_, t_, _ = xin.shape
    starts = []
    step = max(1, seq_len // 2)
    for s in range(s_):
        last = int(np.flatnonzero(w[s]).max()) + 1 if w[s].any() else 0
        for a in range(0, max(last - seq_len, 0) + 1, step):
            if w[s, a : a + seq_len].any():
                starts.append((s, a))
    order = rng.permutation(len(starts))
    out = []
    for k in range(0, len(order), batch):
        sel = [starts[i] for i in order[k : k + batch]]
        xb = np.stack([_pad_to(xin[s, a : a + seq_len], seq_len) for s, a in sel])
        yb = np.stack([_pad_to(y[s, a : a + seq_len], seq_len) for s, a in sel])
        wb = np.stack([_pad_to(w[s, a : a + seq_len], seq_len) for s, a in sel])
        wb[:, :burn_in] = 0.0
        out.append((xb, yb, wb))
    return out


def _pad_to(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) >= n:
        return a[:n]
    return np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1))


# ----------------------------------------------------------------------------- calibration
def calibrate(net, fleet: Fleet, cfg: TrainConfig) -> tuple[object, dict, dict]:
    """Calibration for the scorer from the validation part; returns (Calibration, metrics, arrays for plots)."""
    from training import calibrate as cal
    from training.metrics import series_scores, summarize
    from worker.core.artifact import Calibration
    from worker.core.adaptive import AdaptParams
    from worker.core.scorer import ScorerParams

    out = predict_sequences(net, fleet.x)
    bias = net.get_layer("head").get_weights()[1].astype(np.float64)
    expected = cal.expected_values(out, bias)
    valid = fleet.valid()
    mask = cal.calibration_mask(fleet.normal, fleet.in_validation())
    res_std = cal.residual_std(fleet.x.astype(np.float64), expected, mask)
    err = cal.errors(fleet.x.astype(np.float64), expected, res_std)
    e = err[mask]
    err_mean, err_std = float(e.mean()), float(max(e.std(), 1e-3))
    params = ScorerParams(0.5, cfg.warmup, cfg.short_window, cfg.long_window, err_mean, err_std**2)
    score, _, warming = cal.run_scorer(params, err, valid, threshold=1.0 - 1e-15)
    normal_scores = score[mask & ~warming]
    thr = cal.pick_threshold(normal_scores, cfg.false_alarm_rate)
    calib = Calibration(threshold=thr, warmup=cfg.warmup, short_window=cfg.short_window, long_window=cfg.long_window,
                        error_mean=err_mean, error_std=err_std, residual_std=res_std.tolist())
    params = ScorerParams(thr, cfg.warmup, cfg.short_window, cfg.long_window, err_mean, err_std**2)
    # level channel: the scale at which it alone flags at most false_alarm_rate of normal held-out readings
    level_scale = 0.0
    # with the fresh-state passes (below) the per-feature scales have no floor: the larger of both rules stands in for it
    floor = cal.NO_FLOOR if cfg.level_fresh and cfg.feature_scales else cal.LEVEL_SCALE_MIN
    if cfg.level_window > 0:
        z_lvl = cal.level_z_series(fleet.x, valid, cfg.warmup, cfg.long_window, cfg.level_window)[mask & ~warming]
        level_scale = cal.pick_level_scale(z_lvl.max(axis=-1), thr, len(fleet.features), cfg.false_alarm_rate)
        if cfg.feature_scales and level_scale > 0:  # and each feature's own (worker.core.adaptive: level_scales)
            calib.level_feature_scale = cal.pick_feature_scales(z_lvl, thr, cfg.false_alarm_rate, floor)
    calib.level_window = cfg.level_window if level_scale > 0 else 0
    calib.flat_window = cfg.flat_window  # on/off of the stuck-sensor check (stillness against own history)
    calib.flat_limit = 0.0
    adapt = AdaptParams(accept_after=cfg.accept_after, level_window=calib.level_window, level_scale=level_scale,
                        level_scales=tuple(calib.level_feature_scale))
    for n_pass in range(1, 1 + (cfg.level_passes if level_scale > 0 else 0)):
        # the pass above learned from every reading; live, the level statistics freeze while a sensor is
        # flagged, so the same rule is applied to the level z of a pass that scores as the live scorer does.
        # A larger scale flags less, so freezes less, so sees a smaller z: the plain iteration can swing
        # between two scales; the geometric mean of the old and the new scale converges to the fixed point.
        res = cal.run_adaptive(params, adapt, err, fleet.x, fleet.raw, valid, level_on=True, flat_on=cfg.flat_window > 0,
                               with_level=True)
        z_live = res[5][mask & ~res[2]]
        new_scale = cal.pick_level_scale(z_live.max(axis=-1), thr, len(fleet.features), cfg.false_alarm_rate)
        old = np.array([level_scale, *calib.level_feature_scale])
        level_scale = float(np.sqrt(level_scale * new_scale))
        if calib.level_feature_scale:
            new_f = cal.pick_feature_scales(z_live, thr, cfg.false_alarm_rate, floor)
            calib.level_feature_scale = [float(np.sqrt(a * b)) for a, b in zip(calib.level_feature_scale, new_f)]
        adapt = replace(adapt, level_scale=level_scale, level_scales=tuple(calib.level_feature_scale))
        log.info("level calibration, live pass %d: scale %.3f, per feature %s", n_pass, level_scale,
                 [round(v, 3) for v in calib.level_feature_scale])
        if np.all(np.abs(np.array([level_scale, *calib.level_feature_scale]) / old - 1.0) < 0.01):
            break
    calib.level_scale = level_scale
    fresh = {}
    if cfg.level_fresh and calib.level_feature_scale:  # as sensors start live, known to training or not, without a floor
        from training.calibrate_fresh import fresh_level_scales, larger_scales

        known, unseen, fresh = fresh_level_scales(net, fleet, params, adapt, res_std, bias, fleet.fleet_scaling()[1],
                                                  cfg.false_alarm_rate, cfg.flat_window > 0, cfg.level_passes)
        calib.level_feature_scale, calib.level_feature_scale_unseen = larger_scales(calib.level_feature_scale, known, unseen)
        unseen = calib.level_feature_scale_unseen
        adapt = replace(adapt, level_scales=tuple(calib.level_feature_scale), level_scales_unseen=tuple(unseen))
    score, flag, warming, _, accepted = cal.run_adaptive(params, adapt, err, fleet.x, fleet.raw, valid,
                                                         level_on=level_scale > 0, flat_on=cfg.flat_window > 0)
    inval = fleet.in_validation()
    normal_val = mask & ~warming
    by_channel = {}
    if normal_val.any():  # which channel flags the held-out normal readings (the threshold is the error channel's)
        for name, lv_on in (("error", False), ("error+level", True)):
            if lv_on and level_scale <= 0:
                continue
            f_ch = cal.run_adaptive(params, adapt, err, fleet.x, fleet.raw, valid, level_on=lv_on, flat_on=False)[1]
            by_channel[name] = float(f_ch[normal_val].mean())
        if cfg.flat_window > 0:
            by_channel["error+level+stuck"] = float(flag[normal_val].mean())
    metrics = {
        "calibration_readings": int(mask.sum()),
        "residual_std": res_std.tolist(),
        "error_mean": err_mean,
        "error_std": err_std,
        "level_scale": level_scale,
        "level_feature_scale": list(calib.level_feature_scale),
        "level_feature_scale_unseen": list(calib.level_feature_scale_unseen),
        "level_fresh_readings": fresh,
        "val_accepted_readings": int(accepted.sum()),
        "val_false_alarm_rate": float(flag[mask & ~warming].mean()) if (mask & ~warming).any() else 0.0,
        "val_false_alarm_by_channel": by_channel,
        "threshold_at_cap": bool(thr >= 1.0 - 1e-12),
    }
    if fleet.label[inval].any():
        per = [series_scores(fleet.label[s][inval[s]], flag[s][inval[s]]) for s in range(fleet.n_sensors)]
        summ = summarize(per)
        metrics["val_detection"] = {k: summ[k] for k in ("windows", "window_precision", "window_recall", "window_f1",
                                                          "median_delay", "false_alarms_per_1000", "point_f1")}
    arrays = {"expected": expected, "score": score, "flag": flag, "err": err}
    return calib, metrics, arrays


# ----------------------------------------------------------------------------- the whole run
def train(fleet: Fleet, cfg: TrainConfig, out_dir: Path, data_name: str, sources: list[str]) -> Path:
    """Fit, calibrate, save the artifact and its report; returns the artifact directory."""
    from worker.core import artifact as art

    log.info("training on %d sensors, %d readings (%d labeled anomalous, not in the loss), features %s, mode %s",
             fleet.n_sensors, int(fleet.valid().sum()), int(fleet.label.sum()), fleet.features, cfg.mode)
    res = fit(fleet, cfg)
    calib, cal_metrics, arrays = calibrate(res.net, fleet, cfg)
    version = make_version(data_name, fleet)
    mean, std = fleet.fleet_scaling()
    best = res.history[res.best_epoch - 1] if res.best_epoch else res.history[-1]
    metrics = {
        "val_loss": best["val_loss"],
        "train_loss": best["loss"],
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "fit_seconds": round(res.seconds, 2),
        **cal_metrics,
    }
    from training.checks import false_alarm_warning

    far_warning = false_alarm_warning(cal_metrics["val_false_alarm_rate"], cfg.false_alarm_rate,
                                      cal_metrics.get("val_false_alarm_by_channel"), cal_metrics.get("threshold_at_cap", False))
    metrics["warnings"] = [far_warning] if far_warning else []
    if far_warning:
        log.warning("%s: this model flags more normal readings than asked for%s", far_warning,
                    " (--strict: `latest` stays where it was)" if cfg.strict else
                    "; it becomes `latest` all the same (--strict refuses that)")
    manifest = art.Manifest(
        model_version=version,
        features=fleet.features,
        units=list(cfg.units),
        scaling=art.Scaling(mean=mean, std=std, sensors=fleet.scaling_dict()),
        calibration=calib,
        training={
            **fleet.summary,
            "sources": sources,
            "data_hash": data_fingerprint(fleet),
            "mode": cfg.mode,
            "seq_len": cfg.seq_len,
            "batch": cfg.batch or (32 if cfg.mode == "stateful" else 64),
            "learning_rate": cfg.learning_rate,
            "epochs": cfg.epochs,
            "patience": cfg.patience,
            "seed": cfg.seed,
            "false_alarm_rate": cfg.false_alarm_rate,
            "history": res.history,
        },
        metrics=metrics,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    refused = bool(cfg.strict and far_warning)
    path = art.save(Path(out_dir) / version, res.net, manifest, set_latest=not refused)
    try:
        from training.report import write_training_report

        write_training_report(path / "report", manifest, fleet, arrays)
    except Exception as e:  # noqa: BLE001 - a failed plot must not lose a trained model
        log.warning("could not write the training report: %s", e)
    from worker.fmt import fmt_threshold

    log.info("saved %s (val_loss %.4f, threshold %s, val false alarms %.2e, target %.2e); %s", path, metrics["val_loss"],
             fmt_threshold(calib.threshold), metrics["val_false_alarm_rate"], cfg.false_alarm_rate,
             f"{out_dir}/latest not moved" if refused else f"{out_dir}/latest points to it")
    if refused:
        raise CheckFailed(f"--strict: {far_warning}; the artifact is at {path} but {out_dir}/latest was not moved")
    return path


class CheckFailed(TrainingError):
    """``--strict``: the model was saved but misses a check, so ``latest`` was not moved (exit 6)."""


def parse_time(text: str | None) -> int | None:
    """ISO-8601 or epoch ms -> epoch ms (None stays None)."""
    if text is None:
        return None
    from worker.core.readings import BadTimestamp, parse_ts

    try:
        return parse_ts(text)
    except BadTimestamp as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", action="append", type=Path, default=[], help="CSV/Parquet file (sensor_id, ts, features[, label]); repeatable")
    p.add_argument("--from-kafka", action="store_true", help="read the readings topic instead (SLOTWATCH_KAFKA__*), filtered by --since/--until")
    p.add_argument("--since", default=None, help="with --from-kafka: first record time (ISO-8601 or epoch ms)")
    p.add_argument("--until", default=None, help="with --from-kafka: end record time, exclusive")
    p.add_argument("--topic", default=None, help="with --from-kafka: topic (default SLOTWATCH_KAFKA__READINGS_TOPIC)")
    p.add_argument("--out", required=True, type=Path, help="models folder: the artifact goes to OUT/<version>, OUT/latest points to it")
    p.add_argument("--features", default=None, help="comma-separated features (default: every column of the file; required with --from-kafka)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs}; early stopping)")
    p.add_argument("--patience", type=int, default=d.patience, help=f"epochs without a better validation loss before stopping (default {d.patience})")
    p.add_argument("--units", default=",".join(map(str, d.units)), help=f"LSTM units per layer (default {','.join(map(str, d.units))})")
    p.add_argument("--mode", choices=["windows", "stateful"], default=d.mode, help="shuffled windows (default) or stateful chunks in time order")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"chunk/window length in readings (default {d.seq_len})")
    p.add_argument("--batch", type=int, default=None, help="sensors (stateful, default 32) or windows (windows, default 64) per batch")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"Adam learning rate (default {d.learning_rate})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"latest share of each sensor's time held out (default {d.val_fraction})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"readings before a sensor can be flagged (default {d.warmup}; unseen sensors twice)")
    p.add_argument("--flat-window", type=int, default=d.flat_window, help=f"readings the flatline (stuck sensor) statistic looks at (default {d.flat_window}; 0 = off; at most SLOTWATCH_MODEL__RECENT_READINGS)")
    p.add_argument("--level-window", type=int, default=d.level_window, help=f"readings the level channel averages (default {d.level_window}; 0 = off)")
    p.add_argument("--level-passes", type=int, default=d.level_passes, help=f"re-calibrate the level scales on passes that score as live, freezing while flagged (default {d.level_passes}; 0 = off)")
    p.add_argument("--no-level-fresh", action="store_true", help="calibrate the level scales on the training sensors' whole sequences only (as before: mature statistics, floor 0.6), not also as known and unseen sensors start live (per feature the larger of both, no floor)")
    p.add_argument("--jitter", type=float, default=d.jitter, help=f"scaling jitter for robustness to unseen sensors' online scaling (default {d.jitter}; 0 = off)")
    p.add_argument("--false-alarm-rate", type=float, default=d.false_alarm_rate, help=f"share of normal validation readings the threshold may flag (default {d.false_alarm_rate})")
    p.add_argument("--min-readings", type=int, default=d.min_readings, help=f"refuse sensors with fewer readings (default {d.min_readings})")
    p.add_argument("--refuse-unsorted", action="store_true", help="refuse readings out of time order instead of sorting them (with a warning)")
    p.add_argument("--name", default=None, help="data name in the version (default: the first file's stem, or the topic)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same data + seed = same model)")
    p.add_argument("--strict", action="store_true",
                   help="if the validation false-alarm rate is above --false-alarm-rate, save the artifact but do not "
                        "move OUT/latest, and exit 6 (default: move it and warn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either when stderr is not a terminal)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    try:
        units = [int(u) for u in args.units.split(",") if u.strip()]
    except ValueError:
        raise TrainingError(f"--units must be comma-separated whole numbers, got {args.units!r}") from None
    if not units or any(u < 1 for u in units):
        raise TrainingError(f"--units must be positive, got {args.units!r}")
    from training.checks import check_config
    from worker.progress import want_progress

    cfg = TrainConfig(units=units, mode=args.mode, epochs=args.epochs, patience=args.patience, seq_len=args.seq_len,
                       batch=args.batch, learning_rate=args.learning_rate, val_fraction=args.val_fraction, seed=args.seed,
                       warmup=args.warmup, jitter=args.jitter, level_window=args.level_window, level_passes=args.level_passes, level_fresh=not getattr(args, "no_level_fresh", False), flat_window=args.flat_window, false_alarm_rate=args.false_alarm_rate, min_readings=args.min_readings,
                       unsorted="refuse" if args.refuse_unsorted else "sort", progress=want_progress(not args.no_progress),
                       strict=getattr(args, "strict", False))
    check_config(cfg)
    return cfg


def main(args: argparse.Namespace) -> int:
    from training.simulate import parse_features
    from worker.core.artifact import ArtifactError
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
        features = parse_features(args.features)
        cfg = config_from_args(args)
        if args.from_kafka:
            if args.data:
                raise TrainingError("give either --data files or --from-kafka, not both")
            features = features or settings.model.features
            if not features:
                raise TrainingError("--from-kafka needs --features (or SLOTWATCH_MODEL__FEATURES)")
            from kafka.errors import KafkaError

            try:
                df = load_kafka(settings, features, parse_time(args.since), parse_time(args.until), args.topic, progress=cfg.progress)
            except KafkaError as e:
                from worker.exits import EXIT_BROKER, describe_broker_error

                log.error("%s", describe_broker_error(e, settings.kafka.bootstrap_servers, "read the readings topic"))
                return EXIT_BROKER
            name = args.name or f"topic-{args.topic or settings.kafka.readings_topic}"
            sources = [f"kafka:{args.topic or settings.kafka.readings_topic}[{args.since or ''}..{args.until or ''})"]
        else:
            if not args.data:
                raise TrainingError("no training data: give --data FILE (repeatable) or --from-kafka")
            df, features = load_files(args.data, features)
            name = args.name or args.data[0].name.split(".")[0]
            sources = [str(p) for p in args.data]
        startup.loaded()  # the data is loaded
        fleet = prepare_fleet(df, features, val_fraction=cfg.val_fraction, min_readings=cfg.min_readings, unsorted=cfg.unsorted)
        train(fleet, cfg, args.out, name, sources)
    except CheckFailed as e:
        log.error("%s", e)
        from worker.exits import EXIT_CHECK_FAILED

        return EXIT_CHECK_FAILED
    except (TrainingError, ArtifactError, argparse.ArgumentTypeError) as e:
        log.error("%s", e)
        return 2
    return 0
