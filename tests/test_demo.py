"""`slotwatch demo` end to end: broker, stream, worker, live view, clean stop, nothing left behind.

Uses a small artifact placed where the demo looks, so the test does not train for minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from worker.core import artifact as art

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_demo_streams_scores_and_stops_cleanly(artifact_3f, tmp_path):
    work = tmp_path / "demo"
    models = work / "models"
    models.mkdir(parents=True)
    shutil.copytree(artifact_3f, models / artifact_3f.name)
    art.point_latest(models / artifact_3f.name)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--workdir", str(work), "--duration", "20", "--plain",
         "--sensors", "40", "--rate", "400", "--slots", "16", "--partitions", "2"],
        capture_output=True, text=True, timeout=240,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert time.monotonic() - t0 < 200
    # it said where everything is
    assert f"model:       {models / artifact_3f.name}" in out
    assert "checkpoints:" in out and "worker log:" in out and "(exit code 0)" in out
    # the worker consumed the stream and reported it in the live view
    consumed = [int(n.replace(",", "")) for n in re.findall(r"consumed ([\d,]+)", out)]
    assert consumed and max(consumed) > 1000, out[-2000:]
    assert re.search(r"slots 16/16", out), "40 sensors through 16 slots should fill every slot"
    # the live view counts episodes, not flagged readings
    assert re.search(r"episodes \d+ open / \d+ closed", out), out[-2000:]
    # the worker checkpointed on SIGTERM and nothing is left running
    assert any((work / "checkpoints").rglob("*.ckpt"))
    pid = int(re.search(r"worker pid (\d+)", out).group(1))
    assert not _alive(pid)
    assert "final checkpoint written and committed" in (work / "worker.log").read_text()
    bootstrap = re.search(r"broker (127\.0\.0\.1:\d+)", out).group(1)
    broker_pids = subprocess.run(["pgrep", "-f", f"tcp://{bootstrap}"], capture_output=True, text=True).stdout.split()
    assert not [p for p in broker_pids if _alive(int(p))], f"broker still running: {broker_pids}"
