"""Structured logging: text for people, JSON (one object per line) for log pipelines.

Fields passed with ``extra=`` (for example ``sensor_id``, ``partition``, ``offset``) appear
as keys in JSON and as ``key=value`` pairs in text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        d.update(_extras(record))
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        s = super().format(record)
        ex = _extras(record)
        if ex:
            s += " " + " ".join(f"{k}={v}" for k, v in ex.items())
        return s


def setup_logging(settings=None, *, level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger from :class:`worker.settings.LogSettings` (or explicit values)."""
    level = level or (settings.level if settings else "INFO")
    fmt = fmt or (settings.format if settings else "text")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("kafka", "tensorflow", "absl", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if level != "DEBUG":  # kafka-python logs every refused connection at ERROR; slotwatch says it once, itself
        logging.getLogger("kafka.net").setLevel(logging.CRITICAL)
