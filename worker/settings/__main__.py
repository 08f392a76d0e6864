"""``python -m worker.settings [--markdown]``: print the settings (or the README's table of them)."""

from __future__ import annotations

from worker.settings.root import Settings, settings_table


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m worker.settings", description="Show slotwatch's settings.")
    p.add_argument("--markdown", action="store_true", help="print the README table of every setting")
    args = p.parse_args(argv)
    if args.markdown:
        print("| variable | default | meaning |")
        print("|---|---|---|")
        for var, default, desc in settings_table():
            print(f"| `{var}` | {default} | {desc} |")
    else:
        print(Settings.load().model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
