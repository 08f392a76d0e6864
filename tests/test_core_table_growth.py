"""Found while wiring issue 11: ``SlotDetector.process_columns`` keeps a reference to the table's
``slot`` column across rounds; when the first round's new sensors make the table grow past its
capacity (1024 rows), a later round with more live sensors than slots indexes the old, shorter
array and raises IndexError.  In the worker that is a CoreFailure: a rewind, and the whole poll
replayed one reading at a time (the e2e benchmark with 2,000 sensors hits it on every run).

Fixed in worker/core/detector.py: the column is read inside the loop, after the table may have grown."""

from __future__ import annotations

import numpy as np

from worker.core import artifact as art
from worker.core.columns import ReadingColumns
from worker.core.factory import detector_from_settings
from worker.settings import Settings


def test_a_poll_that_grows_the_table_past_its_capacity_scores(artifact_1f):
    det = detector_from_settings(art.load(artifact_1f), Settings.load(model={"slots": 256}))
    n = 1100  # new sensors, more than the table's initial 1024 rows; two readings each, so two rounds
    ids = [f"x{i}" for i in range(n)] * 2
    ts = np.repeat([1_795_000_000_000, 1_795_000_001_000], n)
    sc = det.process_columns(ReadingColumns.build(ids, ts, np.zeros((2 * n, 1)), partition=0, offset=np.arange(2 * n)))
    assert sc.scored.all()
