"""The scoring core's hooks for the silence tracker (:mod:`worker.core.silence`, issue 16).

A mixin of :class:`worker.core.detector.SlotDetector`: checkpoint meta per partition, restore,
take-over on a live model swap, and eviction of sensors that stay known as silent.
"""

from __future__ import annotations

import numpy as np

#: the state-table columns of the silence tracker (worker.core.silence)
SILENCE_COLUMNS = ("sil_last_ts", "sil_stream_ts", "cad_n", "cad_log", "cad_dev", "sil_due_ts")


class SilenceHooksMixin:
    """What the detector does for its silence tracker (``self.silence``, None when off)."""

    def silence_meta(self, partition: int) -> dict:
        """Checkpoint meta of the silence tracker for ``partition`` ({} when it is off)."""
        return {} if self.silence is None else {"silence": self.silence.export_meta(partition)}

    def restore_silence(self, partition: int, meta: dict | None) -> None:
        """After :meth:`import_partition`: rebuild the partition's silence state from its checkpoint."""
        if self.silence is not None:
            self.silence.restore(self.table, partition, (meta or {}).get("silence"))

    def adopt_silence(self, old: "SlotDetector") -> None:
        """A live model swap (issue 15): take over ``old``'s silence tracker and its per-sensor columns
        (the candidate's copies stopped when it was warmed; ``old`` tracked every reading since)."""
        sil = old.silence
        if sil is None:
            return
        self.silence = sil
        n = old.table.n_rows
        index = self.table.index
        pairs = [(r, index[sid]) for r, sid in enumerate(old.table.ids[:n]) if sid in index]
        if pairs:
            src = np.fromiter((a for a, _ in pairs), np.int64, len(pairs))
            dst = np.fromiter((b for _, b in pairs), np.int64, len(pairs))
            for name in SILENCE_COLUMNS:
                self.table.cols[name][dst] = old.table.cols[name][src]
        for p in sorted(set(sil.stream) | set(sil.heaps)):
            sil.restore(self.table, p, sil.export_meta(p))  # heaps rebuilt over this table, same open episodes

    def silence_evicted(self, rows: np.ndarray) -> None:
        """Call before dropping rows of sensors for good (a sensor cap's eviction): the silence
        tracker keeps their last-seen records, so a silent one stays known as silent."""
        if self.silence is not None:
            self.silence.evicted(self.table, rows)

