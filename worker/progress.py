"""Whether a command draws progress bars: only for a person watching a terminal.

A progress bar redraws itself with carriage returns; written into a log file, a pipe or a
CI log it becomes hundreds of lines (or blank lines).  So bars are drawn only when the
command's standard error is a terminal, never under CI (``CI`` set, as GitHub Actions,
GitLab and most CI systems do), and never with ``--no-progress`` (or ``--plain`` where a
command has it).

>>> import io
>>> want_progress(True, io.StringIO())
False
>>> want_progress(False)
False
"""

from __future__ import annotations

import os
import sys


def want_progress(requested: bool = True, stream=None) -> bool:
    """``requested`` and ``stream`` (default ``sys.stderr``, where tqdm draws) is a terminal, outside CI."""
    if not requested:
        return False
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False
