"""Exactly-once output on vs off: end-to-end readings/s of one worker, side by side in one run.

On one embedded broker: produce the feed once (default 200,000 readings from 2,000 sensors,
4 partitions), then a ``slotwatch run`` child process consumes all of it with the state in
the changelog (``SLOTWATCH_CHECKPOINT__STATE_STORE=kafka``) and every score published, once
with ``SLOTWATCH_KAFKA__EXACTLY_ONCE=false`` and once with ``true`` (a fresh consumer group,
changelog topic and output topics each; the order alternates over ``--repeat`` pairs).  The
rate is read off the worker's /metrics (first to last reading consumed, as in
:mod:`benchmarks.e2e`).  Rounds every ``--interval-readings`` readings (default 20,000) or 5 s.

``--clients kafka-python,confluent`` runs the pairs once per Kafka client of the worker
(``SLOTWATCH_KAFKA__CLIENT``; default: that variable, else kafka-python), all on the same feed and broker.

Run: ``python -m benchmarks.exactly_once [--readings N] [--sensors S] [--repeat K] [--clients C1,C2]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import finish, md_table  # noqa: E402
from benchmarks.e2e import _model, _produce, _start_worker, _stop, _worker_rate  # noqa: E402


def run(readings: int, sensors: int, repeat: int, interval_readings: int, progress: bool = True,
        clients: tuple[str, ...] = ("kafka-python",)) -> dict:
    from kafka import KafkaAdminClient

    from worker.kafka.changelog import ensure_changelog_topic
    from worker.kafka.clients import ensure_topics
    from worker.kafka.embedded import EmbeddedBroker, free_port
    from worker.settings import KafkaSettings

    res: dict = {"settings": {"readings": readings, "sensors": sensors, "partitions": 4, "units": 64, "slots": 256,
                              "publish_scores": True, "state_store": "kafka", "interval_readings": interval_readings,
                              "interval_s": 5.0, "clients": list(clients)}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
        d = Path(tmp)
        model = _model(d).parent
        readings_topic = "bench-eos.readings"
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), {readings_topic: 4})
        res["produce_per_s"] = _produce(broker.bootstrap, readings_topic, readings, sensors, progress)
        modes = [False, True]
        for client, i in ((c, i) for i in range(repeat) for c in clients):
            for eos in (modes if i % 2 == 0 else modes[::-1]):
                tag = f"bench-eos-{client}-{i}-{'on' if eos else 'off'}"
                topics = {"readings": readings_topic, **{k: f"{tag}.{k}" for k in ("scores", "anomalies", "dead")}}
                ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap),
                              {topics[k]: 1 for k in ("scores", "anomalies", "dead")})
                admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
                ensure_changelog_topic(admin, f"{tag}.changelog", 4)
                admin.close()
                port = free_port()
                proc = _start_worker(broker.bootstrap, topics, model, d / f"ck-{tag}", port, True, d / f"{tag}.log",
                                     SLOTWATCH_KAFKA__GROUP_ID=tag, SLOTWATCH_KAFKA__EXACTLY_ONCE=str(eos).lower(),
                                     SLOTWATCH_KAFKA__CLIENT=client,
                                     SLOTWATCH_KAFKA__WORKER_ID=tag, SLOTWATCH_CHECKPOINT__STATE_STORE="kafka",
                                     SLOTWATCH_CHECKPOINT__CHANGELOG_TOPIC=f"{tag}.changelog",
                                     SLOTWATCH_CHECKPOINT__INTERVAL_READINGS=str(interval_readings),
                                     SLOTWATCH_CHECKPOINT__INTERVAL_S="5")
                try:
                    r = _worker_rate(proc, port, readings, progress)
                finally:
                    code = _stop(proc)
                res["runs"].append({"client": client, "exactly_once": eos, "pair": i, "exit_code": code, **r})
    for client in clients:
        by = res.setdefault("by_client", {}).setdefault(client, {})
        for eos in (False, True):
            rates = [r["readings_per_s"] for r in res["runs"] if r["exactly_once"] is eos and r["client"] == client]
            by["on" if eos else "off"] = sum(rates) / len(rates)
        by["on_over_off"] = by["on"] / by["off"]
    res.update(res["by_client"][clients[0]])  # the first client's figures at the top level, as before
    return res


def report(res: dict) -> str:
    s = res["settings"]
    rows = [{"client": r.get("client", "kafka-python"), "exactly_once": r["exactly_once"], "pair": r["pair"],
             "readings_per_s": r["readings_per_s"],
             "checkpoint_seconds_sum": r["checkpoint_seconds_sum"], "exit_code": r["exit_code"]} for r in res["runs"]]
    return "\n".join([
        f"## Exactly-once on vs off: {s['readings']:,} readings from {s['sensors']:,} sensors, every score published, "
        f"state_store=kafka, local broker (tansu)", "",
        md_table(rows, ["client", "exactly_once", "pair", "readings_per_s", "checkpoint_seconds_sum", "exit_code"]), "",
        *(f"Mean readings/s, {c}: off {b['off']:,.0f}, on {b['on']:,.0f}; on / off = {b['on_over_off']:.2f}"
          for c, b in res.get("by_client", {"kafka-python": res}).items()), ""]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exactly_once", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--readings", type=int, default=200_000, help="readings in the feed (default 200,000)")
    p.add_argument("--sensors", type=int, default=2_000, help="distinct sensors (default 2,000)")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs, order alternating (default 1)")
    p.add_argument("--interval-readings", type=int, default=20_000, help="readings between rounds (default 20,000)")
    p.add_argument("--clients", default=os.environ.get("SLOTWATCH_KAFKA__CLIENT", "kafka-python"),
                   help="comma-separated Kafka clients of the worker to run the pairs with (kafka-python, confluent)")
    args = p.parse_args(argv)
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    res = run(args.readings, args.sensors, args.repeat, args.interval_readings, clients=clients)
    finish("exactly_once", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
