"""The checkpoint store on a real folder: generations, atomic writes, fallback."""

from __future__ import annotations

import numpy as np
import pytest

from worker.checkpointing.format import Checkpoint, CorruptCheckpoint
from worker.checkpointing.store import CheckpointStore


def _ck(p, off, n=3):
    return Checkpoint(p, off, "v1", {"sensor_id": np.array([f"s{i}" for i in range(n)], dtype=object),
                                     "state": np.full((n, 4), off, np.float32)})


def test_generations_are_kept_and_pruned(tmp_path):
    st = CheckpointStore(tmp_path, "topic/with:odd chars", generations=3)
    for off in range(1, 7):
        path, size = st.save(_ck(0, off * 10))
        assert path.exists() and size == path.stat().st_size
    gens = st.generations(0)
    assert len(gens) == 3
    assert [int(g.stem) for g in gens] == [6, 5, 4]
    ck = st.load(0)
    assert ck.next_offset == 60 and ck.columns["state"][0, 0] == 60 and list(ck.columns["sensor_id"]) == ["s0", "s1", "s2"]
    assert st.load(1) is None  # no checkpoint at all
    st.save(_ck(1, 5))
    assert st.partitions() == [0, 1]
    assert not list(st.dir_of(0).glob("*.tmp"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_newest_falls_back_loudly(tmp_path, caplog, damage):
    seen = []
    st = CheckpointStore(tmp_path, "t", generations=3, on_fallback=lambda p, path, why: seen.append((p, path.name)))
    st.save(_ck(2, 100))
    newest, _ = st.save(_ck(2, 200))
    blob = bytearray(newest.read_bytes())
    if damage == "flip":
        blob[len(blob) // 3] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) - 7]  # a torn write
    else:
        blob = bytearray()
    newest.write_bytes(bytes(blob))
    with caplog.at_level("ERROR"):
        ck = st.load(2)
    assert ck.next_offset == 100
    assert seen == [(2, newest.name)]
    assert any("unusable" in r.message for r in caplog.records)


def test_all_generations_corrupt_is_an_error(tmp_path):
    st = CheckpointStore(tmp_path, "t")
    for off in (1, 2):
        p, _ = st.save(_ck(0, off))
        p.write_bytes(b"SLOTWCK1 garbage")
    with pytest.raises(CorruptCheckpoint, match="no valid checkpoint"):
        st.load(0)


def test_a_leftover_temp_file_is_ignored(tmp_path):
    st = CheckpointStore(tmp_path, "t")
    st.save(_ck(0, 10))
    (st.dir_of(0) / ".000000000002.ckpt.tmp").write_bytes(b"half a checkpoint")  # crash before rename
    assert st.load(0).next_offset == 10
    p, _ = st.save(_ck(0, 20))
    assert p.name == "000000000002.ckpt" and st.load(0).next_offset == 20


def test_a_checkpoint_of_another_partition_is_not_used(tmp_path):
    st = CheckpointStore(tmp_path, "t")
    st.save(_ck(0, 10))
    p, _ = st.save(_ck(1, 99))
    p.rename(st.dir_of(0) / "000000000009.ckpt")  # misplaced file
    assert st.load(0).next_offset == 10
