"""``python -m benchmarks`` (``make bench``): run the benchmark suites, print a table, write results.

Suites (each also runs alone as ``python -m benchmarks.<suite>``):

* ``engine``   readings/s of the core vs. predict-per-reading and a stateless window model
* ``e2e``      the worker through a local broker vs. a bare consumer; latency
* ``state``    checkpoint write/restore, memory per sensor, paging
* ``training`` ``slotwatch train`` on 1,000,000 readings
* ``quality``  detection quality vs. two baselines (when the training package provides it)
* ``episodes`` alert load: episodes per 100 sensor-hours on a healthy fleet
* ``clients``  kafka-python with/without crc32c vs. confluent-kafka; json vs. orjson/msgspec
* ``silence``  silent sensors: what the check costs at 100k sensors, how soon it reports

Not in the default set (it takes about 5 minutes, ``--quick`` 3.5), run it with ``--only scaleout``:

* ``scaleout`` readings/s with 1, 2 and 3 workers in one group, state in the Kafka changelog

Writes ``<results>/<machine>-<date>.json`` (every suite, the machine, versions and settings),
``<machine>-<date>.md`` (the summary) and ``<machine>-<date>.png`` (a chart).
``<results>`` is the untracked ``bench-results/`` unless ``--results DIR``
says otherwise: ``--results benchmarks/results`` is how a run is meant for committing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback

from benchmarks.common import add_results_option, machine, machine_tag, results_dir

SUITES = ["engine", "e2e", "state", "training", "quality", "episodes", "clients", "silence"]
OPTIONAL = ["scaleout"]  # known to --only, not run by default (total time)


def _run_suite(name: str, quick: bool) -> tuple[dict | None, str]:
    mod = importlib.import_module(f"benchmarks.{name}")
    if name == "engine":
        res = mod.run(quick=quick)
    elif name == "e2e":
        res = mod.run(readings=100_000 if quick else 1_000_000, sensors=2_000 if quick else 10_000, latency_s=10 if quick else 20)
    elif name == "state":
        res = mod.run(quick=quick)
    elif name == "training":
        res = mod.run(sensors=50 if quick else 250, steps=2000 if quick else 4000, epochs=1 if quick else 3)
    else:
        res = mod.run(quick=quick)
    return res, mod.report(res)


def chart(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = []
    for suite, res in summary.items():
        for name, t in (res or {}).get("targets", {}).items():
            if t.get("measured") is None:
                continue
            lower_is_better = name.startswith(("around", "checkpoint", "consumer_hold", "bytes", "latency", "episodes"))
            r = (t["target"] / t["measured"]) if lower_is_better else (t["measured"] / t["target"])
            ratios.append((f"{suite}: {name}", r, t["met"]))
    if not ratios:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(ratios) + 1.2))
    ys = range(len(ratios))
    ax.barh(list(ys), [r for _, r, _ in ratios], color=["tab:green" if m else "tab:red" for _, _, m in ratios])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([n for n, _, _ in ratios], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("measured vs. target (>1 = target met)")
    ax.set_title(f"slotwatch benchmarks on {machine_tag()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run slotwatch's benchmarks and write their results (default: the untracked bench-results/).")
    p.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites (default all: {','.join(SUITES)}; also: {','.join(OPTIONAL)})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes in all")
    add_results_option(p)
    args = p.parse_args(argv)
    from worker.runtime import tune_gc

    tune_gc()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SUITES + OPTIONAL]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; known: {SUITES + OPTIONAL}")
    summary: dict = {}
    md = [f"# slotwatch benchmarks — {machine_tag()}, {time.strftime('%Y-%m-%d', time.gmtime())}", "",
          "Every speed figure was measured next to its baseline in the same run; the machine is shared, so compare ratios.", "",
          "```", json.dumps(machine(), indent=1), "```", ""]
    for name in wanted:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res, text = _run_suite(name, args.quick)
        except ModuleNotFoundError as e:
            print(f"   skipped: {e}")
            md.append(f"## {name}\n\nskipped: {e}\n")
            continue
        except Exception:  # noqa: BLE001 - one failing suite must not lose the others
            err = traceback.format_exc()
            print(err)
            summary[name] = {"error": err}
            md.append(f"## {name}\n\nFAILED:\n\n```\n{err}\n```\n")
            continue
        res["seconds"] = time.perf_counter() - t0
        summary[name] = res
        md.append(text)
        print(text, flush=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{machine_tag()}-{date}"
    base.with_suffix(".json").write_text(json.dumps({"machine": machine(), "quick": args.quick, "suites": summary}, indent=2, default=float))
    base.with_suffix(".md").write_text("\n".join(md))
    chart(summary, base.with_suffix(".png"))
    print(f"results: {base}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
