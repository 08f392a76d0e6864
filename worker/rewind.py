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
    """The core (or encoding its results) raised on ``readings``; ``single``: on that one reading alone."""

    def __init__(self, error: BaseException, readings, single: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.readings = list(readings)
        self.single = single and len(self.readings) == 1


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

    def score(self, detector, readings, outputs) -> tuple[list, list]:
        """The core's results for ``readings`` and ``outputs(results)``, or :class:`CoreFailure`.

        Readings inside a suspect range go through the core one at a time, so a failure names
        its reading.
        """
        if not readings:
            return [], []
        if not self.suspect:
            try:
                results = detector.process(readings)
                return results, outputs(results)
            except Exception as e:  # noqa: BLE001
                raise CoreFailure(e, readings) from e
        results, batch = [], []
        for r in readings:
            lo, hi = self.suspect.get(r.partition, (0, -1))
            if lo <= r.offset <= hi:
                if batch:
                    try:
                        results += detector.process(batch)
                    except Exception as e:  # noqa: BLE001
                        raise CoreFailure(e, batch) from e
                    batch = []
                try:
                    one = detector.process([r])
                    outputs(one)
                except Exception as e:  # noqa: BLE001
                    raise CoreFailure(e, [r], single=True) from e
                results += one
            else:
                batch.append(r)
        try:
            if batch:
                results += detector.process(batch)
            return results, outputs(results)
        except Exception as e:  # noqa: BLE001
            raise CoreFailure(e, readings) from e

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
        if failure.single:
            r = failure.readings[0]
            self.poison[(r.partition, r.offset)] = describe(e)
            log.error("reading at partition %d offset %d made the core fail (%s); it goes to the dead-letter topic "
                      "(internal_error) and the state is reloaded", r.partition, r.offset, describe(e),
                      exc_info=e, extra={"partition": r.partition, "offset": r.offset, "sensor_id": r.sensor_id})
        else:
            for r in failure.readings:
                lo, hi = self.suspect.get(r.partition, (r.offset, r.offset))
                self.suspect[r.partition] = (min(lo, r.offset), max(hi, r.offset))
            log.error("the core failed on a poll of %d readings (%s); reloading the state from the checkpoints and "
                      "replaying that poll one reading at a time", len(failure.readings), describe(e), exc_info=e)
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
