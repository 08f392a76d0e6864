"""Scale-out: readings/s end to end with 1, 2 and 3 workers in one consumer group (issue 12 item 6).

In one run, on one embedded broker:

1. produce the feed once (default 600,000 readings from 6,000 sensors) to a 6-partition
   readings topic: every worker count reads the same records;
2. for k = 1, 2, 3: a fresh consumer group and a fresh changelog topic; k ``slotwatch run``
   child processes start together, each with ``SLOTWATCH_CHECKPOINT__STATE_STORE=kafka`` and
   its own empty checkpoint folder (anomalies only, B=256, units 64, a round every 5 s);
   measured off their /metrics every 0.5 s:

   * **steady rate**: once every worker is ready and consuming (the group has settled), the sum of
     the workers' consumed counters over the window until 95% of the feed is consumed (or
     ``--window`` s); no rebalance falls in it;
   * **drain**: from the first reading consumed to every reading committed, joins, rebalances
     and changelog restores included;
   * CPU seconds per second of the workers and of the broker (``/proc/<pid>/stat``) and of the
     whole machine over the steady window, the changelog bytes written per round.

The machine has 2 cores: the broker, the k workers (and nothing else of this benchmark while
it measures: the feed is produced before) share them, so the sum of the workers' rates cannot
grow much beyond one worker's; the readings per worker CPU-second are what carries over to a
cluster where each worker has its own cores (see the README's projection).

Run: ``python -m benchmarks.scaleout [--quick] [--readings N] [--sensors S] [--results DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import finish, md_table
from benchmarks.e2e import _cpu_times, _model, _produce, _stop

PARTITIONS = 6
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (float(fields[11]) + float(fields[12])) / TICK
    except OSError:
        return 0.0


def _metrics(port: int) -> dict[str, float]:
    """``name{labels}`` -> value from a worker's /metrics (empty while it does not answer)."""
    from tests.worker_helpers import scrape_labeled

    return scrape_labeled(port)


def _owned(m: dict[str, float]) -> dict[int, float]:
    return {int(k.split("partition=")[1].rstrip("}")): v for k, v in m.items() if k.startswith("slotwatch_committed_offset{")}


def _start(bootstrap: str, topics: dict, group: str, changelog: str, model: Path, ckpt: Path, port: int, log: Path):
    """One worker of the group (the e2e benchmark's worker, state in the Kafka changelog)."""
    from benchmarks.e2e import _start_worker

    ckpt.mkdir(parents=True)
    return _start_worker(bootstrap, topics, model, ckpt, port, False, log, **{
        "SLOTWATCH_KAFKA__GROUP_ID": group,
        "SLOTWATCH_MODEL__SLOTS": "256",
        "SLOTWATCH_CHECKPOINT__STATE_STORE": "kafka",
        "SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC": changelog,
        "SLOTWATCH_CHECKPOINT__INTERVAL_S": "5",
        # each worker gets one core's worth of TensorFlow threads: k of them share 2 cores here
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
    })


