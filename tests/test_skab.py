"""The SKAB benchmark's loader and counting (benchmarks/skab.py); the data is read where it lies."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from benchmarks import skab


def test_absent_data_is_skipped_with_a_clear_message(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="slotwatch.bench.skab"):
        assert skab.run(tmp_path / "nowhere") is None
    assert "SKAB skipped: no data at" in caplog.text and "--skab PATH" in caplog.text
    with pytest.raises(skab.SkabMissing):
        skab.load(tmp_path)


@pytest.mark.skipif(skab.default_path() is None, reason="SKAB data not present at ../shared/data/skab")
def test_loader_reads_the_34_experiments_and_the_normal_file():
    normal, exps = skab.load(skab.default_path())
    assert len(exps) == 34 and len(normal) == 9405
    assert list(exps)[:2] == ["valve1-0", "valve1-1"] and "other-14" in exps
    for name, e in exps.items():
        assert list(e.columns) == ["sensor_id", "ts_ms", *skab.FEATURES, "label"]
        assert (e["sensor_id"] == name).all() and np.all(np.diff(e["ts_ms"].to_numpy()) >= 0)
        assert 0 < e["label"].sum() < len(e)
    parts = skab.split_normal(normal)
    assert sum(len(p) for p in parts) == len(normal) and len({p["sensor_id"].iloc[0] for p in parts}) == skab.NORMAL_PARTS


def test_pooled_counting_is_binary_classification_over_all_files():
    lab = np.array([1, 1, 0, 0, 0, 1])
    m = skab.pooled_metrics(lab, np.zeros(6, bool))
    assert m["f1"] == 0.0 and m["far"] == 0.0 and m["mar"] == 100.0
    m = skab.pooled_metrics(lab, np.ones(6, bool))
    assert m["far"] == 100.0 and m["mar"] == 0.0 and m["f1"] == pytest.approx(2 / 3)
