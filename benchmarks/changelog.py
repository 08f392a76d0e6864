"""Changelog benchmark: restore time of a partition from the state changelog, bytes per round.

On a local broker (embedded tansu unless ``--bootstrap``), one partition of N sensors
(default 100,000; units 64, 1 feature, ring 16: the state benchmark's table):

* **bytes per round** — a checkpoint round's changelog records (keys + values + headers,
  as produced) with 1% / 10% / 100% of the sensors changed since the last round, and the
  time to produce them and wait for every acknowledgement; next to it the local checkpoint
  file of the whole partition (what a local round writes whatever changed);
* **restore** — read the changelog partition to its end (fence record, assign()+seek),
  fold it (newest row per sensor at or below the committed offset) and import the rows
  into a fresh state table — target: at most 5 s for 100k sensors; measured on a log with
  one generation per sensor and on the uncompacted log after all the rounds above (the
  test broker never compacts); baselines in the same run: a bare read of the same records
  with no decoding, and the local checkpoint file's load + import.

Run: ``python -m benchmarks.changelog [--sensors N] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import Timer, finish, md_table, targets_md

FRACTIONS = [0.01, 0.10, 1.00]


def _record_bytes(recs) -> int:
    return sum(len(r.key) + len(r.value or b"") + sum(len(k) + len(v) for k, v in r.headers) for r in recs)


def _export(table, version: str = "bench-v1"):
    from worker.core.handover import VERSION_COLUMN

    cols = table.export_rows(table.rows_of_partition(0))
    cols[VERSION_COLUMN] = np.full(len(cols["sensor_id"]), version, dtype=object)
    return cols


#: restore consumers compared side by side on the uncompacted log (issue 12): the current one, and fetch sizes
FETCH_VARIANTS = {
    "current (64 MiB / 16 MiB, all records)": {},
    "fetch 128 MiB / 64 MiB": {"fetch_max_bytes": 128 << 20, "max_partition_fetch_bytes": 64 << 20},
    "fetch 8 MiB / 4 MiB": {"fetch_max_bytes": 8 << 20, "max_partition_fetch_bytes": 4 << 20},
    "max_poll_records 5000": {"max_poll_records": 5000},
}


def _restore(bootstrap: str, prod, topic: str, committed: int, n: int, units: int, *, snapshots: bool = False,
             **consumer) -> dict:
    from worker.checkpointing.changelog import fold
    from worker.kafka.changelog import make_restore_consumer, read_partition
    from worker.state.table import StateTable

    cons = make_restore_consumer(bootstrap, **consumer)
    try:
        with Timer() as t_read:
            recs = list(read_partition(cons, prod, topic, 0, committed=committed if snapshots else None))
        with Timer() as t_fold:
            res = fold(recs, committed)
        fresh = StateTable(1, 2 * units, 16, capacity=n)
        with Timer() as t_import:
            fresh.import_rows(res.columns)
    finally:
        cons.close()
    return {"records": len(recs), "sensors": res.n_sensors, "read_s": t_read.seconds, "fold_s": t_fold.seconds,
            "import_s": t_import.seconds, "restore_s": t_read.seconds + t_fold.seconds + t_import.seconds,
            "table": fresh}


def _bare_read(bootstrap: str, topic: str, expect: int) -> float:
    from kafka import TopicPartition

    from worker.kafka.changelog import make_restore_consumer

    cons = make_restore_consumer(bootstrap)
    tp = TopicPartition(topic, 0)
    cons.assign([tp])
    cons.seek_to_beginning(tp)
    got = 0
    t0 = time.perf_counter()
    while got < expect:
        got += sum(len(v) for v in cons.poll(timeout_ms=200, max_records=100_000).values())
    s = time.perf_counter() - t0
    cons.close()
    return s


def run(n: int = 100_000, units: int = 64, bootstrap: str | None = None) -> dict:
    from kafka import KafkaAdminClient, KafkaProducer

    from benchmarks.state import _filled_table
    from worker.checkpointing import changelog as cl
    from worker.checkpointing.format import Checkpoint
    from worker.checkpointing.store import CheckpointStore
    from worker.kafka.changelog import ChangelogStore, ChangelogWriter, ensure_changelog_topic
    from worker.settings import KafkaSettings
    from worker.state.table import StateTable

    broker = None
    if bootstrap is None:
        from worker.kafka.embedded import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        tag = uuid.uuid4().hex[:8]
        one_gen, many_gen = f"bench-{tag}.changelog-1gen", f"bench-{tag}.changelog"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        for t in (one_gen, many_gen):
            ensure_changelog_topic(admin, t, 1)
        admin.close()
        prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, batch_size=1 << 20,
                             max_request_size=1 << 22)
        print(f"filling a table of {n:,} sensors ...", flush=True)
        table = _filled_table(n, units)
        rng = np.random.default_rng(1)

        # local checkpoint of the whole partition: the baseline of bytes and restore
        with tempfile.TemporaryDirectory() as d:
            store = CheckpointStore(d, "readings", generations=1)
            cols = _export(table)
            _, local_bytes = store.save(Checkpoint(0, n, "bench-v1", cols))
            with Timer() as t_local:
                ck = store.load(0)
                StateTable(1, 2 * units, 16, capacity=n).import_rows(ck.columns)

        first_state = table.cols["state"][:n].copy()
        rounds = []
        offset = n
        # the uncompacted log is written by the worker's ChangelogStore (it decides the full snapshots)
        store = ChangelogStore(KafkaSettings(bootstrap_servers=bootstrap), prod, many_gen, timeout_s=300)
        for topic in (one_gen, many_gen):  # round 0: every sensor is new
            cols = _export(table)
            if topic == many_gen:
                rnd = store.prepare(0, cols, offset, "bench-v1")
                rows, recs = rnd[3], rnd[1]
            else:
                rows = cl.select_changed(cols, {})
                recs = cl.encode_round(0, offset, cols, rows, "bench-v1")
            with Timer() as t_w:
                if topic == many_gen:
                    store.write([rnd])
                else:
                    ChangelogWriter(prod, topic).write(0, recs, timeout_s=300)
            if topic == many_gen:
                rounds.append({"round": "first (all new)", "changed_pct": 100.0, "rows": len(rows),
                               "bytes": _record_bytes(recs), "bytes_per_row": _record_bytes(recs) / len(rows),
                               "produce_ack_s": t_w.seconds, "local_checkpoint_bytes": local_bytes})
        one_gen_records = len(recs)
        for frac in FRACTIONS:
            k = max(1, int(n * frac))
            pick = rng.choice(n, k, replace=False)
            offset += k
            c = table.cols
            c["last_offset"][pick] = offset - 1 - np.arange(k)
            c["state"][pick] += 0.01
            c["count"][pick] += 1
            cols = _export(table)
            with Timer() as t_sel:
                rnd = store.prepare(0, cols, offset, "bench-v1")
                rows, recs = rnd[3], rnd[1]
            assert len(rows) == k or rnd[6]  # a full snapshot writes every row
            with Timer() as t_w:
                store.write([rnd])
            b = _record_bytes(recs)
            rounds.append({"round": f"{frac:.0%} changed" + (" (full snapshot)" if rnd[6] else ""),
                           "changed_pct": 100 * frac, "rows": len(rows), "bytes": b,
                           "bytes_per_row": b / k, "select_encode_s": t_sel.seconds, "produce_ack_s": t_w.seconds,
                           "local_checkpoint_bytes": local_bytes})
            print(f"round with {frac:.0%} changed: {b:,} bytes, {t_w.seconds:.2f} s to produce and ack", flush=True)

        print("restoring ...", flush=True)
        restores = []
        cases = [("one generation", one_gen, n, False, {})]
        cases += [(f"uncompacted, 5 generations, full read, {v}", many_gen, offset, False, kw)
                  for v, kw in FETCH_VARIANTS.items()]
        cases += [("uncompacted, 5 generations, seek to the newest snapshot", many_gen, offset, True, {}),
                  ("uncompacted, 5 generations, seek + fetch 128 MiB / 64 MiB", many_gen, offset, True,
                   FETCH_VARIANTS["fetch 128 MiB / 64 MiB"]),
                  ("uncompacted, 5 generations, full read, current again (order check)", many_gen, offset, False, {})]
        bare = {}
        for name, topic, committed, snaps, kw in cases:
            if topic not in bare:
                bare[topic] = _bare_read(bootstrap, topic, one_gen_records if topic == one_gen
                                         else sum(r["rows"] for r in rounds))
            bare_s = bare[topic]
            r = _restore(bootstrap, prod, topic, committed, n, units, snapshots=snaps, **kw)
            fresh = r.pop("table")
            assert r["sensors"] == n
            want = first_state if topic == one_gen else table.cols["state"][:n]
            order = np.array([fresh.index[s] for s in table.ids])  # the restored row of each original row
            assert np.array_equal(fresh.cols["state"][order], want), "restore differs from the written state"
            r.update(log=name, bare_read_s=bare_s, local_checkpoint_restore_s=t_local.seconds,
                     ratio_restore_to_bare_read=r["restore_s"] / bare_s,
                     ratio_restore_to_local=r["restore_s"] / t_local.seconds)
            restores.append(r)
            print(f"restore ({name}): {r['restore_s']:.2f} s", flush=True)
        prod.close()
    finally:
        if broker is not None:
            broker.stop()
    base = next(r for r in restores if r["log"].endswith(next(iter(FETCH_VARIANTS))))
    for r in restores:
        r["ratio_to_current_restore"] = r["restore_s"] / base["restore_s"] if "uncompacted" in r["log"] else None
    targets = {}
    for r in restores:  # scaled to 100k sensors when --sensors says otherwise
        per100k = r["restore_s"] / n * 1e5
        targets[f"restore of 100k sensors, {r['log']} (s)"] = {"target": "<= 5", "measured": per100k,
                                                               "met": per100k <= 5.0}
    return {"settings": {"sensors": n, "units": units, "features": 1, "ring": 16,
                         "broker": "embedded tansu" if broker is not None else bootstrap},
            "rounds": rounds, "restores": restores, "targets": targets}


def report(res: dict) -> str:
    s = res["settings"]
    lines = [f"# Changelog: {s['sensors']:,} sensors in one partition (units {s['units']}, {s['broker']})", "",
             "## Bytes per checkpoint round", "",
             md_table(res["rounds"], ["round", "rows", "bytes", "bytes_per_row", "produce_ack_s", "local_checkpoint_bytes"]),
             "", "## Restore", "",
             md_table(res["restores"], ["log", "records", "sensors", "read_s", "fold_s", "import_s", "restore_s",
                                        "bare_read_s", "ratio_restore_to_bare_read", "ratio_to_current_restore",
                                        "local_checkpoint_restore_s"]),
             "", "## Targets", "", *targets_md(res["targets"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.changelog", description=__doc__.split("\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--sensors", type=int, default=100_000, help="sensors in the partition (default 100,000)")
    p.add_argument("--bootstrap", default=None, help="a broker to use instead of an embedded tansu")
    a = p.parse_args(argv)
    res = run(a.sensors, bootstrap=a.bootstrap)
    finish("changelog", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
