"""A whole poll of bytes <-> columns, in one call each way.  Pure: no Kafka, no I/O.

:meth:`BatchCodec.decode_batch` turns the values of one poll into
:class:`~worker.core.columns.ReadingColumns` plus the rejections, with exactly the acceptance,
reason codes and details of :meth:`ReadingCodec.decode <worker.codec.ReadingCodec.decode>`
(tests/test_batch_codec.py proves it on valid and hostile input): the typical reading is
decoded by the fastest decoder installed (msgspec, else orjson, else json) and checked with
numpy over the whole poll; a message that decodes otherwise or fails any check goes through
the per-message path, which decides its fate and its reason.

:func:`encode_scores` encodes many rows of a :class:`~worker.core.columns.ScoreColumns` at
once, byte for byte what :func:`~worker.codec.encode_score` gives each.

>>> c = BatchCodec(["temp"])
>>> cols, rej = c.decode_batch([b'{"sensor_id":"p1","ts":1000,"values":{"temp":1.5}}', b"\\xff"], 0, [7, 8])
>>> cols.sensor_id, cols.ts_ms.tolist(), cols.values.tolist(), cols.offset.tolist(), [r.reason for r in rej]
(['p1'], [1000], [[1.5]], [7], ['not_json'])
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _q

import numpy as np

from worker.codec import ReadingCodec, encode_score
from worker.core.columns import SCORED, ReadingColumns, ScoreColumns
from worker.core.limits import FLOAT32_MAX, sensor_id_problem
from worker.core.readings import TS_MAX_MS, TS_MIN_MS, BadTimestamp, Rejection, format_ts, parse_ts

try:
    import msgspec
except ImportError:  # pragma: no cover - an optional speed-up
    msgspec = None
try:
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

DECODERS = ("msgspec", "orjson", "json")


def best_decoder() -> str:
    """The fastest decoder installed (benchmarks.engine measures them side by side)."""
    return "msgspec" if msgspec is not None else "orjson" if orjson is not None else "json"


class BatchCodec(ReadingCodec):
    """:class:`ReadingCodec` with :meth:`decode_batch`; ``decoder`` is one of :data:`DECODERS` or "auto"."""

    def __init__(self, features: list[str], max_bytes: int = 65536, *, decoder: str = "auto", **kw) -> None:
        super().__init__(features, max_bytes, **kw)
        self.decoder = best_decoder() if decoder == "auto" else decoder
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS} or 'auto', got {decoder!r}")
        if self.decoder == "msgspec":
            struct = msgspec.defstruct("_Reading", [("sensor_id", str), ("ts", int | str), ("values", dict[str, float]),
                                                   ("reset", bool, False)])
            dec = msgspec.json.Decoder(struct).decode
            self._fast = lambda raw: _struct_fields(dec(raw))
        elif self.decoder == "orjson":
            self._fast = lambda raw: _dict_fields(orjson.loads(raw))
        else:
            self._fast = lambda raw: _dict_fields(json.loads(raw.decode("utf-8")))

    def decode_batch(self, values: list, partition, offsets) -> tuple[ReadingColumns, list[Rejection]]:
        """Decode one poll: ``values`` (bytes or None each), ``partition`` (one, or one per value), ``offsets``.

        Returns the accepted readings as columns (in input order) and the rejections (in input order)."""
        n = len(values)
        parts = np.broadcast_to(np.asarray(partition, np.int64), (n,))
        offs = np.broadcast_to(np.asarray(offsets, np.int64), (n,))
        fields = self.features
        fast, max_bytes = self._fast, self.max_bytes
        sids, tss, vals, resets, pos = [], [], [], [], []
        slow: list[int] = []
        for i, raw in enumerate(values):
            if raw is None or len(raw) > max_bytes:
                slow.append(i)
                continue
            try:
                sid, ts, v, reset = fast(raw)
                row = [float(v[f]) for f in fields]  # an int beyond float raises here, as in the codec
            except Exception:  # noqa: BLE001 - anything unusual takes the exact per-message path
                slow.append(i)
                continue
            sids.append(sid)
            tss.append(ts)
            vals.append(row)
            resets.append(reset)
            pos.append(i)
        ok, ts_all = self._check(sids, tss, vals)
        if not ok.all():
            slow.extend(np.asarray(pos)[~ok].tolist())
        keep = np.nonzero(ok)[0]
        ts_arr = ts_all[keep]
        fast_rows = np.asarray(pos, np.int64)[keep]
        rejections: list[Rejection] = []
        extra = []  # (input position, Reading) of messages the exact path accepted
        for i in sorted(slow):
            r = self.decode(values[i], int(parts[i]), int(offs[i]))
            if isinstance(r, Rejection):
                rejections.append(r)
            else:
                extra.append((i, r))
        ids = [sids[k] for k in keep.tolist()]
        v = np.asarray(vals, np.float64).reshape(-1, len(fields))[keep] if len(keep) else np.zeros((0, len(fields)))
        rs = np.asarray(resets, bool)[keep] if len(keep) else np.zeros(0, bool)
        at = fast_rows
        if extra:  # merge in input order
            at = np.concatenate([fast_rows, np.array([i for i, _ in extra], np.int64)])
            order = np.argsort(at, kind="stable")
            every = ids + [r.sensor_id for _, r in extra]
            ids = [every[k] for k in order.tolist()]
            ts_arr = np.concatenate([ts_arr, np.array([r.ts_ms for _, r in extra], np.int64)])[order]
            v = np.concatenate([v, np.array([r.values for _, r in extra], np.float64)])[order]
            rs = np.concatenate([rs, np.array([r.reset for _, r in extra], bool)])[order]
            at = at[order]
        return ReadingColumns(ids, ts_arr, v, rs, parts[at].copy(), offs[at].copy()), rejections

    def _check(self, sids: list, tss: list, vals: list) -> tuple[np.ndarray, np.ndarray]:
        """Which fast-decoded rows pass every check (the others take the exact path), and their time stamps."""
        n = len(sids)
        if n == 0:
            return np.zeros(0, bool), np.zeros(0, np.int64)
        ok = np.ones(n, bool)
        bad_id = {s for s in set(sids) if not s.strip() or sensor_id_problem(s, self.max_sensor_id_bytes) is not None}
        if bad_id:
            ok &= np.fromiter((s not in bad_id for s in sids), bool, n)
        if all(type(t) is int for t in tss):
            try:
                ts = np.asarray(tss, np.int64)
            except OverflowError:
                ts = None
        else:
            ts = None
        if ts is None:  # ISO strings (or ints beyond int64): parse per reading, exactly as the codec does
            ms = []
            for k, t in enumerate(tss):
                try:
                    ms.append(parse_ts(t))
                except BadTimestamp:
                    ms.append(0)
                    ok[k] = False
            ts = np.asarray(ms, np.int64)
        ok &= (ts >= TS_MIN_MS) & (ts <= TS_MAX_MS)
        if self.max_future_ms is not None:
            ok &= ts <= int(self.clock() * 1000) + self.max_future_ms
        v = np.asarray(vals, np.float64).reshape(n, len(self.features))
        with np.errstate(invalid="ignore"):
            ok &= (np.abs(v) <= FLOAT32_MAX).all(axis=1)  # NaN and inf compare False
        return ok, ts


def _struct_fields(r):
    return r.sensor_id, r.ts, r.values, r.reset


def _dict_fields(d):
    """The fields of a reading in its typical shape; anything else raises (and takes the exact path)."""
    sid, ts, v = d["sensor_id"], d["ts"], d["values"]
    if type(sid) is not str or type(v) is not dict or not (type(ts) is int or type(ts) is str):
        raise TypeError
    if any(type(x) is not float and type(x) is not int for x in v.values()):
        raise TypeError
    return sid, ts, v, d.get("reset", False) is True


# ----------------------------------------------------------------------------- encoding
def _ts_strings(ts: np.ndarray) -> list[str]:
    """:func:`format_ts` of many time stamps (numpy where it is exact, up to year 2200)."""
    out = np.char.add(np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms"), "Z").tolist()
    for k in np.nonzero((ts < 0) | (ts > 7_258_118_400_000))[0].tolist():  # float seconds lose the ms beyond ~2242
        out[k] = format_ts(int(ts[k]))
    return out


def encode_scores(sc: ScoreColumns, rows, features: list[str], model_version: str, top_k: int = 3) -> list[bytes]:
    """:func:`encode_score` of the scored ``rows`` of ``sc``, in one call: the same bytes each.

    Flagged rows (they name their top features) and rows with a non-finite field go through
    :func:`encode_score` itself."""
    rows = np.asarray(rows, np.int64)
    inp = sc.inputs
    if np.any(sc.status[rows] != SCORED):
        raise ValueError("encode_scores: only scored rows have a score message")
    nf = len(features)
    if len(set(features)) != nf:  # a dict would merge repeated names: leave that to encode_score
        return [encode_score(sc.row(i), features, model_version, top_k) for i in rows.tolist()]
    head = ",".join([f"{_q(f)}:%r" for f in features])
    tail = ('"sensor_id":%s,"ts":"%s","ts_ms":%d,"score":%r,"surprise":%r,"error":%r,"is_anomaly":false,"threshold":'
            + repr(float(sc.threshold)) + ',"model_version":' + _q(model_version) + ',"warming_up":%s,')
    fmt = ("{" + tail + '"values":{' + head + '},"expected":{' + head + '},"z":{' + head
           + '},"partition":%d,"offset":%d,"type":"score"}')
    vals, exp, fz = inp.values[rows], sc.expected[rows], sc.feature_z[rows]
    score, surp, err = sc.score[rows], sc.surprise[rows], sc.error[rows]
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(vals).all(1) & np.isfinite(exp).all(1) & np.isfinite(fz).all(1)
        finite &= np.isfinite(score) & np.isfinite(surp) & np.isfinite(err) & np.isfinite(sc.threshold)
    plain = finite & ~sc.is_anomaly[rows]
    ts = inp.ts_ms[rows]
    tstr = _ts_strings(ts)
    sids = inp.sensor_id
    quoted: dict[str, str] = {}
    out: list[bytes] = []
    cols = zip(rows.tolist(), plain.tolist(), tstr, ts.tolist(), score.tolist(), surp.tolist(), err.tolist(),
               sc.warming_up[rows].tolist(), vals.tolist(), exp.tolist(), fz.tolist(), inp.partition[rows].tolist(),
               inp.offset[rows].tolist())
    for i, easy, t, tms, s, su, e, wu, v, x, z, p, o in cols:
        if not easy:
            out.append(encode_score(sc.row(i), features, model_version, top_k))
            continue
        sid = sids[i]
        q = quoted.get(sid)
        if q is None:
            q = quoted[sid] = _q(sid)
        out.append((fmt % (q, t, tms, s, su, e, "true" if wu else "false", *v, *x, *z, p, o)).encode("ascii"))
    return out
