"""Two simple detectors to compare slotwatch with, River style (``learn_one`` / ``score_one``).

Both are calibrated like slotwatch: the threshold flags at most a given share of the
normal readings in the held-out (latest) part of the training data.

:class:`RollingZScore` — per feature, how many standard deviations the reading is from
the mean of the sensor's previous ``window`` readings; the score is the largest over features.

>>> z = RollingZScore(window=100)
>>> for v in [10.0, 11.0, 9.0, 10.5, 9.5] * 20:
...     z.learn_one({"temp": v})
>>> z.score_one({"temp": 10.2}) < 1.0, z.score_one({"temp": 30.0}) > 10
(True, True)

:class:`LSTMAutoencoder` — a stateless sequence autoencoder over the last ``window``
readings of a sensor (scaled per sensor); every new reading re-scores the whole window and
the score is the reconstruction error of the newest reading.  ``score_one`` runs the
network once per reading, as the textbook detector does; :meth:`LSTMAutoencoder.score_series`
does the same for a whole series in batches (identical numbers, much faster).

>>> ae = LSTMAutoencoder(n_features=1, window=8, units=4, seed=0)
>>> xs = np.sin(np.arange(40.0) / 3)[:, None]
>>> _ = ae.fit(np.lib.stride_tricks.sliding_window_view(xs, 8, axis=0).transpose(0, 2, 1), epochs=1)
>>> for x in xs[:7]:
...     ae.learn_one(x)
>>> s = ae.score_one(xs[7])          # the window is full now: a reconstruction error
>>> bool(s > 0), bool(np.isclose(s, ae.score_series(xs)[7], rtol=1e-4))
(True, True)
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from worker.fmt import fmt_threshold

log = logging.getLogger("slotwatch.baselines")


class RollingZScore:
    """Rolling z-score of one sensor (see module doc)."""

    def __init__(self, window: int = 100, min_std: float = 1e-9) -> None:
        self.window = window
        self.min_std = min_std
        self._buf: deque = deque(maxlen=window)

    def score_one(self, x: dict) -> float:
        if len(self._buf) < 2:
            return 0.0
        a = np.array([list(r.values()) for r in self._buf])
        v = np.array(list(x.values()))
        return float(np.max(np.abs(v - a.mean(axis=0)) / np.maximum(a.std(axis=0), self.min_std)))

    def learn_one(self, x: dict) -> None:
        self._buf.append(dict(x))

    @staticmethod
    def score_series(values: np.ndarray, window: int = 100, min_std: float = 1e-9) -> np.ndarray:
        """Scores of a (T, F) series, each reading against the ``window`` before it (vectorised).

        >>> v = np.array([[10.0], [11.0], [9.0], [10.5], [9.5]] * 20 + [[30.0]])
        >>> s = RollingZScore.score_series(v)
        >>> z = RollingZScore()
        >>> for r in v[:-1]:
        ...     z.learn_one({"temp": r[0]})
        >>> bool(np.isclose(s[-1], z.score_one({"temp": 30.0})))
        True
        """
        t_, f_ = values.shape
        c1 = np.concatenate([np.zeros((1, f_)), np.cumsum(values, axis=0)])
        c2 = np.concatenate([np.zeros((1, f_)), np.cumsum(values * values, axis=0)])
        idx = np.arange(t_)
        lo = np.maximum(idx - window, 0)
        n = (idx - lo)[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (c1[idx] - c1[lo]) / n
            var = np.maximum((c2[idx] - c2[lo]) / n - mean * mean, 0.0)
            z = np.abs(values - mean) / np.maximum(np.sqrt(var), min_std)
        z[n[:, 0] < 2] = 0.0
        return np.nan_to_num(z.max(axis=1), nan=0.0)


class LSTMAutoencoder:
    """A stateless LSTM autoencoder over sliding windows (see module doc)."""

    def __init__(self, n_features: int, window: int = 64, units: int = 32, seed: int = 0) -> None:
        import keras

        self.window = window
        self.n_features = n_features
        keras.utils.set_random_seed(seed)
        inp = keras.Input(shape=(window, n_features))
        h = keras.layers.LSTM(units)(inp)
        x = keras.layers.RepeatVector(window)(h)
        x = keras.layers.LSTM(units, return_sequences=True)(x)
        out = keras.layers.TimeDistributed(keras.layers.Dense(n_features))(x)
        self.model = keras.Model(inp, out, name="lstm_autoencoder")
        self.model.compile(optimizer=keras.optimizers.Adam(0.005, clipnorm=1.0), loss="mse")
        self._buf: deque = deque(maxlen=window)

    def fit(self, windows: np.ndarray, epochs: int = 8, batch: int = 128, seed: int = 0, progress: bool = False) -> list[float]:
        """Fit on (N, window, F) scaled windows of normal data; returns the loss per epoch."""
        rng = np.random.default_rng(seed)
        losses = []
        for ep in range(epochs):
            order = rng.permutation(len(windows))
            it = range(0, len(order), batch)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, desc=f"autoencoder epoch {ep + 1}/{epochs}", leave=False)
            ls = [float(self.model.train_on_batch(windows[order[k : k + batch]], windows[order[k : k + batch]])) for k in it]
            losses.append(float(np.mean(ls)))
        return losses

    def score_one(self, x_scaled: np.ndarray) -> float:
        """Reconstruction error of the newest reading after it joins the window (0 until the window is full)."""
        self.learn_one(x_scaled)
        if len(self._buf) < self.window:
            return 0.0
        w = np.asarray(self._buf, dtype=np.float32)[None]
        rec = np.asarray(self.model(w, training=False))[0]
        return float(np.sqrt(np.mean((rec[-1] - w[0, -1]) ** 2)))

    def learn_one(self, x_scaled: np.ndarray) -> None:
        if not self._buf or self._buf[-1] is not x_scaled:
            self._buf.append(np.asarray(x_scaled, dtype=np.float32))

    def score_series(self, xs: np.ndarray, batch: int = 1024) -> np.ndarray:
        """Scores of a (T, F) scaled series: every reading re-scores the window ending at it."""
        t_ = len(xs)
        out = np.zeros(t_)
        if t_ < self.window:
            return out
        win = np.lib.stride_tricks.sliding_window_view(xs.astype(np.float32), self.window, axis=0).transpose(0, 2, 1)
        for a in range(0, len(win), batch):
            w = win[a : a + batch]
            rec = np.asarray(self.model(w, training=False))
            out[self.window - 1 + a : self.window - 1 + a + len(w)] = np.sqrt(np.mean((rec[:, -1] - w[:, -1]) ** 2, axis=-1))
        return out


def _series(df, features):
    """Per sensor: (row positions, values (T, F)) in time order."""
    out = {}
    df = df.reset_index(drop=True)  # positions, whatever the caller's index
    for sid, g in df.groupby("sensor_id", sort=True):
        g = g.sort_values("ts_ms", kind="stable")
        out[str(sid)] = (g.index.to_numpy(), g[features].to_numpy(dtype=np.float64), g["label"].to_numpy() if "label" in g else np.zeros(len(g)))
    return out


def _threshold(scores_normal: np.ndarray, rate: float) -> float:
    s = np.sort(scores_normal)
    if not s.size:
        return np.inf
    k = int(np.floor(rate * s.size))
    return float(np.nextafter(s[s.size - 1 - k], np.inf))


class Baselines:
    """Both baselines fitted and calibrated on one training frame; :meth:`flags` scores others.

    Calibration: each threshold flags at most ``false_alarm_rate`` of the normal readings in
    the latest ``val_fraction`` of every training sensor (the rule slotwatch's threshold
    follows).  Each sensor's first ``warmup`` readings are never flagged (slotwatch does not
    flag an unseen sensor during its warm-up either), and the autoencoder scales each sensor
    by the mean/std of those readings (as slotwatch learns an unseen sensor's scaling).
    """

    names = ("rolling z-score (w=100)", "LSTM autoencoder (w=64)")

    def __init__(self, features: list[str], *, false_alarm_rate: float = 1e-4, val_fraction: float = 0.2, warmup: int = 192,
                 ae_epochs: int = 12, ae_max_windows: int = 40_000, seed: int = 0) -> None:
        self.features = list(features)
        self.false_alarm_rate = false_alarm_rate
        self.val_fraction = val_fraction
        self.warmup = warmup
        self.ae_epochs = ae_epochs
        self.ae_max_windows = ae_max_windows
        self.seed = seed
        self.thresholds: dict[str, float] = {}
        self.ae: LSTMAutoencoder | None = None

    def _scaled(self, v: np.ndarray) -> np.ndarray:
        head = v[: self.warmup]
        return (v - head.mean(axis=0)) / np.maximum(head.std(axis=0), 1e-9)

    def _normal_mask(self, lab: np.ndarray) -> np.ndarray:
        from training.calibrate import AFTER_ANOMALY

        n = len(lab)
        m = lab == 0
        bad = ~m
        for k in range(1, AFTER_ANOMALY + 1):
            m[k:] &= ~bad[:-k]
        m[: int(n * (1 - self.val_fraction))] = False
        m[: self.warmup] = False
        return m

    def _scores(self, name: str, v: np.ndarray) -> np.ndarray:
        if name == self.names[0]:
            return RollingZScore.score_series(v)
        return self.ae.score_series(self._scaled(v))

    def fit(self, train_df, progress: bool = False) -> "Baselines":
        train = _series(train_df, self.features)
        ae = LSTMAutoencoder(len(self.features), seed=self.seed)
        wins = []
        for _, v, lab in train.values():
            xs = self._scaled(v)
            cut = int(len(v) * (1 - self.val_fraction))
            if cut < ae.window:
                continue
            ok = (lab[:cut] == 0).astype(np.int8)
            sw = np.lib.stride_tricks.sliding_window_view(xs[:cut].astype(np.float32), ae.window, axis=0).transpose(0, 2, 1)
            clean = np.lib.stride_tricks.sliding_window_view(ok, ae.window).all(axis=1)
            wins.append(sw[clean][:: max(1, ae.window // 8)])
        wins = np.concatenate(wins)
        if len(wins) > self.ae_max_windows:
            wins = wins[np.random.default_rng(self.seed).choice(len(wins), self.ae_max_windows, replace=False)]
        losses = ae.fit(wins, epochs=self.ae_epochs, seed=self.seed, progress=progress)
        self.ae = ae
        log.info("LSTM autoencoder: %d training windows, loss per epoch %s", len(wins), [round(x, 4) for x in losses])
        for name in self.names:
            normal = [self._scores(name, v)[self._normal_mask(lab.copy())] for _, v, lab in train.values()]
            self.thresholds[name] = _threshold(np.concatenate(normal), self.false_alarm_rate)
            log.info("%s: threshold %s", name, fmt_threshold(self.thresholds[name]))
        return self

    def flags(self, test_df) -> dict[str, np.ndarray]:
        """Flags of every baseline, aligned with the rows of ``test_df``."""
        test = _series(test_df, self.features)
        out = {}
        for name in self.names:
            flags = np.zeros(len(test_df), bool)
            for pos, v, _ in test.values():
                s = self._scores(name, v)
                s[: self.warmup] = 0.0
                flags[pos] = s >= self.thresholds[name]
            out[name] = flags
        return out


def run_baselines(train_df, test_df, features: list[str], *, progress: bool = False, **kw) -> dict[str, np.ndarray]:
    """Fit both baselines on ``train_df`` and return their flags on ``test_df`` (see :class:`Baselines`)."""
    return Baselines(features, **kw).fit(train_df, progress=progress).flags(test_df)
