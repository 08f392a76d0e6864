"""The shadow comparison of a live model swap (:mod:`worker.model_watch`, stage 3): the
candidate scores beside the current model; flag rates, errors and disagreement are tallied
here and go to the ``slotwatch_shadow_*`` metrics."""

from __future__ import annotations


class ShadowTally:
    """Readings both models scored, how many each flagged, and on how many they disagreed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = self.cur = self.cand = self.diff = 0

    def add(self, current, candidate, metrics) -> None:
        """Pairs of the current model's and the candidate's results of the same readings."""
        from worker.core.readings import Score
        from worker.metrics import observe_many

        cur_flag = cand_flag = diff = n = 0
        cur_err, cand_err = [], []
        for o, c in zip(current, candidate):
            if isinstance(o, Score) and isinstance(c, Score):
                n += 1
                cur_flag += o.is_anomaly
                cand_flag += c.is_anomaly
                diff += o.is_anomaly != c.is_anomaly
                cur_err.append(o.error)
                cand_err.append(c.error)
        self.n += n
        self.cur += cur_flag
        self.cand += cand_flag
        self.diff += diff
        m = metrics
        observe_many(m.shadow_error.labels("current"), cur_err)
        observe_many(m.shadow_error.labels("candidate"), cand_err)
        m.shadow_readings.set(self.n)
        if self.n:
            m.shadow_flag_rate.labels("current").set(self.cur / self.n)
            m.shadow_flag_rate.labels("candidate").set(self.cand / self.n)
            m.shadow_disagree.set(self.diff / self.n)

    def verdict(self, bound: float) -> tuple[bool, str]:
        """(flag rates within ``bound`` of each other, a line saying what was measured)."""
        n = max(self.n, 1)
        cur, cand = self.cur / n, self.cand / n
        what = (f"flag rate {cand:.4f} vs current {cur:.4f} over {self.n} shadow readings "
                f"(bound {bound}), disagreement {self.diff / n:.4f}")
        return abs(cand - cur) <= bound, what
