"""The ``slotwatch`` command.  Each subcommand lives in its own module, imported only when run
(so ``slotwatch --help`` answers at once, without loading TensorFlow).

A subcommand module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; it keeps heavy imports inside ``main``.

Failures a user can fix end with one line and a documented exit code (:mod:`worker.exits`):
bad settings (2), unreachable brokers (5), Ctrl-C (130); only a bug prints a traceback (1).
"""

from __future__ import annotations

import os

# before anything imports TensorFlow: its C++ INFO/WARNING lines ("oneDNN custom operations
# are on", "Unable to register cuDNN factory", ...) are not for the command's output
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import importlib
import logging
import sys

from worker import exits

#: subcommands that load TensorFlow: it is imported first, without its start-up chatter
USES_TENSORFLOW = {"run", "replay", "train", "evaluate", "demo"}

#: subcommand -> module
COMMANDS: dict[str, str] = {
    "run": "worker.run_cmd",
    "replay": "worker.replay",
    "train": "training.train",
    "simulate": "training.simulate",
    "evaluate": "training.evaluate",
    "demo": "training.demo",
    "broker": "worker.kafka.embedded",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slotwatch",
        description="Streaming anomaly detection for sensor fleets: every sensor in a fixed slot of one stateful LSTM.",
        epilog="Settings come from SLOTWATCH_* environment variables (see README). `slotwatch COMMAND --help` for more.\n\n"
        "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in exits.CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        return exits.EXIT_CONFIG
    try:
        if args.command in USES_TENSORFLOW:
            from worker.tf_quiet import import_tensorflow_quietly

            import_tensorflow_quietly()
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        _log().error("interrupted")
        return exits.EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the failures a user can fix get one line, bugs a traceback
        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        if isinstance(e, ValidationError) and e.title == "Settings":
            _log().error("%s", exits.describe_settings_error(e))
            return exits.EXIT_CONFIG
        if isinstance(e, SettingsError):
            _log().error("bad settings: %s", e)
            return exits.EXIT_CONFIG
        if exits.is_broker_error(e):
            bootstrap = os.environ.get("SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS", "localhost:9092")
            _log().error("%s", exits.describe_broker_error(e, bootstrap, f"run `slotwatch {args.command}`"))
            return exits.EXIT_BROKER
        raise


def _log() -> logging.Logger:
    """The command's logger; a plain stderr handler when the command failed before setting one up."""
    if not logging.getLogger().handlers:
        from worker.logs import setup_logging

        setup_logging()
    return logging.getLogger("slotwatch")


if __name__ == "__main__":
    sys.exit(main())
