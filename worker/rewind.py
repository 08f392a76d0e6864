"""Recovery from an unexpected error in the core (issue 10): rewind to the checkpoints and replay.

The failed call may have changed some sensors' state, so the whole state is reloaded from
the newest checkpoints (the in-flight one included) and every partition is sought back to
where they start; the readings since then are applied again, which yields the state of
before the failure (effectively-once, as after a kill -9).  The failed poll's offsets become a
*suspect range*, replayed one reading at a time; a reading that fails alone is marked
*poison* (rewind again) and goes to the dead-letter topic as ``internal_error`` with the
exception's class and message.  Nothing of the failed poll was counted or sent.
"""

from __future__ import annotations

import logging

log = logging.getLogger("slotwatch.worker")


class CoreFailure(Exception):
    """The core (or encoding its results) raised on ``rows`` (:class:`~worker.core.columns.ReadingColumns`);
    ``single``: on that one reading alone."""

    def __init__(self, error: BaseException, rows, single: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.rows = rows
        self.single = single and len(rows) == 1


def describe(e: BaseException) -> str:
    """``"ExceptionClass: message"`` for the dead letter's ``detail`` header."""
    text = str(e)
    return f"{type(e).__name__}: {text[:500]}" if text else type(e).__name__


class Rewinder:
    """Per partition: the first offset read since it was restored without a checkpoint (where a
    rewind starts), offsets whose reading made the core fail, and suspect offset ranges."""

    def __init__(self, app) -> None:
        self.app = app
        self.origin: dict[int, int] = {}
        self.poison: dict[tuple[int, int], str] = {}
        self.suspect: dict[int, tuple[int, int]] = {}

    def score(self, detector, cols, outputs) -> tuple:
        """The core's :class:`~worker.core.columns.ScoreColumns` for ``cols`` and ``outputs(scores)``, or
        :class:`CoreFailure`.

        Readings inside a suspect range go through the core one at a time, so a failure names
        its reading; the runs between them go through in one call each, as before.
        """
        import numpy as np

        if not len(cols):
            return None, []
        alone = self._suspects(cols)
        if alone is None:
            try:
                sc = detector.process_columns(cols)
                return sc, outputs(sc)
            except Exception as e:  # noqa: BLE001
                raise CoreFailure(e, cols) from e
        from worker.core.columns import ScoreColumns

        sc = ScoreColumns.empty(cols, detector.n_features, detector.threshold)
        start = 0
        for k in [*alone.tolist(), len(cols)]:
            if start < k:  # the run of readings before the next suspect one
                run = np.arange(start, k)
                part = take(cols, run)
                try:
                    scatter(sc, detector.process_columns(part), run)
                except Exception as e:  # noqa: BLE001
                    raise CoreFailure(e, part) from e
            if k < len(cols):
                one = take(cols, np.array([k]))
                try:
                    got = detector.process_columns(one)
                    outputs(got)
                except Exception as e:  # noqa: BLE001
                    raise CoreFailure(e, one, single=True) from e
                scatter(sc, got, np.array([k]))
            start = k + 1
        try:
            return sc, outputs(sc)
        except Exception as e:  # noqa: BLE001
            raise CoreFailure(e, cols) from e

    def _suspects(self, cols):
        """Rows of ``cols`` inside a suspect range (ascending), or None when there is none."""
        import numpy as np

        if not self.suspect:
            return None
        m = np.zeros(len(cols), bool)
        for p, (lo, hi) in self.suspect.items():
            m |= (cols.partition == p) & (cols.offset >= lo) & (cols.offset <= hi)
        return np.nonzero(m)[0] if m.any() else None

    def passed(self, applied: dict[int, int]) -> None:
        """Drop the suspect ranges every reading of which has been applied again."""
        if self.suspect:
            self.suspect = {p: r for p, r in self.suspect.items() if applied.get(p, -1) < r[1]}

    def forget(self, p: int) -> None:
        self.origin.pop(p, None)
        self.suspect.pop(p, None)
        if self.poison:
            self.poison = {k: v for k, v in self.poison.items() if k[0] != p}

    def rewind(self, failure: CoreFailure) -> None:
        """Reload the state from the checkpoints and seek back (see the module's description)."""
        app = self.app
        e = failure.error
        app.metrics.rewinds.inc()
        rows = failure.rows
        if failure.single:
            p, o, sid = int(rows.partition[0]), int(rows.offset[0]), rows.sensor_id[0]
            self.poison[(p, o)] = describe(e)
            log.error("reading at partition %d offset %d made the core fail (%s); it goes to the dead-letter topic "
                      "(internal_error) and the state is reloaded", p, o, describe(e),
                      exc_info=e, extra={"partition": p, "offset": o, "sensor_id": sid})
        else:
            import numpy as np

            for p in np.unique(rows.partition).tolist():
                offs = rows.offset[rows.partition == p]
                lo, hi = self.suspect.get(p, (int(offs.min()), int(offs.max())))
                self.suspect[p] = (min(lo, int(offs.min())), max(hi, int(offs.max())))
            log.error("the core failed on a poll of %d readings (%s); reloading the state from the checkpoints and "
                      "replaying that poll one reading at a time", len(rows), describe(e), exc_info=e)
        self.reload()

    def reload(self) -> None:
        """Reload every owned partition's state from its newest checkpoint and seek back there (also the
        exactly-once abort path, :mod:`worker.checkpointing.transactional`)."""
        app = self.app
        ck, parts = app.checkpoints, app.partitions
        ck.reap(wait=True)
        owned = sorted(parts.restored)
        app.detector.clear()
        if app.watch is not None:
            app.watch.on_rewind()
        parts.clear()
        ck.reset()
        app.telemetry.reset_stats()
        try:
            parts.assigned([app.source.tp(p) for p in owned])
        except Exception as e2:  # noqa: BLE001 - cannot reload: stop (exit 3); a restart replays from the checkpoints
            from worker.partitions import FatalCheckpointError

            log.exception("reloading the checkpoints after a core failure failed")
            app.fail(FatalCheckpointError(f"reloading the checkpoints after a core failure failed: {e2}"))
            return
        for p in owned:
            if p not in ck.checkpointed and p in self.origin and p in parts.restored:
                app.source.seek(app.source.tp(p), self.origin[p])
                parts.applied[p] = self.origin[p] - 1


def take(cols, idx):
    """Rows ``idx`` (ascending positions) of a :class:`~worker.core.columns.ReadingColumns`."""
    from worker.core.columns import ReadingColumns

    pos = idx.tolist()
    where = {i: k for k, i in enumerate(pos)} if cols.unfit else {}
    return ReadingColumns([cols.sensor_id[i] for i in pos], cols.ts_ms[idx], cols.values[idx], cols.reset[idx],
                          cols.partition[idx], cols.offset[idx],
                          None if cols.labels is None else [cols.labels[i] for i in pos],
                          {where[i]: u for i, u in cols.unfit.items() if i in where})


_ROW_FIELDS = ("status", "score", "surprise", "error", "is_anomaly", "warming_up", "accepted", "expected", "feature_z")


def scatter(sc, part, idx) -> None:
    """Write the :class:`~worker.core.columns.ScoreColumns` ``part`` of rows ``idx`` into ``sc``."""
    for name in _ROW_FIELDS:
        getattr(sc, name)[idx] = getattr(part, name)
    pos = idx.tolist()
    for j, d in part.details.items():
        sc.details[pos[j]] = d
    for j, ev in part.episodes.items():
        sc.episodes[pos[j]] = ev
