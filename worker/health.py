"""The worker's HTTP endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (the process
answers) and ``/readyz`` (200 only when every readiness check passes, else 503; the body
says which check fails).

Readiness checks of the worker: ``model_loaded``, ``partitions_assigned``,
``checkpoint_restored`` (every assigned partition's state loaded), ``broker_reachable``
(the last broker call succeeded).

>>> from worker.metrics import Metrics
>>> h = HealthServer(Metrics(), "127.0.0.1", 0).start()
>>> import urllib.request
>>> urllib.request.urlopen(f"http://127.0.0.1:{h.port}/healthz").read()
b'ok\\n'
>>> h.set_check("model_loaded", True); h.ready()
True
>>> h.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("slotwatch.health")


class HealthServer:
    def __init__(self, metrics, host: str = "0.0.0.0", port: int = 9108) -> None:
        self.metrics = metrics
        self.host = host
        self._port = port
        self.checks: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    def set_check(self, name: str, ok: bool) -> None:
        with self._lock:
            self.checks[name] = bool(ok)
        self.metrics.ready.set(1 if self.ready() else 0)

    def ready(self) -> bool:
        with self._lock:
            return bool(self.checks) and all(self.checks.values())

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(srv.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    with srv._lock:
                        checks = dict(srv.checks)
                    ok = bool(checks) and all(checks.values())
                    body = json.dumps({"ready": ok, "checks": checks}).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet: scrapes are not news
                pass

        return Handler

    def start(self) -> "HealthServer":
        self._server = ThreadingHTTPServer((self.host, self._port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="slotwatch-http", daemon=True).start()
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Read a /metrics page: every sample's value summed by metric name (labels folded).

    Used by the demo's live view and the benchmarks to watch a worker from outside.
    """
    import urllib.request
    from collections import defaultdict

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = defaultdict(float)
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[sample.name] += sample.value
    return dict(out)
