"""How numbers are shown to people: one helper per kind, used by logs, reports and plots alike.

Thresholds sit very close to 1 (0.99999995 is common), so a fixed ``%.6g`` prints "1" and
hides what a score must reach.  :func:`fmt_threshold` shows the digits up to the first
ones that differ from 1 (or from 0), and one more.
"""

from __future__ import annotations

import math


def fmt_threshold(value: float) -> str:
    """A score threshold in [0, 1] with enough digits to tell it from 1 and from its neighbours.

    >>> fmt_threshold(0.99999995), fmt_threshold(0.999), fmt_threshold(0.9999999512345)
    ('0.99999995', '0.999', '0.999999951')
    >>> fmt_threshold(0.5), fmt_threshold(1.0 - 1e-12), fmt_threshold(1.0), fmt_threshold(2e-7)
    ('0.5', '0.999999999999', '1', '0.0000002')
    >>> fmt_threshold(float("nan"))
    'nan'
    """
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    dist = min(abs(v), abs(1.0 - v))
    if dist == 0.0 or v > 1.0 or v < 0.0:
        return f"{v:.6g}"
    digits = max(3, min(15, math.ceil(-math.log10(dist)) + 1))
    text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"
