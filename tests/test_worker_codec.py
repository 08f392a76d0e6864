"""The reading codec and the score encoding (pure, no broker)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.codec import ReadingCodec, dead_letter_headers, encode_reading, encode_score, score_dict
from worker.core.readings import REASONS, Reading, Rejection, Score

C1 = ReadingCodec(["temp"], max_bytes=256)
C3 = ReadingCodec(["temp", "rpm", "vib"], max_bytes=256)


def test_good_readings_in_every_accepted_form():
    r = C3.decode(b'{"sensor_id":"pump-17","ts":"2026-11-20T10:00:00Z","values":{"vib":0.5,"temp":71.2,"rpm":1480,"x":"ignored"}}', 3, 99)
    assert isinstance(r, Reading)
    assert (r.sensor_id, r.ts_ms, r.partition, r.offset, r.reset) == ("pump-17", 1795168800000, 3, 99, False)
    assert r.values.tolist() == [71.2, 1480.0, 0.5]  # artifact order, not message order
    r = C1.decode(b'{"sensor_id":"a","ts":1795168800000,"value":2,"reset":true}')
    assert r.values.tolist() == [2.0] and r.reset and r.ts_ms == 1795168800000
    r = C1.decode(b'{"sensor_id":"a","ts":"2026-11-20T11:00:00+01:00","values":{"temp":-1e3}}')
    assert r.ts_ms == 1795168800000 and r.values[0] == -1000.0
    assert C1.decode(encode_reading("a", 5, {"temp": 1.5})).values.tolist() == [1.5]


@pytest.mark.parametrize("raw,reason,codec", [
    (None, "not_json", C1),
    (b"", "not_json", C1),
    (b"{", "not_json", C1),
    (b"\xc3\x28", "not_json", C1),
    (b'"just a string"', "not_object", C1),
    (b"42", "not_object", C1),
    (b'{"ts":1,"value":1}', "missing_sensor_id", C1),
    (b'{"sensor_id":"","ts":1,"value":1}', "missing_sensor_id", C1),
    (b'{"sensor_id":17,"ts":1,"value":1}', "missing_sensor_id", C1),
    (b'{"sensor_id":"a","value":1}', "bad_timestamp", C1),
    (b'{"sensor_id":"a","ts":"noon","value":1}', "bad_timestamp", C1),
    (b'{"sensor_id":"a","ts":true,"value":1}', "bad_timestamp", C1),
    (b'{"sensor_id":"a","ts":1}', "missing_feature", C1),
    (b'{"sensor_id":"a","ts":1,"values":{"rpm":1}}', "missing_feature", C1),
    (b'{"sensor_id":"a","ts":1,"values":[1]}', "missing_feature", C1),
    (b'{"sensor_id":"a","ts":1,"value":1}', "missing_feature", C3),  # "value" only for one-feature models
    (b'{"sensor_id":"a","ts":1,"values":{"temp":1,"rpm":2}}', "missing_feature", C3),
    (b'{"sensor_id":"a","ts":1,"value":"1.5"}', "non_numeric", C1),
    (b'{"sensor_id":"a","ts":1,"value":true}', "non_numeric", C1),
    (b'{"sensor_id":"a","ts":1,"value":null}', "non_numeric", C1),
    (b'{"sensor_id":"a","ts":1,"value":NaN}', "non_finite", C1),
    (b'{"sensor_id":"a","ts":1,"value":-Infinity}', "non_finite", C1),
    (b'{"sensor_id":"a","ts":1,"value":1e400}', "non_finite", C1),
    (b'{"sensor_id":"a","ts":1,"value":' + b"9" * 400 + b"}", "too_large", C1),
])
def test_bad_input_gets_its_reason(raw, reason, codec):
    r = codec.decode(raw, 2, 17)
    assert isinstance(r, Rejection), r
    assert r.reason == reason and r.reason in REASONS
    assert (r.partition, r.offset) == (2, 17) and r.raw == raw and r.detail


def test_huge_integer_is_non_finite_not_a_crash():
    big = b'{"sensor_id":"a","ts":1,"value":' + b"9" * 400 + b"}"  # an int beyond float range
    r = ReadingCodec(["temp"], max_bytes=1024).decode(big)
    assert isinstance(r, Rejection) and r.reason == "non_finite"


def test_score_encoding_is_deterministic_and_complete():
    s = Score("p1", 1795168800000, 0.25, 1.5, True, 0.99, False, np.array([1.0, 2.0]), np.array([0.9, 2.1]), 4, 77)
    a, b = encode_score(s, ["t", "r"], "v3"), encode_score(s, ["t", "r"], "v3")
    assert a == b
    d = json.loads(a)
    assert d == score_dict(s, ["t", "r"], "v3")
    assert d["ts"] == "2026-11-20T10:00:00.000Z" and d["values"] == {"t": 1.0, "r": 2.0} and d["expected"] == {"t": 0.9, "r": 2.1}
    assert (d["partition"], d["offset"], d["is_anomaly"], d["model_version"]) == (4, 77, True, "v3")
    assert set(d) >= {"sensor_id", "ts", "score", "error", "is_anomaly", "threshold", "model_version", "warming_up", "values", "expected"}


def test_dead_letter_headers():
    h = dict(dead_letter_headers(Rejection("too_large", "9000 bytes", None, 1, 5), "readings"))
    assert h == {"reason": b"too_large", "detail": b"9000 bytes", "source_topic": b"readings",
                 "source_partition": b"1", "source_offset": b"5"}
