"""The e2e benchmark's latency split (benchmarks.e2e_probe.analyse) on a hand-made trace."""

import numpy as np
import pytest

from benchmarks.e2e import quantile_from_buckets
from benchmarks.e2e_probe import analyse


def _trace(path, calls, polls, counts, ts_ms, rounds=()):
    np.savez(path, calls=np.asarray(calls, np.float64).reshape(-1, 2), polls=np.asarray(polls, np.float64).reshape(-1, 5),
             counts=np.asarray(counts, np.int64), ts_ms=np.asarray(ts_ms, np.int64),
             rounds=np.asarray(rounds, np.float64).reshape(-1, 2), probes=np.zeros((0, 2)), gcs=np.zeros((0, 3)))


def test_split_into_queued_fetch_handle(tmp_path):
    # reading stamped at 1000.005 s; an empty poll until 1000.010, the worker busy until 1000.100
    # (outside any poll: queued), the poll that gets it returns at 1000.120, handled by 1000.125
    p = tmp_path / "t.npz"
    _trace(p, calls=[(1000.000, 1000.010), (1000.100, 1000.120)],
           polls=[(1000.100, 1000.120, 1000.120, 1000.125, 1)], counts=[1], ts_ms=[1_000_005])
    r = analyse(str(p), 1_000_000, 1_000_010)
    assert r["readings"] == 1
    assert r["latency_ms"]["p99"] == pytest.approx(120, abs=0.01)
    parts = r["parts_mean_ms"]
    assert parts["queued"] == pytest.approx(90, abs=0.01)  # 95 ms to the poll less the 5 ms spent inside the first one
    assert parts["fetch"] == pytest.approx(25, abs=0.01)
    assert parts["handle"] == pytest.approx(5, abs=0.01)


def test_window_keeps_only_readings_stamped_in_it(tmp_path):
    p = tmp_path / "t.npz"
    _trace(p, calls=[(1000.0, 1000.02)], polls=[(1000.0, 1000.02, 1000.02, 1000.03, 3)], counts=[3],
           ts_ms=[999_990, 1_000_000, 1_000_010])
    assert analyse(str(p), 1_000_000, 1_000_010)["readings"] == 1
    assert analyse(str(p), 2_000_000, 2_000_010) == {"readings": 0}


def test_quantile_between_two_scrapes():
    before = [(0.01, 10), (0.1, 10), (float("inf"), 10)]
    after = [(0.01, 10), (0.1, 110), (float("inf"), 110)]  # 100 new observations, all in (0.01, 0.1]
    assert quantile_from_buckets(before, after, 0.5) == pytest.approx(0.055)
    assert np.isnan(quantile_from_buckets(after, after, 0.99))
