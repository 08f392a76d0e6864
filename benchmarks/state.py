"""State benchmark: checkpoint size and time, memory per sensor, and the cost of paging.

* checkpoint write (export from the state table, encode with checksum, atomic durable
  write with fsync) and restore (read, verify, decode, import into a fresh table) for
  10k / 100k / 1M sensors of one partition, units 64 — target: at most 1 s per 100k;
* the longest the consumer thread is held by a checkpoint: the worker takes a copy of the
  partition's state on the consumer thread and encodes and writes it on its checkpoint
  thread — target: at most 100 ms;
* memory held per sensor (state table row + id + index entry, measured with tracemalloc)
  — target: at most 2 KB at units 64;
* paging: readings/s with 10x more sensors than slots, against every sensor keeping its
  slot, in the same run.

Run: ``python -m benchmarks.state [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import Timer, finish, md_table, targets_md


def _filled_table(n: int, units: int = 64, f: int = 1, recent: int = 16):
    from worker.state.table import StateTable

    t = StateTable(f, 2 * units, recent, capacity=n)
    for i in range(n):
        t.add(f"sensor-{i:07d}", partition=0)
    rng = np.random.default_rng(0)
    c = t.cols
    c["state"][:n] = rng.normal(size=(n, 2 * units)).astype(np.float32)
    c["count"][:n] = rng.integers(0, 10_000, n)
    c["last_ts"][:n] = 1_795_000_000_000 + rng.integers(0, 10**6, n)
    c["last_offset"][:n] = np.arange(n)
    c["mean"][:n] = rng.normal(size=(n, f))
    c["std"][:n] = 1.0
    c["recent"][:n] = rng.normal(size=(n, recent, f))
    return t


def bench_checkpoint(n: int, units: int = 64) -> dict:
    from worker.checkpointing.format import Checkpoint, encode
    from worker.checkpointing.store import CheckpointStore
    from worker.state.table import StateTable

    table = _filled_table(n, units)
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d, "readings", generations=3)
        with Timer() as t_export:
            cols = table.export_rows(table.rows_of_partition(0))
            blob_ck = Checkpoint(0, n, "bench", cols)
        with Timer() as t_encode:
            blob = encode(blob_ck)
        with Timer() as t_write:
            store.save(blob_ck)
        with Timer() as t_load:
            ck = store.load(0)
        fresh = StateTable(1, 2 * units, 16)
        with Timer() as t_import:
            fresh.import_rows(ck.columns)
        assert fresh.n_rows == n and np.array_equal(fresh.cols["state"][:n], table.cols["state"][:n])
    write_s = t_export.seconds + t_write.seconds  # store.save encodes itself
    restore_s = t_load.seconds + t_import.seconds
    return {
        "sensors": n,
        "bytes": len(blob),
        "bytes_per_sensor": len(blob) / n,
        "export_s": t_export.seconds,
        "encode_s": t_encode.seconds,
        "write_s": write_s,
        "restore_s": restore_s,
        "write_s_per_100k": write_s / n * 1e5,
        "restore_s_per_100k": restore_s / n * 1e5,
        "consumer_hold_s": t_export.seconds,  # the worker encodes and writes on its checkpoint thread
    }


def bench_memory(n: int = 100_000, units: int = 64) -> dict:
    import gc

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table = _filled_table(n, units)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    row = table.nbytes_per_row()
    return {"sensors": n, "units": units, "bytes_per_sensor": used / n, "table_row_bytes": row,
            "overhead_bytes": used / n - row}


def bench_paging(slots: int = 256, ratio: int = 10, units: int = 64, readings: int = 60_000) -> dict:
    from worker.core.artifact import Artifact, Calibration, Manifest, Scaling, build_network
    from worker.core.detector import SlotDetector
    from worker.core.readings import Reading

    art = Artifact(None, Manifest("bench", ["x"], [units], Scaling([0.0], [1.0]), Calibration()), build_network(1, [units], seed=0))
    out = {}
    rng = np.random.default_rng(1)
    for name, n_sensors in (("fits", slots), ("paged", slots * ratio)):
        det = SlotDetector(art, slots=slots)
        ids = [f"s{i}" for i in range(n_sensors)]
        # each poll brings readings of `slots` random sensors: with 10x sensors most need paging in
        seq = [Reading(ids[k], i * 10, np.array([rng.normal()])) for i, k in enumerate(rng.integers(0, n_sensors, readings))]
        det.process(seq[: slots * 4])
        with Timer() as t:
            for s in range(slots * 4, len(seq), 2000):
                det.process(seq[s : s + 2000])
        out[name] = {"sensors": n_sensors, "readings_per_s": (len(seq) - slots * 4) / t.seconds,
                     "page_outs": det.stats.page_outs, "ticks": det.stats.ticks}
    out["slowdown"] = out["fits"]["readings_per_s"] / out["paged"]["readings_per_s"]
    return out


def run(quick: bool = False) -> dict:
    from tqdm import tqdm

    from worker.runtime import tune_gc

    tune_gc()
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    rows = []
    for n in tqdm(sizes, desc="checkpoint bench", unit="size"):
        rows.append(bench_checkpoint(n))
    mem = bench_memory(20_000 if quick else 100_000)
    paging = bench_paging(readings=20_000 if quick else 60_000)
    worst_hold = max(r["consumer_hold_s"] for r in rows if r["sensors"] <= 100_000)
    targets = {
        "checkpoint_write_s_per_100k": {"target": 1.0, "measured": max(r["write_s_per_100k"] for r in rows), "met": all(r["write_s_per_100k"] <= 1.0 for r in rows)},
        "checkpoint_restore_s_per_100k": {"target": 1.0, "measured": max(r["restore_s_per_100k"] for r in rows), "met": all(r["restore_s_per_100k"] <= 1.0 for r in rows)},
        "consumer_hold_s_at_100k": {"target": 0.1, "measured": worst_hold, "met": worst_hold <= 0.1},
        "bytes_per_sensor_u64": {"target": 2048, "measured": mem["bytes_per_sensor"], "met": mem["bytes_per_sensor"] <= 2048},
    }
    return {"settings": {"quick": quick, "units": 64, "features": 1, "recent": 16}, "checkpoint": rows, "memory": mem,
            "paging": paging, "targets": targets}


def report(res: dict) -> str:
    lines = ["## State: checkpoints, memory, paging", "",
             md_table(res["checkpoint"], ["sensors", "bytes_per_sensor", "write_s", "restore_s", "write_s_per_100k", "restore_s_per_100k", "consumer_hold_s"]),
             "", f"Memory per sensor held (units 64): {res['memory']['bytes_per_sensor']:.0f} B "
             f"(table row {res['memory']['table_row_bytes']} B + id/index {res['memory']['overhead_bytes']:.0f} B)", "",
             f"Paging, 10x more sensors than slots: {res['paging']['paged']['readings_per_s']:,.0f} readings/s vs "
             f"{res['paging']['fits']['readings_per_s']:,.0f} when every sensor keeps its slot "
             f"({res['paging']['slowdown']:.2f}x slower; {res['paging']['paged']['page_outs']:,} page-outs)", ""]
    lines += targets_md(res.get("targets", {}))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.state", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--quick", action="store_true", help="10k and 100k sensors only")
    args = p.parse_args(argv)
    res = run(quick=args.quick)
    finish("state", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
