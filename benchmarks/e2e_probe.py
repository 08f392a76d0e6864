"""The worker of a latency run, timed from outside: where a reading's time goes.

``python -m benchmarks.e2e_probe`` runs ``slotwatch run`` (same settings, same code) with
wrappers around four of its calls, and writes a trace to ``$SLOTWATCH_BENCH_TRACE`` (npz) at
exit; no worker code is changed:

* the source's ``poll`` (wall clock when the call began and returned);
* ``PollProcessor.handle`` (began, returned) and, from ``run_core``, the time stamps of the
  readings it scored;
* ``CheckpointCoordinator.maybe_round`` (began, returned: a round's flush and export run on
  the consumer's thread);
* Python's collector (``gc.callbacks``: each collection's start and length, its generation).

:func:`analyse` turns a trace into the latency of every reading (handle returned - ts, which
is when the worker's own histogram observes it) split into: *queued* (stamped before the poll
that got it began: the worker was busy elsewhere), *fetch* (from then until that poll
returned: producer linger, broker, fetch wait, the client's parsing) and *handle* (its poll's
decode, score, send and metrics); and says what the worker's loop spent its time on.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time

import numpy as np


def install(path: str) -> None:
    import worker.app as wa
    import worker.checkpointing.coordinator as wc
    import worker.processing as wp

    calls: list[tuple] = []  # (began, returned) of every poll call, empty ones too
    polls: list[tuple] = []  # (poll began, poll returned, handle began, handle returned, readings scored)
    stamps: list[np.ndarray] = []  # per handled poll: ts_ms of the readings scored
    rounds: list[tuple] = []  # (began, returned) of maybe_round calls that took > 0.2 ms
    gcs: list[tuple] = []  # (began, seconds, generation)
    probes: list[tuple] = []  # (began, returned) of the broker probes (Telemetry.maybe_probe)
    last = {"poll": (0.0, 0.0), "ts": None, "gc": 0.0}

    init0 = wa.Worker.__init__

    def init(self, *a, **kw):
        init0(self, *a, **kw)
        poll0 = self.source.poll

        def poll(*pa, **pk):
            t0 = time.time()
            b = poll0(*pa, **pk)
            last["poll"] = (t0, time.time())
            calls.append(last["poll"])
            return b

        self.source.poll = poll

    wa.Worker.__init__ = init
    core0 = wp.PollProcessor.run_core

    def run_core(self, batch):
        res = core0(self, batch)
        last["ts"] = np.asarray(res.scored_ts_ms, np.int64).copy()
        return res

    wp.PollProcessor.run_core = run_core
    handle0 = wp.PollProcessor.handle

    def handle(self, batch):
        last["ts"] = None
        h0 = time.time()
        handle0(self, batch)
        h1 = time.time()
        ts = last["ts"]
        n = 0 if ts is None else len(ts)
        polls.append((*last["poll"], h0, h1, n))
        stamps.append(ts if ts is not None else np.zeros(0, np.int64))

    wp.PollProcessor.handle = handle
    round0 = wc.CheckpointCoordinator.maybe_round

    def maybe_round(self):
        t0 = time.time()
        round0(self)
        t1 = time.time()
        if t1 - t0 > 2e-4:
            rounds.append((t0, t1))

    wc.CheckpointCoordinator.maybe_round = maybe_round
    import worker.telemetry as wt

    probe0 = wt.Telemetry.maybe_probe

    def maybe_probe(self, *a, **kw):  # every 5 s: end offsets from the broker, on the consumer's thread
        t0 = time.time()
        probe0(self, *a, **kw)
        t1 = time.time()
        if t1 - t0 > 2e-4:
            probes.append((t0, t1))

    wt.Telemetry.maybe_probe = maybe_probe

    def on_gc(phase, info):
        if phase == "start":
            last["gc"] = time.perf_counter()
        else:
            gcs.append((time.time(), time.perf_counter() - last["gc"], info.get("generation", -1)))

    gc.callbacks.append(on_gc)

    def dump():
        np.savez(path, calls=np.asarray(calls, np.float64).reshape(-1, 2), polls=np.asarray(polls, np.float64).reshape(-1, 5),
                 counts=np.asarray([len(s) for s in stamps], np.int64),
                 ts_ms=np.concatenate(stamps) if stamps else np.zeros(0, np.int64),
                 rounds=np.asarray(rounds, np.float64).reshape(-1, 2),
                 probes=np.asarray(probes, np.float64).reshape(-1, 2), gcs=np.asarray(gcs, np.float64).reshape(-1, 3))

    atexit.register(dump)


def _q(a: np.ndarray, qs=(50, 99)) -> list:
    return [float(x) for x in np.percentile(a, qs)] if len(a) else [None] * len(qs)


def analyse(path: str, since_ms: float, until_ms: float) -> dict:
    """Per-reading latency and its parts for readings stamped in [since_ms, until_ms), in ms."""
    z = np.load(path)
    polls, counts, ts = z["polls"], z["counts"], z["ts_ms"].astype(np.float64)
    idx = np.repeat(np.arange(len(polls)), counts)
    keep = (ts >= since_ms) & (ts < until_ms)
    ts, idx = ts[keep], idx[keep]
    if not len(ts):
        return {"readings": 0}
    p0, p1, h1 = polls[idx, 0] * 1000, polls[idx, 1] * 1000, polls[idx, 3] * 1000
    lat = h1 - ts
    # time inside poll calls, cumulative: the worker's time outside them between the stamp and
    # the poll that got the reading is what the worker kept it waiting (busy)
    calls = z["calls"] * 1000
    dur = calls[:, 1] - calls[:, 0]
    start_sum = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    edges, inside = calls.reshape(-1), np.stack([start_sum, start_sum + dur], 1).reshape(-1)

    def inside_at(t):
        return np.interp(t, edges, inside)

    queued = np.maximum(0.0, (p0 - ts) - (inside_at(p0) - inside_at(np.minimum(ts, p0))))
    fetch = (p1 - ts) - queued
    handle = h1 - p1
    cut = np.percentile(lat, 99)
    tail = lat >= cut
    used = np.unique(idx)
    w0, w1 = polls[used[0], 0], polls[used[-1], 3]
    wall = max(w1 - w0, 1e-9)
    sel = polls[used]
    rounds = z["rounds"]
    rounds = rounds[(rounds[:, 0] >= w0) & (rounds[:, 0] <= w1)]
    pb = z["probes"] if "probes" in z else np.zeros((0, 2))
    pb = pb[(pb[:, 0] >= w0) & (pb[:, 0] <= w1)]
    gcs = z["gcs"]
    gcs = gcs[(gcs[:, 0] >= w0) & (gcs[:, 0] <= w1)]
    hd = (sel[:, 3] - sel[:, 2]) * 1000
    return {
        "readings": int(len(ts)), "polls": int(len(used)),
        "latency_ms": dict(zip(("p50", "p90", "p99", "max"), _q(lat, (50, 90, 99, 100)))),
        "to_worker_ms": dict(zip(("p50", "p99"), _q(p1 - ts))),  # stamped -> in the worker's hands
        "parts_mean_ms": {"queued": float(queued.mean()), "fetch": float(fetch.mean()), "handle": float(handle.mean())},
        "parts_mean_ms_slowest_1pct": {"queued": float(queued[tail].mean()), "fetch": float(fetch[tail].mean()),
                                       "handle": float(handle[tail].mean())},
        "records_per_poll": dict(zip(("p50", "p99", "max"), _q(sel[:, 4], (50, 99, 100)))),
        "handle_ms": dict(zip(("p50", "p99", "max"), _q(hd, (50, 99, 100)))),
        "loop_share": {"in_poll": float((sel[:, 1] - sel[:, 0]).sum() / wall), "handle": float(hd.sum() / 1000 / wall),
                       "checkpoint_rounds": float((rounds[:, 1] - rounds[:, 0]).sum() / wall)},
        "rounds": {"count": int(len(rounds)), "max_ms": float((rounds[:, 1] - rounds[:, 0]).max() * 1000) if len(rounds) else 0.0},
        "broker_probes": {"count": int(len(pb)), "max_ms": float((pb[:, 1] - pb[:, 0]).max() * 1000) if len(pb) else 0.0},
        "gc": {"count": int(len(gcs)), "total_ms": float(gcs[:, 1].sum() * 1000), "max_ms": float(gcs[:, 1].max() * 1000) if len(gcs) else 0.0,
               "gen2": int((gcs[:, 2] == 2).sum())},
    }


def run_worker() -> int:
    """`slotwatch run` with the wrappers (not a suite: writes no results, only the trace)."""
    install(os.environ["SLOTWATCH_BENCH_TRACE"])
    from worker.cli import main as cli

    prof = os.environ.get("SLOTWATCH_BENCH_PROFILE")  # cProfile of the whole run, stats to this file
    if not prof:
        return cli(["run", *sys.argv[1:]])
    import cProfile

    p = cProfile.Profile()
    atexit.register(lambda: p.dump_stats(prof))
    p.enable()
    return cli(["run", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(run_worker())
