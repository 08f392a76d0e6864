"""Import TensorFlow without its start-up chatter on the command's standard error.

``TF_CPP_MIN_LOG_LEVEL`` (set by :mod:`worker.cli` before any import) quiets TensorFlow's
own C++ logging, but TensorFlow 2.2x also logs through Abseil before Abseil's logging is
initialised, and such lines ("WARNING: All log messages before absl::InitializeLog() ...",
"I0000 ... port.cc:153] oneDNN custom operations are on ...") ignore every setting.  So the
import runs with file descriptor 2 pointed at a temporary file; afterwards every line that
is not an Abseil INFO/WARNING line is written back, so real errors still show.

>>> is_noise("I0000 00:00:1796164648.787214   10794 port.cc:153] oneDNN custom operations are on.")
True
>>> is_noise("E0000 00:00:1796164648.787214   10794 cuda.cc:1] something broke"), is_noise("Traceback (most recent call last):")
(False, False)
"""

from __future__ import annotations

import os
import re
import sys

_ABSL_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+:\d+\] ")
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def is_noise(line: str) -> bool:
    """An Abseil INFO or WARNING line, or Abseil's pre-initialisation notice."""
    return line.startswith(_ABSL_PREINIT) or bool(_ABSL_LINE.match(line))


def import_tensorflow_quietly() -> None:
    """``import tensorflow`` (once per process) with its Abseil INFO/WARNING lines dropped."""
    if "tensorflow" in sys.modules:
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to keep clean
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
