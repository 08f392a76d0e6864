"""The ``slotwatch`` command.  Each subcommand lives in its own module, imported only when run
(so ``slotwatch --help`` answers at once, without loading TensorFlow).

A subcommand module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; it keeps heavy imports inside ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> module
COMMANDS: dict[str, str] = {
    "run": "worker.app",
    "replay": "worker.replay",
    "train": "training.train",
    "simulate": "training.simulate",
    "evaluate": "training.evaluate",
    "demo": "worker.demo",
    "broker": "worker.kafka.embedded",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slotwatch",
        description="Streaming anomaly detection for sensor fleets: every sensor in a fixed slot of one stateful LSTM.",
        epilog="Settings come from SLOTWATCH_* environment variables (see README). `slotwatch COMMAND --help` for more.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and modname.startswith(e.name):
                continue  # not built yet in this checkout
            raise
        sp = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "__doc__", None) and mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_module=mod)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