def run_group(k: int, broker, topics: dict, model: Path, d: Path, n: int, window_s: float, progress: bool = True,
              timeout_s: float = 900.0) -> dict:
    """k workers on the pre-produced feed: steady rate, drain time, CPU, changelog bytes per round."""
    from kafka import KafkaAdminClient

    from worker.kafka.changelog import ensure_changelog_topic
    from worker.kafka.embedded import free_port

    group = f"scaleout-{k}-{topics['readings']}"
    changelog = f"{topics['readings']}.changelog-{k}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    ensure_changelog_topic(admin, changelog, PARTITIONS)
    admin.close()
    ports = [free_port() for _ in range(k)]
    procs = [_start(broker.bootstrap, topics, group, changelog, model, d / f"ck-{k}-{i}", ports[i], d / f"worker-{k}-{i}.log")
             for i in range(k)]
    pids = [p.pid for p in procs] + [broker.proc.pid]
    t_first = settled = steady_end = prev = None
    samples = []  # (time, consumed sum, cpu of each worker + broker, machine busy, machine total)
    last_print = 0.0
    out: dict = {"workers": k}
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{k} workers did not drain {n:,} readings in {timeout_s:.0f} s")
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(f"worker {i} of {k} exited with {p.returncode}; see {d / f'worker-{k}-{i}.log'}")
            ms = [_metrics(port) for port in ports]
            now = time.perf_counter()
            consumed = sum(m.get("slotwatch_readings_consumed_total", 0.0) for m in ms)
            owned = [_owned(m) for m in ms]
            committed = sum(v for o in owned for v in o.values())
            if consumed > 0 and t_first is None:
                t_first = now
            busy, total = _cpu_times()
            sample = (now, consumed, [_proc_cpu(pid) for pid in pids], busy, total)
            per = [m.get("slotwatch_readings_consumed_total", 0.0) for m in ms]
            # settled: every worker ready and consuming (each owns partitions of the current generation:
            # no join is pending, no rebalance will fall in the window)
            if (settled is None and prev is not None and all(m.get("slotwatch_ready", 0) >= 1 for m in ms)
                    and all(c > b for c, b in zip(per, prev))):
                settled = sample
                out["consumed_before_settled"] = consumed
                out["settle_s"] = now - t_first
            prev = per
            if settled is not None and steady_end is None:
                samples.append(sample)
                if consumed >= 0.95 * n or now - settled[0] >= window_s:
                    steady_end = sample
            if progress and now - last_print > 5:
                print(f"  {k} worker(s): consumed {consumed:,.0f}, committed {committed:,.0f} of {n:,}"
                      f"{'' if settled else ' (group settling)'}", flush=True)
                last_print = now
            if committed >= n and len(set(p for o in owned for p in o)) == PARTITIONS:
                out["drain_s"] = now - t_first
                out["changelog_bytes"] = sum(m.get("slotwatch_changelog_bytes_total", 0.0) for m in ms)
                out["rounds"] = sum(m.get("slotwatch_checkpoint_duration_seconds_count", 0.0) for m in ms)
                out["restored_sensors"] = sum(m.get("slotwatch_changelog_restored_sensors_total", 0.0) for m in ms)
                out["restore_seconds"] = sum(m.get("slotwatch_changelog_restore_seconds_sum", 0.0) for m in ms)
                out["restores"] = sum(m.get("slotwatch_changelog_restore_seconds_count", 0.0) for m in ms)
                out["consumed_total"] = consumed  # > n: readings replayed after a rebalance
                break
            time.sleep(0.5)
    finally:
        out["exit_codes"] = [_stop(p) for p in procs]
    if settled is None or steady_end is None or steady_end[0] - settled[0] < 1.0:
        out["steady_per_s"] = None  # the backlog ran out before the group settled: --readings larger
        return out
    dt = steady_end[0] - settled[0]
    out["steady_s"] = dt
    out["steady_per_s"] = (steady_end[1] - settled[1]) / dt
    cpu = [(b - a) / dt for a, b in zip(settled[2], steady_end[2])]
    out["worker_cpu"] = cpu[:-1]
    out["broker_cpu"] = cpu[-1]
    out["machine_busy"] = (steady_end[3] - settled[3]) / max(steady_end[4] - settled[4], 1.0)
    # what the rest of the (shared) machine took meanwhile: other jobs, this benchmark's own poller
    out["others_cpu"] = max(0.0, out["machine_busy"] * (os.cpu_count() or 1) - sum(cpu))
    out["per_worker_cpu_s"] = out["steady_per_s"] / max(sum(out["worker_cpu"]), 1e-9)
    out["changelog_bytes_per_round"] = out["changelog_bytes"] / max(out["rounds"], 1.0)
    out["restore_s_per_partition"] = out["restore_seconds"] / max(out["restores"], 1.0)
    return out


