"""The state changelog: one sensor's checkpoint row per Kafka record, and the restore fold.  Pure (no Kafka).

Split by job: :mod:`~worker.checkpointing.changelog_schema` (keys, headers, the row layout),
:mod:`~worker.checkpointing.changelog_write` (what a round writes),
:mod:`~worker.checkpointing.changelog_fold` (the restore fold); this module re-exports them.

A changelog partition follows its readings partition (changelog partition N holds the
sensors of readings partition N).  A checkpoint round writes, per partition:

* one **schema record** (key ``b"__schema__<digest>"``, value the JSON list of the row's
  columns: name, dtype, trailing shape, the same dtype strings and C-order bytes as
  :mod:`worker.checkpointing.format`; string columns as UTF-8 with a length, like the
  format's ``.len``/``.utf8`` pair).  Its key is unique per schema, so compaction keeps
  the schema of every row still in the log;
* one **row record** per sensor changed since the last round (key = sensor id, value =
  ``MAGIC + schema digest + fixed-size numeric bytes + (u32 length + UTF-8) per string
  column``; the ``model_version`` column is one of those strings).  A sensor that left the
  partition (evicted) gets a **tombstone** (value ``None``);
* one **marker record** (key ``b"__partition__"``) with the partition's next offset, whether
  this round wrote every row of the partition (``full``: a *full snapshot*), and ``snapshots``:
  the newest full snapshots known to the writer, ``[changelog offset of the snapshot round's
  first record, its source offset]`` each.  A restore at committed offset ``C`` may seek to the
  newest snapshot whose source offset is ``<= C`` instead of reading the log from its start
  (:func:`worker.kafka.changelog.snapshot_start`): every sensor of the partition has a row in
  that round and every sensor that left before it has no row in it, so nothing before it can
  win the fold.  This assumes one writer per changelog partition at a time (rows a zombie
  wrote before the snapshot with a source offset between the snapshot's and ``C`` would be
  missed; the full read does not miss them).

Every record carries headers ``slotwatch.partition``, ``slotwatch.offset`` and
``slotwatch.model_version``.  ``slotwatch.offset`` is the source position the record
reflects: the round's next offset, i.e. the row holds every reading of its partition
*below* it and none at or beyond it.  The ``slot`` column is written as -1 (see :data:`UNPLACED`).  (The row's own ``last_offset`` column, the offset of
the sensor's last reading, is in the value.)

Restore (:func:`fold`): given the records of a changelog partition in log order and the
committed offset ``C`` of the readings partition, keep for each sensor the row with the
highest ``slotwatch.offset`` that is ``<= C`` (later in the log wins a tie); rows stamped
beyond ``C`` belong to readings that will be replayed from ``C`` and are skipped.  The log
need not be compacted: every generation of a sensor may be present.  Records with keys
starting ``b"__"`` that are not rows (markers, schemas, a restorer's fence record) never
become sensors.

>>> import numpy as np
>>> cols = {"sensor_id": np.array(["a", "b"], dtype=object), "last_offset": np.array([3, 7]),
...         "state": np.array([[0.5, 1.0], [2.0, 3.0]], dtype=np.float32),
...         "model_version": np.array(["v1", "v1"], dtype=object)}
>>> written = {}                                   # sensor -> last_offset already in the changelog
>>> rows = select_changed(cols, written); rows.tolist()
[0, 1]
>>> recs = encode_round(0, 8, cols, rows, model_version="v1")
>>> recs[0].key.startswith(SCHEMA_PREFIX), [r.key for r in recs[1:]]
(True, [b'a', b'b', b'__partition__'])
>>> note_written(written, cols, rows); select_changed(cols, written).tolist()   # nothing new
[]
>>> res = fold(recs, committed=8)
>>> list(res.columns["sensor_id"]), res.columns["state"].tolist(), res.marker_next
(['a', 'b'], [[0.5, 1.0], [2.0, 3.0]], 8)
>>> fold(recs, committed=5).n_sensors, fold(recs, committed=5).skipped_beyond    # written at 8 > 5
(0, 2)
"""

from __future__ import annotations

from worker.checkpointing.changelog_fold import Restored, fold, marker_of  # noqa: F401 - re-exported
from worker.checkpointing.changelog_schema import (  # noqa: F401 - re-exported
    _HEAD, _U32, FENCE_KEY, H_OFFSET, H_PARTITION, H_VERSION, MAGIC, MARKER_KEY, SCHEMA_PREFIX, UNPLACED,
    ChangelogRecord, CorruptChangelog, Schema, headers_for,
)
from worker.checkpointing.changelog_write import (  # noqa: F401 - re-exported
    encode_round, encode_rows, note_written, removed_ids, select_changed,
)
