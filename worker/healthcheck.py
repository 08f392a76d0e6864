"""Container health probe: ``python -m worker.healthcheck [PATH]`` exits 0 when the worker's
``/healthz`` (or PATH, e.g. ``/readyz``) answers 200, else 1.  Standard library only, because
slim images have no curl; the Dockerfile's HEALTHCHECK runs it.

The port and host come from ``SLOTWATCH_METRICS__PORT`` / ``SLOTWATCH_METRICS__HOST`` (the
worker's own settings); a wildcard bind address is probed on the loopback interface.

>>> probe_url({"SLOTWATCH_METRICS__PORT": "9200"})
'http://127.0.0.1:9200/healthz'
>>> probe_url({"SLOTWATCH_METRICS__HOST": "10.0.0.5"}, "/readyz")
'http://10.0.0.5:9108/readyz'
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def probe_url(env: Mapping[str, str] | None = None, path: str = "/healthz") -> str:
    env = os.environ if env is None else env
    host = env.get("SLOTWATCH_METRICS__HOST", "").strip()
    host = "127.0.0.1" if host in WILDCARDS else (f"[{host}]" if ":" in host and not host.startswith("[") else host)
    port = env.get("SLOTWATCH_METRICS__PORT", "").strip() or "9108"
    return f"http://{host}:{port}{path}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0])
        return 0
    url = probe_url(path=argv[0] if argv else "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=4) as r:  # noqa: S310 - fixed http URL
            ok = r.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {r.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
