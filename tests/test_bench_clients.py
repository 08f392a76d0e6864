"""The decoders compared by ``python -m benchmarks.clients`` produce the same columns as the
worker's codec, so the speed figures compare like with like (no broker, no timing)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("orjson")
pytest.importorskip("msgspec")

from benchmarks import clients  # noqa: E402
from worker.codec import ReadingCodec  # noqa: E402


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "epoch_ms"])
def test_every_column_decoder_matches_the_worker_codec(iso):
    raws = clients.readings(300, 7, iso=iso, seed=3)
    codec = ReadingCodec(clients.FEATURES)
    ref = [codec.decode(r) for r in raws]
    ids, ts, vals = [r.sensor_id for r in ref], np.array([r.ts_ms for r in ref]), np.stack([r.values for r in ref])
    assert len(set(ts.tolist())) > 1 and len(set(ids)) == 7
    for name, (kind, fn) in clients.decoders(iso).items():
        out = fn(raws)
        if kind == "columns":
            assert out[0] == ids, name
            np.testing.assert_array_equal(out[1], ts, err_msg=name)
            np.testing.assert_allclose(out[2], vals, rtol=1e-6, err_msg=name)
        else:
            assert len(out) == len(raws), name
