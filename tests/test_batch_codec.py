"""Issue 11: the batch codec decides every message exactly as ReadingCodec.decode does, and the
batched score encoding gives exactly encode_score's bytes.  Pure: no broker.

The hostile messages are tests/test_hardening.py's fuzz strategies."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_hardening import NOW_MS, NOW_S, _messages
from worker.batch_codec import DECODERS, BatchCodec, encode_scores
from worker.codec import ReadingCodec, encode_reading, encode_score
from worker.core import artifact as art
from worker.core.columns import ReadingColumns
from worker.core.detector import SlotDetector
from worker.core.readings import Rejection, Score

N_EXAMPLES = int(os.environ.get("SLOTWATCH_FUZZ_EXAMPLES", "300"))
MIN = 60_000


def codecs(features, decoder, **kw):
    kw = dict(max_bytes=2048, max_sensor_id_bytes=256, max_future_s=3600.0, clock=lambda: NOW_S) | kw
    return ReadingCodec(features, **kw), BatchCodec(features, decoder=decoder, **kw)


def agree(one: ReadingCodec, batch: BatchCodec, raws: list, partition: int = 2) -> tuple[int, int]:
    """decode_batch of ``raws`` equals ReadingCodec.decode of each; returns (accepted, rejected)."""
    offsets = list(range(100, 100 + len(raws)))
    cols, rej = batch.decode_batch(raws, partition, offsets)
    want = [one.decode(r, partition, o) for r, o in zip(raws, offsets)]
    good = [w for w in want if not isinstance(w, Rejection)]
    bad = [w for w in want if isinstance(w, Rejection)]
    assert len(cols) == len(good) and len(rej) == len(bad)
    for k, w in enumerate(good):
        g = cols[k]
        assert (g.sensor_id, g.ts_ms, g.partition, g.offset, g.reset) == (w.sensor_id, w.ts_ms, w.partition, w.offset, w.reset)
        assert g.values.dtype == np.float64 and g.values.tobytes() == w.values.tobytes()
    for g, w in zip(rej, bad):
        assert (g.reason, g.detail, g.sensor_id, g.partition, g.offset, g.raw) == (w.reason, w.detail, w.sensor_id, w.partition,
                                                                                  w.offset, w.raw)
    return len(good), len(bad)


@pytest.mark.parametrize("decoder", DECODERS)
@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=N_EXAMPLES <= 1000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raws=st.lists(_messages(), min_size=1, max_size=12))
def test_decode_batch_agrees_with_the_codec_on_hostile_input(decoder, raws):
    raws = [r.replace(b'"auto"', str(NOW_MS - k * MIN).encode()) for k, r in enumerate(raws)]
    agree(*codecs(["temp"], decoder), raws)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_batch_agrees_on_typical_and_odd_readings(decoder):
    feats = ["temp", "rpm"]
    ok = [encode_reading(f"p{k % 7}", NOW_MS - k * MIN, {"temp": 0.5 * k, "rpm": 1480 + k}, reset=k % 9 == 0) for k in range(200)]
    iso = [encode_reading("p1", "2026-11-20T09:00:00Z", {"temp": 1.0, "rpm": 2}),
           encode_reading("p1", "2026-11-20T09:00:00.123+01:00", {"temp": 1, "rpm": 2.5})]
    odd = [
        None, b"", b"\xef\xbb\xbf" + ok[0], b'{"sensor_id":"a","sensor_id":"b","ts":1000,"values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a\tb","ts":1000,"values":{"temp":1,"rpm":2}}', b'{"sensor_id":"\\ud800","ts":1000,"values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":1e400,"rpm":2}}', b'{"sensor_id":"a","ts":1000,"values":{"temp":NaN,"rpm":2}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":' + b"1" * 400 + b',"rpm":2}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":123456789012345678901234567890,"rpm":2}}',
        b'{"sensor_id":"a","ts":1000.0,"values":{"temp":1,"rpm":2}}', b'{"sensor_id":"a","ts":"1000","values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":true,"rpm":2}}', b'{"sensor_id":"a","ts":1000,"values":{"temp":1}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":1,"rpm":2},"reset":1}', b'{"sensor_id":"a","ts":1000,"values":{"temp":1,"rpm":2},"reset":true}',
        b'{"sensor_id":"a","ts":1000,"value":1}', b'{"sensor_id":" ","ts":1000,"values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a","ts":' + str(NOW_MS + 7200_000).encode() + b',"values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a","ts":18446744073709551616,"values":{"temp":1,"rpm":2}}',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":3.5e38,"rpm":2}}', b'[1, 2]', b'{"sensor_id":"a","ts":1000,"values":{"temp":1,"rpm":2}}x',
        b'{"sensor_id":"a","ts":1000,"values":{"temp":1,"rpm":2},"pad":"' + b"x" * 3000 + b'"}',
        b' {"sensor_id":"' + "ünï".encode() + b'","ts":1000,"values":{"temp":-0.0,"rpm":5e-324}} ',
    ]
    rng = np.random.default_rng(1)
    mixed = ok + iso + odd
    n_ok, n_bad = agree(*codecs(feats, decoder), [mixed[k] for k in rng.permutation(len(mixed))], partition=0)
    assert n_ok >= 200 and n_bad >= 15
    agree(*codecs(feats, decoder), ok, partition=1)  # all on the fast path
    agree(*codecs(feats, decoder), [], partition=1)
    # one partition per message
    one, batch = codecs(feats, decoder)
    cols, _ = batch.decode_batch(ok[:3], [4, 5, 6], [1, 2, 3])
    assert cols.partition.tolist() == [4, 5, 6]


@pytest.fixture(scope="module")
def scored(artifact_3f):
    """Score columns of a real detector: warming-up, scored, flagged and rejected rows."""
    det = SlotDetector(art.load(artifact_3f), slots=8)
    rng = np.random.default_rng(3)
    n = 400
    ids = [f"pump-{k % 11}" if k % 50 else "ünï-\"q\"" for k in range(n)]
    ts = np.array([NOW_MS - (n - k) * MIN for k in range(n)], np.int64)
    ts[7] = 253_402_300_799_999  # year 9999: format_ts' own rounding
    ts[8] = 7_300_000_000_000
    vals = np.sin(np.arange(n)[:, None] / 5.0 + np.arange(3)) + 0.05 * rng.normal(size=(n, 3))
    vals[::37] += 30.0  # flagged
    vals[5, 1] = np.nan  # rejected
    vals[6, 0] = 1e-320
    cols = ReadingColumns.build(ids, ts, vals, partition=3, offset=np.arange(n) + 10)
    return det, det.process_columns(cols)


def test_encode_scores_is_byte_identical_to_encode_score(scored):
    det, sc = scored
    rows = np.nonzero(sc.scored)[0]
    assert sc.is_anomaly[rows].any() and sc.warming_up[rows].any() and (~sc.warming_up[rows]).any()
    for top_k in (3, 1):
        got = encode_scores(sc, rows, det.features, det.model_version, top_k)
        want = [encode_score(sc.row(i), det.features, det.model_version, top_k) for i in rows.tolist()]
        assert got == want
    assert json.loads(got[0])["type"] == "score"
    assert encode_scores(sc, rows[:0], det.features, det.model_version) == []
    with pytest.raises(ValueError):
        encode_scores(sc, np.nonzero(~sc.scored)[0], det.features, det.model_version)


def test_encode_scores_matches_scores_of_process(scored, artifact_3f):
    """The objects ``process`` returns encode to the same bytes as the columns."""
    det, sc = scored
    rows = np.nonzero(sc.scored)[0]
    objs = sc.to_objects()
    assert all(isinstance(objs[i], Score) for i in rows.tolist())
    assert [encode_score(objs[i], det.features, "v9") for i in rows.tolist()] == encode_scores(sc, rows, det.features, "v9")
