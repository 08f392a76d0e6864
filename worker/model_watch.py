"""Live model swap: the running worker takes over the version the models folder's `latest` names.

:class:`ModelWatch` sits beside the worker's poll loop; the worker calls three hooks:
``tick()`` once per loop turn, ``on_readings(cols, scores)`` after the current model
scored a poll's readings (columns in, score columns out), ``on_dropped(partition)`` when a partition leaves and
``on_rewind()`` when the worker reloads its state from the checkpoints.
``request_check()`` (SIGHUP) reads the pointer at the next turn instead of waiting for
``SLOTWATCH_HANDOVER__WATCH_INTERVAL_S``.

A handover goes through these stages, each a few milliseconds per loop turn, so the worker
keeps polling (no rebalance, no session timeout, no blind window):

1. **load** — on a thread: the artifact is loaded and checked (:func:`worker.core.artifact.load`;
   same features as the current model), and a :class:`~worker.core.detector.SlotDetector`
   is built beside the current one (the compiled step is traced there).  A candidate that
   fails is *refused*: one log line, ``slotwatch_model_candidates_total{outcome="refused_invalid"}``,
   ``slotwatch_model_candidate_refused`` 1; the current model goes on and the same pointer is
   not tried again until it changes.
2. **warm** — ``chunk_sensors`` sensors per turn are handed over
   (:func:`worker.core.handover.hand_over`: state rebuilt from each sensor's ring).  From
   then on the candidate also steps every reading of the sensors it holds (its outputs are
   not published), so it stays current while the rest is warmed.
3. **shadow** (``shadow_readings`` > 0) — the warmed candidate scores beside the current
   model for that many readings; flag rates, error distributions (``slotwatch_shadow_error``,
   for quantiles) and disagreement go to metrics.  If its flag
   rate is further than ``max_flag_rate_diff`` from the current one's, it is refused
   (``outcome="refused_shadow"``) unless ``force`` is set.
4. **switch** — at a checkpoint boundary: the worker flushes its outputs and writes a
   checkpoint under the old version, swaps the detector, and writes one under the new
   version.  Every reading is scored by exactly one published model: the ones before the
   boundary by the old, the ones after by the new.

Rolling back is moving `latest` back: the same handover towards the older version.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger("slotwatch.model_watch")


class ModelWatch:
    def __init__(self, worker) -> None:
        self.worker = worker
        self.settings = worker.settings.handover
        self.folder = Path(worker.settings.model.path)
        self._hup = threading.Event()
        self._next_check = time.monotonic() + self.settings.watch_interval_s
        self._pool: ThreadPoolExecutor | None = None
        self._load: Future | None = None
        self.refused_key: str | None = None
        self.stage = "idle"  # idle, loading, warming, shadow
        self.key: str | None = None  # what the pointer named when the candidate was taken
        self.candidate = None  # SlotDetector of the new model
        self.cand_artifact = None
        self.started = 0.0
        self.warmed = 0
        from worker.shadow import ShadowTally

        self.shadow = ShadowTally()
        self._info()

    # ------------------------------------------------------------------ hooks
    def request_check(self) -> None:
        """Read the pointer at the next loop turn (SIGHUP)."""
        self._hup.set()

    def tick(self) -> None:
        try:
            if self.stage == "idle":
                now = time.monotonic()
                if self._hup.is_set() or now >= self._next_check:
                    self._hup.clear()
                    self._next_check = now + self.settings.watch_interval_s
                    self._check()
            elif self.stage == "loading":
                if self._load is not None and self._load.done():
                    self._loaded()
            elif self.stage == "warming":
                self._warm_chunk()
            elif self.stage == "shadow":
                if missing_rows(self.worker.detector, self.candidate) is not None:
                    self.stage = "warming"  # a partition arrived meanwhile
                elif self.shadow.n >= self.settings.shadow_readings:
                    self._decide()
        except Exception as e:  # noqa: BLE001 - a failed handover must never stop the worker
            log.exception("model handover failed")
            self._refuse("refused_invalid", f"handover failed: {e}")

    def on_readings(self, cols, scores) -> None:
        """Step the candidate over the poll's readings (columns) of the sensors it holds (unpublished); the
        current model's ``scores`` (ScoreColumns) become objects only while a candidate runs."""
        if self.candidate is None or self.stage not in ("warming", "shadow") or cols is None or not len(cols):
            return
        try:
            self._shadow(cols, scores)
        except Exception as e:  # noqa: BLE001 - the candidate failing must never stop the worker
            log.exception("model candidate failed on a poll's readings")
            self._refuse("refused_invalid", f"scoring in shadow failed: {e}")

    def on_rewind(self) -> None:
        """The worker reloaded its state from the checkpoints: the candidate's copy is ahead; warm it again."""
        if self.candidate is not None and self.stage in ("warming", "shadow"):
            self.candidate.clear()
            self.warmed = 0
            self.shadow.reset()
            self.stage = "warming"

    def _shadow(self, cols, scores) -> None:
        index = self.candidate.table.index
        pick = [i for i, sid in enumerate(cols.sensor_id) if sid in index]
        if not pick:
            return
        got = self.candidate.process([cols[i] for i in pick])
        if self.stage == "shadow":
            self.shadow.add([scores.row(i) for i in pick], got, self.worker.metrics)

    def on_dropped(self, partition: int) -> None:
        if self.candidate is not None:
            self.candidate.drop_partition(partition)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ stages
    def _check(self) -> None:
        from worker.core import artifact as art

        try:
            target = art.resolve(self.folder)
            key = str(target.resolve())
        except art.ArtifactError as e:
            target, key = None, f"error: {e}"
        current = str(Path(self.worker.artifact.path).resolve()) if self.worker.artifact.path is not None else None
        if key == current:
            if self.refused_key is not None:
                self.refused_key = None
                self.worker.metrics.candidate_refused.set(0)
            return
        if key == self.refused_key:
            return
        self.key = key
        if target is None:
            self._refuse("refused_invalid", key[len("error: "):])
            return
        log.info("model candidate %s found behind %s/latest: loading it beside %s", target.name, self.folder,
                 self.worker.model_version)
        self.stage = "loading"
        self.started = time.monotonic()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._load = self._pool.submit(build_candidate, target, self.worker)
        self._info()

    def _loaded(self) -> None:
        fut, self._load = self._load, None
        try:
            a, det = fut.result()
        except Exception as e:  # noqa: BLE001 - ArtifactError and anything keras raises
            self._refuse("refused_invalid", str(e))
            return
        self.cand_artifact, self.candidate = a, det
        self.warmed = 0
        self.shadow.reset()
        self.stage = "warming"
        log.info("model candidate %s loaded (%.1f s); warming %d sensors", a.version, time.monotonic() - self.started,
                 self.worker.detector.table.n_rows)
        self._info()

    def _warm_chunk(self) -> None:
        from worker.core.handover import hand_over

        missing = missing_rows(self.worker.detector, self.candidate)
        if missing is not None and len(missing):
            chunk = missing[: self.settings.chunk_sensors]
            n = hand_over(self.worker.detector, self.candidate, chunk)
            self.warmed += n
            self.worker.metrics.handover_warmed.labels("swap").inc(n)
            if len(missing) > len(chunk):
                return
        if self.settings.shadow_readings > 0:
            self.stage = "shadow"
            log.info("model candidate %s: %d sensors warmed; scoring %d readings in shadow", self.cand_artifact.version,
                     self.warmed, self.settings.shadow_readings)
            self._info()
        else:
            self._switch("promoted")

    def _decide(self) -> None:
        ok, what = self.shadow.verdict(self.settings.max_flag_rate_diff)
        if ok:
            log.info("model candidate %s passed the shadow check: %s", self.cand_artifact.version, what)
            self._switch("promoted")
        elif self.settings.force:
            log.warning("model candidate %s failed the shadow check (%s); promoted anyway (SLOTWATCH_HANDOVER__FORCE)",
                        self.cand_artifact.version, what)
            self._switch("forced")
        else:
            self._refuse("refused_shadow", f"{what}; set SLOTWATCH_HANDOVER__FORCE=true to promote it anyway, "
                                           "or move `latest` back")

    def _switch(self, outcome: str) -> None:
        w, cand, a = self.worker, self.candidate, self.cand_artifact
        if missing_rows(self.worker.detector, self.candidate) is not None:
            self.stage = "warming"
            return
        old = swap_at_checkpoint(w, cand, a)
        if old is None:
            return
        m = w.metrics
        m.candidates.labels(outcome).inc()
        m.candidate_refused.set(0)
        m.handover_seconds.set(time.monotonic() - self.started)
        self.refused_key = None
        log.info("model %s now in use (was %s): %d sensors handed over in %.1f s", a.version, old, self.warmed,
                 time.monotonic() - self.started)
        self._reset()

    def _refuse(self, outcome: str, why: str) -> None:
        version = self.cand_artifact.version if self.cand_artifact is not None else (self.key or "?")
        log.error("model candidate %s refused (%s): %s; model %s goes on", version, outcome, why, self.worker.model_version)
        m = self.worker.metrics
        m.candidates.labels(outcome).inc()
        m.candidate_refused.set(1)
        self.refused_key = self.key
        self._reset()

    def _reset(self) -> None:
        self.stage = "idle"
        self.candidate = self.cand_artifact = None
        self.key = None
        self._info()

    def _info(self) -> None:
        w = self.worker
        mf = w.artifact.manifest
        cand = self.cand_artifact.version if self.cand_artifact is not None else ""
        w.metrics.model.info({"model_version": w.model_version, "features": ",".join(w.features),
                              "units": ",".join(map(str, mf.units)), "path": str(w.artifact.path),
                              "candidate": cand, "candidate_stage": self.stage})