def run(quick: bool = False, readings: int | None = None, sensors: int | None = None, window_s: float | None = None,
        progress: bool = True) -> dict:
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker
    from worker.settings import KafkaSettings

    n = readings or (200_000 if quick else 600_000)
    s = sensors or (3_000 if quick else 6_000)
    window = window_s or (8.0 if quick else 20.0)
    res: dict = {"settings": {"readings": n, "sensors": s, "partitions": PARTITIONS, "units": 64, "slots": 256,
                              "state_store": "kafka", "checkpoint_interval_s": 5, "publish_scores": False,
                              "window_s": window, "tf_threads_per_worker": 1},
                 "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        d = Path(tmp)
        model = _model(d).parent
        topics = {k: f"bench-scaleout.{k}" for k in ("readings", "scores", "anomalies", "dead")}
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap),
                      {t: (PARTITIONS if k == "readings" else 1) for k, t in topics.items()})
        print(f"producing {n:,} readings of {s:,} sensors to {PARTITIONS} partitions ...", flush=True)
        res["produce_per_s"] = _produce(broker.bootstrap, topics["readings"], n, s, progress)
        res["runs"] = []
        for k in (1, 2, 3):
            print(f"== {k} worker(s)", flush=True)
            res["runs"].append(run_group(k, broker, topics, model, d, n, window, progress))
    res["load_average_after"] = os.getloadavg()
    one = res["runs"][0].get("steady_per_s")
    for r in res["runs"]:
        r["speedup"] = (r["steady_per_s"] / one) if one and r.get("steady_per_s") else None
    return res


def report(res: dict) -> str:
    s = res["settings"]
    rows = []
    for r in res["runs"]:
        rows.append({
            "workers": r["workers"],
            "steady readings/s (sum)": r.get("steady_per_s") or float("nan"),
            "vs 1 worker": f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            "settle s": r.get("settle_s", float("nan")),
            "drain s (joins incl.)": r.get("drain_s", float("nan")),
            "worker CPU (cores)": f"{sum(r.get('worker_cpu', [])):.2f}" if r.get("worker_cpu") else "-",
            "broker CPU (cores)": f"{r['broker_cpu']:.2f}" if "broker_cpu" in r else "-",
            "machine busy": f"{100 * r['machine_busy']:.0f}%" if "machine_busy" in r else "-",
            "rest of machine (cores)": f"{r['others_cpu']:.2f}" if "others_cpu" in r else "-",
            "readings per worker CPU-s": r.get("per_worker_cpu_s") or float("nan"),
            "changelog MB/round": (r.get("changelog_bytes_per_round") or 0) / 1e6,
            "restores (s each)": f"{r.get('restores', 0):.0f} ({r.get('restore_s_per_partition', 0):.2f})",
        })
    cols = list(rows[0]) if rows else []
    la_b, la_a = res["load_average_before"], res["load_average_after"]
    lines = [f"## Scale-out: {s['readings']:,} readings of {s['sensors']:,} sensors, {s['partitions']} partitions, "
             f"state in the Kafka changelog, 1/2/3 workers (separate processes) on one embedded broker", "",
             md_table(rows, cols), "",
             f"Feed produced beforehand at {res['produce_per_s']:,.0f} readings/s. Load average before "
             f"{la_b[0]:.1f}, after {la_a[0]:.1f}. Steady rate: after the group settled (every worker owns "
             "partitions), until 95% of the feed was consumed or the window ended. Settle: first reading consumed to "
             "every worker consuming (joins, rebalances, changelog restores). Drain: first reading consumed to every "
             "reading committed.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--quick", action="store_true", help="200,000 readings of 3,000 sensors, an 8 s window (about 4 minutes)")
    p.add_argument("--readings", type=int, default=None, help="readings in the feed (default 600,000)")
    p.add_argument("--sensors", type=int, default=None, help="distinct sensors (default 6,000)")
    p.add_argument("--window", type=float, default=None, help="longest steady window in seconds (default 20)")
    args = p.parse_args(argv)
    res = run(quick=args.quick, readings=args.readings, sensors=args.sensors, window_s=args.window)
    finish("scaleout", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
