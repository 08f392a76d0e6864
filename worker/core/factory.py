"""One place that builds the scoring core from settings, so every command scores alike.

``slotwatch run`` (:mod:`worker.app`, and a live model swap), ``slotwatch replay``,
``slotwatch evaluate``, the benchmarks and the tests that mean "as the worker builds it"
all call :func:`detector_from_settings`.  It takes the settings *object* (a
:class:`worker.settings.Settings`, or anything with the same sections); reading the
environment stays at the edges.

>>> from types import SimpleNamespace as NS
>>> s = NS(model=NS(slots=8, when_full="reject", max_gap_s=60.0, threshold=None, warmup=None, recent_readings=4),
...        scoring=None, episodes=NS(quiet_readings=12, quiet_s=0.0, top_features=2),
...        limits=NS(max_sensors=None, max_sensor_id_bytes=64))
>>> kw = detector_kwargs(s, slots=16)
>>> kw["slots"], kw["when_full"], kw["max_gap_ms"], kw["recent"], kw["episodes"].quiet_readings
(16, 'reject', 60000, 4, 12)
"""

from __future__ import annotations

from worker.core.detector import SlotDetector
from worker.core.episodes import EpisodeParams
from worker.core.silence import tracker_from


def detector_kwargs(settings, training: dict | None = None, **overrides) -> dict:
    """The :class:`~worker.core.detector.SlotDetector` keyword arguments of ``settings``; ``overrides`` win.

    ``training``: the artifact manifest's training summary (seeds the silence tracker's cadences)."""
    m, ep = settings.model, settings.episodes
    limits = getattr(settings, "limits", None)
    kw = dict(
        slots=m.slots,
        when_full=m.when_full,
        max_gap_ms=int(m.max_gap_s * 1000),
        threshold=m.threshold,
        warmup=m.warmup,
        recent=m.recent_readings,
        scoring=getattr(settings, "scoring", None),
        episodes=EpisodeParams(int(ep.quiet_readings), float(ep.quiet_s), int(ep.top_features)),
    )
    if limits is not None:
        kw.update(max_sensors=limits.max_sensors, max_sensor_id_bytes=limits.max_sensor_id_bytes)
    silence = getattr(settings, "silence", None)
    if silence is not None:  # a new tracker per detector: it holds state
        kw["silence"] = tracker_from(silence, training)
    kw.update(overrides)
    return kw


def detector_from_settings(artifact, settings, **overrides):
    """The detector the worker runs for ``artifact`` under ``settings`` (``overrides``: e.g. ``slots``, ``threshold``)."""
    return SlotDetector(artifact, **detector_kwargs(settings, artifact.manifest.training, **overrides))
