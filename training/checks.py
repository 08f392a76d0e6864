"""Checks around a training run: options that cannot work (refused before any work, exit 2)
and results that miss what was asked for (warned about, or refused with ``--strict``).

>>> from training.train import TrainConfig
>>> check_config(TrainConfig(epochs=0))
Traceback (most recent call last):
...
training.fleet.TrainingError: --epochs must be at least 1, got 0
>>> false_alarm_warning(1.75e-4, 1e-4)
'validation false-alarm rate 1.75e-04 is above the target --false-alarm-rate 1.00e-04 (1.75x)'
>>> false_alarm_warning(0.5e-4, 1e-4) is None
True
>>> print(false_alarm_warning(8.4e-3, 1e-4, {"error": 1e-4, "error+level": 8.3e-3}, at_cap=True))
validation false-alarm rate 8.40e-03 is above the target --false-alarm-rate 1.00e-04 (84x); by channel: error alone 1.00e-04, error+level 8.30e-03; the error threshold is at its cap (1 - 1e-12): the held-out errors are heavy-tailed
"""

from __future__ import annotations

from training.fleet import TrainingError


def check_config(cfg) -> None:
    """Refuse a :class:`training.train.TrainConfig` that cannot train, naming the option."""
    rules = (
        ("--epochs", cfg.epochs, cfg.epochs >= 1, "must be at least 1"),
        ("--patience", cfg.patience, cfg.patience >= 1, "must be at least 1"),
        ("--seq-len", cfg.seq_len, cfg.seq_len >= 2, "must be at least 2"),
        ("--batch", cfg.batch, cfg.batch is None or cfg.batch >= 1, "must be at least 1"),
        ("--learning-rate", cfg.learning_rate, cfg.learning_rate > 0, "must be above 0"),
        ("--val-fraction", cfg.val_fraction, 0 < cfg.val_fraction < 1, "must be between 0 and 1"),
        ("--warmup", cfg.warmup, cfg.warmup >= 0, "must not be negative"),
        ("--flat-window", cfg.flat_window, cfg.flat_window >= 0, "must not be negative"),
        ("--jitter", cfg.jitter, cfg.jitter >= 0, "must not be negative"),
        ("--false-alarm-rate", cfg.false_alarm_rate, 0 < cfg.false_alarm_rate < 1, "must be between 0 and 1"),
        ("--min-readings", cfg.min_readings, cfg.min_readings >= 2, "must be at least 2"),
    )
    for option, value, ok, rule in rules:
        if not ok:
            raise TrainingError(f"{option} {rule}, got {value}")


def false_alarm_warning(measured: float, target: float, by_channel: dict[str, float] | None = None,
                        at_cap: bool = False) -> str | None:
    """A warning when the calibrated false-alarm rate on the validation readings is above the target.

    The threshold is picked so that at most ``target`` of the held-out normal readings score
    above it; the measured rate can still be higher when many normal readings share the same
    top score (a saturated score cannot be split by any threshold), when the threshold hits
    its floor or cap, or when the level channel or the stuck check flag normal readings too
    (the threshold is picked on the error channel; each other channel is calibrated on its own,
    so their flags add up).  ``by_channel``: the rate with the channels named (cumulative, e.g.
    ``error``, ``error+level``), so the warning says which channel it is; ``at_cap``: the
    threshold hit its cap.
    """
    if measured is None or target is None or not measured > target:
        return None
    msg = (f"validation false-alarm rate {measured:.2e} is above the target --false-alarm-rate {target:.2e} "
           f"({measured / target:.3g}x)")
    if by_channel:
        msg += "; by channel: " + ", ".join(f"{k}{' alone' if '+' not in k else ''} {v:.2e}" for k, v in by_channel.items())
    if at_cap:
        msg += "; the error threshold is at its cap (1 - 1e-12): the held-out errors are heavy-tailed"
    return msg
