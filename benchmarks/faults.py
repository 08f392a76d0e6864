"""Fault campaign (issue 10): the worker under the faults a deployment meets, measured.

One command, ``python -m benchmarks.faults``, on one embedded broker; the worker always runs
as a child process (``python -m worker.cli run``), as in production.  Scenarios:

* ``kill9``: kill -9 at random moments (default 10 times) while the worker works through a
  stream (default 60,000 readings, 200 sensors, 4 partitions), then a last life to the end;
* ``pause``: the broker frozen (SIGSTOP) for 60 s in the middle of a stream, then SIGCONT;
* ``disk``: the checkpoint folder on a 1 MiB tmpfs, remounted read-only for a while, then
  filled to the last byte for a while, then a kill -9 and a restart;
* ``flood``: 1,000,000 readings of distinct sensor ids with ``SLOTWATCH_LIMITS__MAX_SENSORS``
  on; the worker's RSS is sampled from ``/proc``.

For every stream scenario: readings lost (never scored), double-applied (a sensor whose final
state or reading count differs from an uninterrupted in-process run), duplicates whose bytes
differ, scores that differ from the uninterrupted run, and crashes (the worker exiting on its
own).  Results: ``<results>/<machine>-<date>-faults.json`` (``--results``, default ``bench-results/``) and ``.md``.

The tmpfs needs root (``mount -t tmpfs``); without it the disk scenario is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.common import finish, md_table


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- shared pieces
class Life:
    """One worker process; ``crashed`` when it exited without being told to."""

    def __init__(self, env: dict, log: Path) -> None:
        self.log = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=self.log, stderr=self.log)

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill9(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def term(self, timeout: float = 60.0) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout)

    def rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


def _metric(m: dict, prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def _stream(n_sensors: int, steps: int, seed: int):
    from tests.conftest import sine_fleet
    from tests.worker_helpers import fleet_messages

    ids = [f"s{i}" for i in range(n_sensors)]
    return ids, fleet_messages(sine_fleet(n_sensors, steps, 1, seed=seed), ids, ["temp"])


def _verify(broker, topics, artifact_dir, ck: Path, msgs, partitions: int, slots: int, steps: int) -> dict:
    """Lost / double-applied / differing duplicates / differing scores against an uninterrupted run."""
    from tests.worker_helpers import final_states, partition_by_index, reference_detector, worker_settings
    from worker.codec import ReadingCodec, encode_score
    from worker.core import artifact as art

    part = partition_by_index(partitions)
    a = art.load(artifact_dir)
    codec = ReadingCodec(["temp"])
    readings = [codec.decode(v, part(k)) for k, v in msgs]
    settings = worker_settings(broker, topics, artifact_dir, ck, model={"slots": slots})
    ref, ref_scores = reference_detector(a, settings, readings)
    states = final_states(ck, topics["readings"])
    double = 0
    for sid in ref.table.index:
        st = states.get(sid)
        if st is None or st[2] != steps or not np.allclose(st[0], ref.sensor_state(sid), atol=1e-6):
            double += 1
    recs = broker.read_all(topics["scores"], expect=None, timeout=180, idle=4.0)
    by_key: dict[tuple[int, int], set[bytes]] = {}
    for r in recs:
        d = json.loads(r.value)
        by_key.setdefault((d["partition"], d["offset"]), set()).add(r.value)
    # the uninterrupted run's bytes of each reading, by (sensor, ts)
    ref_bytes = {}
    offsets: dict[int, int] = {}
    for (k, _), s in zip(msgs, ref_scores):
        p = part(k)
        s.partition, s.offset = p, offsets.get(p, 0)
        offsets[p] = s.offset + 1
        ref_bytes[(s.partition, s.offset)] = encode_score(s, ["temp"], a.version)
    differing_scores = sum(1 for key, vals in by_key.items() if ref_bytes.get(key) not in vals or len(vals) > 1)
    return {
        "readings": len(msgs),
        "lost": len(msgs) - len(set(by_key) & set(ref_bytes)),
        "double_applied_sensors": double,
        "duplicates": len(recs) - len(by_key),
        "duplicates_with_differing_bytes": sum(1 for v in by_key.values() if len(v) > 1),
        "scores_differing_from_uninterrupted_run": differing_scores,
    }


def _env(broker, topics, artifact_dir, ck, port, **extra):
    from tests.worker_helpers import worker_env

    return worker_env(broker, topics, artifact_dir, ck, port, **extra)


def _wait(port, life, cond, timeout):
    from tests.worker_helpers import scrape_labeled

    deadline = time.monotonic() + timeout
    m = {}
    while time.monotonic() < deadline:
        m = scrape_labeled(port)
        if m and cond(m):
            return m
        if not life.alive():
            return None
        time.sleep(0.1)
    return m or None


def _finish_stream(port, life, n_msgs, timeout=300) -> tuple[bool, int | None]:
    """Let the worker read to the end (every offset committed, i.e. applied and checkpointed), then SIGTERM;
    (caught up, exit code).  Falls back to 10 s without a new reading."""
    from tests.worker_helpers import scrape_labeled

    deadline = time.monotonic() + timeout
    last, quiet_since = -1.0, time.monotonic()
    while time.monotonic() < deadline and life.alive():
        m = scrape_labeled(port)
        c = m.get("slotwatch_readings_consumed_total", 0) if m else 0
        if c != last:
            last, quiet_since = c, time.monotonic()
        if m and (_metric(m, "slotwatch_committed_offset") >= n_msgs or (c > 0 and time.monotonic() - quiet_since > 10)):
            break
        time.sleep(0.3)
    if not life.alive():
        return False, life.p.returncode
    return True, life.term()


# ----------------------------------------------------------------------------- scenarios
def kill9(broker, artifact_dir, work: Path, kills: int, sensors: int, steps: int, seed: int = 4) -> dict:
    from tests.worker_helpers import partition_by_index
    from worker.kafka.embedded import free_port

    P, SLOTS = 4, 128
    rng = random.Random(seed)
    ids, msgs = _stream(sensors, steps, seed=21)
    topics = broker.topics("faults-kill", partitions=P)
    broker.produce(topics["readings"], msgs, partition_by_index(P))
    ck, port = work / "kill-ck", free_port()
    env = _env(broker, topics, artifact_dir, ck, port, SLOTWATCH_MODEL__SLOTS=str(SLOTS),
               SLOTWATCH_KAFKA__MAX_POLL_RECORDS="500", SLOTWATCH_CHECKPOINT__INTERVAL_READINGS="2500",
               SLOTWATCH_CHECKPOINT__INTERVAL_S="0.5")
    crashes = 0
    lo, hi = len(msgs) // 50, len(msgs) * 93 // 100  # kill points spread over the stream
    targets = sorted(rng.sample(range(lo, hi), kills))
    for k, target in enumerate(targets, 1):
        life = Life(env, work / "kill-worker.log")
        m = _wait(port, life, lambda m: _metric(m, "slotwatch_committed_offset") >= target, 180)
        time.sleep(rng.uniform(0.0, 0.4))
        if not life.alive():
            crashes += 1
            say(f"kill9: the worker exited on its own ({life.p.returncode}) before kill {k}")
            continue
        life.kill9()
        say(f"kill9: kill -9 #{k}/{kills} at ~{int(_metric(m or {}, 'slotwatch_committed_offset'))} committed")
    life = Life(env, work / "kill-worker.log")
    ok, code = _finish_stream(port, life, len(msgs))
    crashes += 0 if ok else 1
    say(f"kill9: last life caught up={ok}, exit code {code}; verifying")
    res = _verify(broker, topics, artifact_dir, ck, msgs, P, SLOTS, steps)
    res.update(kills=kills, crashes=crashes, final_exit_code=code)
    return res


def pause(broker, artifact_dir, work: Path, pause_s: float, sensors: int, steps: int) -> dict:
    from tests.worker_helpers import partition_by_index
    from worker.kafka.embedded import free_port

    P, SLOTS = 2, 128
    ids, msgs = _stream(sensors, steps, seed=22)
    topics = broker.topics("faults-pause", partitions=P)
    broker.produce(topics["readings"], msgs, partition_by_index(P))
    ck, port = work / "pause-ck", free_port()
    env = _env(broker, topics, artifact_dir, ck, port, SLOTWATCH_MODEL__SLOTS=str(SLOTS),
               SLOTWATCH_KAFKA__MAX_POLL_RECORDS="200", SLOTWATCH_CHECKPOINT__INTERVAL_S="1")
    life = Life(env, work / "pause-worker.log")
    _wait(port, life, lambda m: m.get("slotwatch_readings_consumed_total", 0) >= len(msgs) // 3, 180)
    if broker.embedded is None:
        return {"skipped": "an external broker cannot be paused"}
    say(f"pause: broker SIGSTOP for {pause_s:.0f} s")
    broker.embedded.pause()
    t0 = time.monotonic()
    alive_during = True
    while time.monotonic() - t0 < pause_s:
        alive_during &= life.alive()
        time.sleep(1.0)
    broker.embedded.resume()
    say("pause: broker SIGCONT; waiting for the worker to finish the stream")
    t1 = time.monotonic()
    ok, code = _finish_stream(port, life, len(msgs), timeout=400)
    res = _verify(broker, topics, artifact_dir, ck, msgs, P, SLOTS, steps)
    res.update(pause_s=pause_s, worker_alive_through_pause=alive_during, crashes=0 if ok else 1,
               final_exit_code=code, seconds_to_finish_after_resume=round(time.monotonic() - t1, 1))
    return res


def disk(broker, artifact_dir, work: Path, sensors: int, steps: int, hold_s: float = 8.0) -> dict:
    from tests.worker_helpers import partition_by_index
    from worker.kafka.embedded import free_port

    mnt = work / "tiny-ck"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs ({r.stderr.strip()})"}
    try:
        P, SLOTS = 2, 128
        ids, msgs = _stream(sensors, steps, seed=23)
        topics = broker.topics("faults-disk", partitions=P)
        broker.produce(topics["readings"], msgs, partition_by_index(P))
        port = free_port()
        env = _env(broker, topics, artifact_dir, mnt, port, SLOTWATCH_MODEL__SLOTS=str(SLOTS),
                   SLOTWATCH_KAFKA__MAX_POLL_RECORDS="100", SLOTWATCH_CHECKPOINT__INTERVAL_S="0.5")
        life = Life(env, work / "disk-worker.log")
        crashes = 0
        n = len(msgs)
        from tests.worker_helpers import scrape_labeled

        def stage(frac):
            _wait(port, life, lambda m: m.get("slotwatch_readings_consumed_total", 0) >= frac * n, 180)

        stage(0.2)
        f0 = scrape_labeled(port).get("slotwatch_checkpoint_failures_total", 0)
        say("disk: checkpoint folder read-only")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        time.sleep(hold_s)
        f_ro = scrape_labeled(port).get("slotwatch_checkpoint_failures_total", 0) - f0
        scored_ro = scrape_labeled(port).get("slotwatch_readings_scored_total", 0)
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        stage(0.45)
        say("disk: checkpoint folder full")
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        f1 = scrape_labeled(port).get("slotwatch_checkpoint_failures_total", 0)
        time.sleep(hold_s)
        f_full = scrape_labeled(port).get("slotwatch_checkpoint_failures_total", 0) - f1
        filler.unlink()
        stage(0.7)
        if not life.alive():
            crashes += 1
        else:
            life.kill9()
            say("disk: kill -9 after the faults; restarting")
        life = Life(env, work / "disk-worker.log")
        ok, code = _finish_stream(port, life, n)
        crashes += 0 if ok else 1
        res = _verify(broker, topics, artifact_dir, mnt, msgs, P, SLOTS, steps)
        res.update(checkpoint_failures_read_only=int(f_ro), checkpoint_failures_full=int(f_full),
                   scored_while_read_only=int(scored_ro), crashes=crashes, final_exit_code=code, hold_s=hold_s)
        return res
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def flood(broker, artifact_dir, work: Path, n: int, cap: int) -> dict:
    from kafka import KafkaProducer

    from worker.codec import encode_reading
    from worker.kafka.embedded import free_port

    topics = broker.topics("faults-flood", partitions=4)
    now_ms = int(time.time() * 1000)
    t0 = now_ms - (n + 1000) * 1000  # one reading a second, ending now (within the future bound)
    say(f"flood: producing {n:,} readings of distinct sensor ids")
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    for i in range(n):
        sid = f"flood-{i:07d}"
        prod.send(topics["readings"], key=sid.encode(), value=encode_reading(sid, t0 + i * 1000, {"temp": 0.5}))
        if i and i % 200_000 == 0:
            say(f"flood: produced {i:,}")
    prod.flush()
    prod.close()
    port = free_port()
    # max_gap 4 x cap seconds: the first cap sensors fill the table, the next 3 x cap are refused (none idle),
    # then the oldest turn idle and are evicted to make room (churn at the cap)
    env = _env(broker, topics, artifact_dir, work / "flood-ck", port, SLOTWATCH_LIMITS__MAX_SENSORS=str(cap),
               SLOTWATCH_MODEL__MAX_GAP_S=str(4 * cap), SLOTWATCH_KAFKA__PUBLISH_SCORES="false",
               SLOTWATCH_MODEL__SLOTS="256", SLOTWATCH_CHECKPOINT__INTERVAL_S="10")
    life = Life(env, work / "flood-worker.log")
    from tests.worker_helpers import scrape_labeled

    samples = []
    deadline = time.monotonic() + 1800
    last_c, quiet = -1, time.monotonic()
    while time.monotonic() < deadline and life.alive():
        m = scrape_labeled(port)
        rss = life.rss_mib()
        if m and rss:
            c = m.get("slotwatch_readings_consumed_total", 0)
            samples.append((time.monotonic(), c, m.get("slotwatch_sensors_known", 0), rss,
                            m.get("slotwatch_sensors_evicted_total{reason=idle}", 0)))
            if len(samples) % 20 == 0:
                say(f"flood: consumed {c:,.0f}, sensors {samples[-1][2]:,.0f}, RSS {rss:.0f} MiB")
            if c != last_c:
                last_c, quiet = c, time.monotonic()
            if c >= n or (c > 0 and time.monotonic() - quiet > 10):
                break
        time.sleep(0.5)
    crashed = not life.alive()
    code = life.p.returncode if crashed else life.term()
    at_cap = [s for s in samples if s[2] >= cap]
    res = {"readings": n, "max_sensors": cap, "consumed": samples[-1][1] if samples else 0, "crashes": int(crashed),
           "final_exit_code": code, "max_sensors_seen": max((s[2] for s in samples), default=0),
           "evicted_idle": samples[-1][4] if samples else 0}
    if at_cap:
        first = at_cap[0][3]
        # RSS settles a little after the table fills (allocator, outbox): compare from the first sample at the cap on
        res.update(rss_mib_when_cap_reached=round(first, 1), rss_mib_max_after_cap=round(max(s[3] for s in at_cap), 1),
                   rss_mib_end=round(at_cap[-1][3], 1),
                   rss_growth_after_cap=round(max(s[3] for s in at_cap) / first - 1.0, 4),
                   readings_after_cap=int(at_cap[-1][1] - at_cap[0][1]))
        # the first checkpoint rounds of a full table allocate their buffers once; after that RSS should stay flat
        c0, c1 = at_cap[0][1], at_cap[-1][1]
        late = [s for s in at_cap if s[1] >= c0 + 0.25 * (c1 - c0)]
        if late:
            res.update(rss_mib_at_25pct_after_cap=round(late[0][3], 1),
                       rss_growth_last_75pct=round(max(s[3] for s in late) / late[0][3] - 1.0, 4))
    res["rss_samples"] = [(round(t - samples[0][0], 1), int(c), int(k), round(r, 1)) for t, c, k, r, _ in samples[::4]]
    return res


# ----------------------------------------------------------------------------- command
def run(kills: int = 10, sensors: int = 200, steps: int = 300, pause_s: float = 60.0, flood_n: int = 1_000_000,
        cap: int = 50_000, only: list[str] | None = None) -> dict:
    from tests.broker import start_test_broker
    from tests.conftest import make_artifact

    only = only or ["kill9", "pause", "disk", "flood"]
    work = Path(tempfile.mkdtemp(prefix="slotwatch-faults-"))
    say(f"training a small model in {work}")
    artifact_dir = make_artifact(work / "models", ["temp"], [16])
    broker, stop = start_test_broker()
    out: dict = {"settings": {"kills": kills, "sensors": sensors, "steps": steps, "pause_s": pause_s,
                              "flood_readings": flood_n, "max_sensors": cap}}
    try:
        if "kill9" in only:
            say(f"kill9: {sensors * steps:,} readings, {kills} kills")
            out["kill9"] = kill9(broker, artifact_dir, work, kills, sensors, steps)
            say(f"kill9: {out['kill9']}")
            finish("faults", out, report(out))  # partial results survive a later failure
        if "pause" in only:
            out["pause"] = pause(broker, artifact_dir, work, pause_s, 100, 200)
            say(f"pause: {out['pause']}")
            finish("faults", out, report(out))
        if "disk" in only:
            out["disk"] = disk(broker, artifact_dir, work, 100, 200)
            say(f"disk: {out['disk']}")
            finish("faults", out, report(out))
        if "flood" in only:
            out["flood"] = flood(broker, artifact_dir, work, flood_n, cap)
            say(f"flood: { {k: v for k, v in out['flood'].items() if k != 'rss_samples'} }")
    finally:
        stop()
    out["work_dir"] = str(work)
    return out


def report(res: dict) -> str:
    lines = ["# Fault campaign (issue 10)", ""]
    rows = []
    for name in ("kill9", "pause", "disk"):
        r = res.get(name)
        if not r:
            continue
        if "skipped" in r:
            rows.append({"scenario": name, "readings": "skipped: " + r["skipped"]})
            continue
        rows.append({"scenario": name, **{k: r[k] for k in ("readings", "lost", "double_applied_sensors", "duplicates",
                                                              "duplicates_with_differing_bytes",
                                                              "scores_differing_from_uninterrupted_run", "crashes")}})
    if rows:
        lines.append(md_table(rows, ["scenario", "readings", "lost", "double_applied_sensors", "duplicates",
                                     "duplicates_with_differing_bytes", "scores_differing_from_uninterrupted_run", "crashes"]))
    if "disk" in res and "skipped" not in res["disk"]:
        d = res["disk"]
        lines += ["", f"Checkpoint folder read-only {d['hold_s']} s: {d['checkpoint_failures_read_only']} failed rounds "
                      f"(counted, offsets not committed); full: {d['checkpoint_failures_full']} failed rounds."]
    if "pause" in res and "skipped" not in res["pause"]:
        p = res["pause"]
        lines += ["", f"Broker paused {p['pause_s']:.0f} s: worker alive throughout: {p['worker_alive_through_pause']}; "
                      f"finished the stream {p['seconds_to_finish_after_resume']} s after SIGCONT."]
    f = res.get("flood")
    if f:
        lines += ["", f"Flood of {f['readings']:,} distinct sensor ids, SLOTWATCH_LIMITS__MAX_SENSORS={f['max_sensors']:,}: "
                      f"consumed {f['consumed']:,.0f}, most sensors held {f['max_sensors_seen']:,.0f}, "
                      f"evicted idle {f['evicted_idle']:,.0f}, crashes {f['crashes']}."]
        if "rss_mib_when_cap_reached" in f:
            lines.append(f"RSS when the cap was reached {f['rss_mib_when_cap_reached']} MiB, max after "
                         f"{f['rss_mib_max_after_cap']} MiB (growth {100 * f['rss_growth_after_cap']:.1f}% over "
                         f"{f['readings_after_cap']:,} more readings), at the end {f['rss_mib_end']} MiB.")
        if "rss_growth_last_75pct" in f:
            lines.append(f"Over the last 75% of the readings after the cap: RSS from {f['rss_mib_at_25pct_after_cap']} MiB, "
                         f"growth {100 * f['rss_growth_last_75pct']:.1f}% (the step before it: the first checkpoint "
                         "rounds of a full table allocating their buffers).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(ap)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--sensors", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pause-s", type=float, default=60.0)
    ap.add_argument("--flood", type=int, default=1_000_000, help="readings of distinct sensor ids")
    ap.add_argument("--max-sensors", type=int, default=50_000)
    ap.add_argument("--only", nargs="*", choices=["kill9", "pause", "disk", "flood"])
    a = ap.parse_args(argv)
    res = run(a.kills, a.sensors, a.steps, a.pause_s, a.flood, a.max_sensors, a.only)
    if a.only:  # a partial rerun keeps today's results of the other scenarios
        from benchmarks.common import result_path

        old = result_path("faults")
        if old.exists():
            prev = json.loads(old.read_text())
            res = {**{k: v for k, v in prev.items() if k in ("kill9", "pause", "disk", "flood") and k not in a.only},
                   **res, "rerun_only": a.only}
    finish("faults", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
