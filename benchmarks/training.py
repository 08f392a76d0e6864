"""Training benchmark: wall time and readings/s of ``slotwatch train`` on 1,000,000 readings.

Simulates a fleet (default 250 sensors x 4,000 readings x 3 features = 1,000,000
readings), then runs the real command (``slotwatch train``, a child process) with a fixed
number of epochs and no early stop, and reports wall time, time per epoch and readings/s
(readings x epochs / fit time, from the artifact's manifest).

Run: ``python -m benchmarks.training [--sensors N --steps T --epochs E]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import finish, md_table


def run(sensors: int = 250, steps: int = 4000, epochs: int = 3, progress: bool = True) -> dict:
    from training.simulate import simulate
    from worker.core import artifact as art
    from worker.datafile import write_table

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        df = simulate(sensors, steps, ["temp", "rpm", "vib"], seed=11)
        data = write_table(df, d / "fleet.parquet")
        cmd = [sys.executable, "-m", "worker.cli", "train", "--data", str(data), "--out", str(d / "models"),
               "--epochs", str(epochs), "--patience", str(epochs + 1), "--seed", "0"]
        if not progress:
            cmd.append("--no-progress")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        m = art.load(d / "models").manifest
    readings = len(df)
    fit_s = float(m.metrics.get("fit_seconds", wall))
    ran = int(m.metrics.get("epochs_run", epochs))
    return {
        "settings": {"sensors": sensors, "steps": steps, "features": 3, "epochs": epochs, "units": m.units,
                     "mode": m.training.get("mode"), "batch": m.training.get("batch"), "seq_len": m.training.get("seq_len")},
        "readings": readings,
        "wall_s": wall,
        "fit_s": fit_s,
        "epochs_run": ran,
        "s_per_epoch": fit_s / max(ran, 1),
        "readings_per_s": readings * ran / fit_s,
        "readings_per_s_wall": readings / wall,
        "val_loss": m.metrics.get("val_loss"),
    }


def report(res: dict) -> str:
    s = res["settings"]
    rows = [{"readings": res["readings"], "epochs_run": res["epochs_run"], "wall_s": res["wall_s"], "fit_s": res["fit_s"],
             "s_per_epoch": res["s_per_epoch"], "readings_per_s": res["readings_per_s"]}]
    return "\n".join([
        f"## Training: `slotwatch train` on {res['readings']:,} readings ({s['sensors']} sensors x {s['steps']} x 3 features, "
        f"mode {s['mode']}, units {s['units']})", "",
        md_table(rows, ["readings", "epochs_run", "wall_s", "fit_s", "s_per_epoch", "readings_per_s"]), "",
        "wall_s includes loading, scaling, calibration and the report; readings_per_s = readings x epochs / fit time.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    from benchmarks.common import add_results_option

    add_results_option(p)
    p.add_argument("--sensors", type=int, default=250)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3, help="fixed epochs (early stopping off)")
    args = p.parse_args(argv)
    res = run(args.sensors, args.steps, args.epochs)
    finish("training", res, report(res))
    print(json.dumps({k: res[k] for k in ("wall_s", "readings_per_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
