"""argparse types that refuse impossible numbers with the option's name (argparse exits 2).

>>> import argparse
>>> p = argparse.ArgumentParser(prog="x", exit_on_error=False)
>>> _ = p.add_argument("--chunk", type=positive_int)
>>> p.parse_args(["--chunk", "5"]).chunk
5
>>> p.parse_args(["--chunk", "0"])
Traceback (most recent call last):
...
argparse.ArgumentError: argument --chunk: must be at least 1, got 0
"""

from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {v}")
    return v