def build_candidate(target: Path, worker):
    """On the loader thread: load, check, and build the candidate's detector (compiles its step)."""
    from worker.core import artifact as art
    from worker.core.factory import detector_from_settings

    w = worker
    a = art.load(target, features=w.features)  # other features: cannot take over these sensors
    if a.manifest.model_version == w.model_version:
        raise art.ArtifactError(f"{target} has the version in use ({w.model_version}) at another path")
    det = detector_from_settings(a, w.settings)  # as the running one was built (scoring, episodes, limits too)
    det.engine.warm(np.zeros((det.slots, det.table.recent, det.n_features), np.float32),
                    np.zeros((det.slots, det.table.recent), bool))  # compile the handover here, not in the poll loop
    return a, det


def swap_at_checkpoint(w, cand, a) -> str | None:
    """Switch the worker to the candidate at a checkpoint boundary; the old version, or None to retry later.

    Every output so far is acknowledged and checkpointed under the old version, the detector is
    swapped, and every partition is checkpointed again under the new one.
    """
    if w.restored and not w.checkpoints.round(sorted(w.restored), deadline=time.monotonic() + 10.0):
        log.warning("model candidate %s: checkpoint before the switch did not complete; retrying", a.version)
        return None
    old = w.model_version
    cand.adopt_silence(w.detector)  # issue 16: the silence tracker goes on with the new detector
    w.detector, w.artifact, w.model_version = cand, a, a.version
    w.telemetry.reset_stats()
    w.checkpointed.clear()  # the next round writes every partition under the new version
    if w.restored:
        w.checkpoints.round(sorted(w.restored), deadline=time.monotonic() + 10.0)
    return old


def missing_rows(old, cand) -> np.ndarray | None:
    """Rows of the current detector's sensors the candidate does not hold yet (None: it holds them all)."""
    if old.table.n_rows == cand.table.n_rows:  # the candidate's rows are always a subset of the current ones
        return None
    index = cand.table.index
    return np.fromiter((r for r, sid in enumerate(old.table.ids) if sid not in index), np.int64)
