"""What every benchmark shares: the machine's description, timing, and writing results.

Results go to ``<results>/<machine>-<date>[-<suite>].json`` (plus ``.md`` and ``.png``
where a suite draws one).  ``<results>`` is :func:`results_dir`: the untracked
``bench-results/`` at the top of the checkout unless ``--results DIR`` (every suite's
command line) or ``SLOTWATCH_BENCH_RESULTS`` names another folder; committing a run is
explicit: ``--results benchmarks/results``.  Each JSON records the machine (cores, CPU model,
memory), the versions of Python/TensorFlow/Keras/numpy, and the settings of the run, so a
figure is never read without knowing where it came from.  Every speed figure is measured
next to its baseline in the same run: compare ratios across machines, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "bench-results"  # untracked (.gitignore): a run never rewrites committed reports
COMMITTED_RESULTS = ROOT / "benchmarks" / "results"  # what is committed, written only when asked for
RESULTS = DEFAULT_RESULTS  # kept for old imports; use results_dir(), which honours --results
ENV = "SLOTWATCH_BENCH_RESULTS"


def results_dir() -> Path:
    """Where this run's results go: ``$SLOTWATCH_BENCH_RESULTS`` (set by ``--results``), else
    ``bench-results/``.  A relative folder is taken from the current directory.

    >>> import os; old = os.environ.pop(ENV, None)
    >>> results_dir() == DEFAULT_RESULTS
    True
    >>> set_results_dir("benchmarks/results") == Path.cwd() / "benchmarks" / "results"
    True
    >>> results_dir() == Path.cwd() / "benchmarks" / "results"
    True
    >>> _ = os.environ.pop(ENV); _ = old is not None and os.environ.update({ENV: old})
    """
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser().resolve() if env else DEFAULT_RESULTS


def set_results_dir(path: str | os.PathLike) -> Path:
    """Send this process's results (and the suites it starts as subprocesses) to ``path``."""
    p = Path(path).expanduser().resolve()
    os.environ[ENV] = str(p)
    return p


class _ResultsAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, set_results_dir(values))


def add_results_option(p: argparse.ArgumentParser) -> None:
    """``--results DIR`` on a suite's command line (applied while the arguments are parsed)."""
    p.add_argument("--results", metavar="DIR", action=_ResultsAction, default=None,
                   help=f"folder for the results (default: ${ENV} or the untracked bench-results/; "
                        "'--results benchmarks/results' writes the committed reports)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import keras
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["keras"] = keras.__version__
    except ImportError:
        pass
    return info


def machine_tag() -> str:
    return f"{os.cpu_count()}core-" + "".join(c if c.isalnum() else "-" for c in cpu_model().split("@")[0].strip())[:40].strip("-")


def result_path(suite: str, ext: str = "json") -> Path:
    d = results_dir()
    d.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return d / f"{machine_tag()}-{date}-{suite}.{ext}"


def write_results(suite: str, data: dict) -> Path:
    data = {"suite": suite, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), **data}
    p = result_path(suite)
    p.write_text(json.dumps(data, indent=2, default=float))
    return p


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def md_table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
            elif isinstance(v, int):
                v = f"{v:,}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets_md(targets: dict) -> list[str]:
    """One line per target: measured against target, met or MISSED."""
    return [f"- {name}: target {t['target']}, measured {t['measured']:.3g} — {'met' if t['met'] else 'MISSED'}"
            for name, t in targets.items()]


def finish(suite: str, res: dict, md: str) -> Path:
    """Write a suite's JSON and Markdown, print the Markdown and where the results are."""
    path = write_results(suite, res)
    result_path(suite, "md").write_text(md)
    print(md)
    print(f"results: {path}")
    return path
