"""Prometheus metrics of every component, and the small ops server for /metrics, /healthz and /readyz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from dualwrite.errors import ConfigError

REGISTRY = CollectorRegistry(auto_describe=True)

PRODUCED = Counter(
    "dualwrite_producer_events_total",
    "Change events read from a source, by outcome (published, echo_dropped, filtered).",
    ["side", "entity", "outcome"],
    registry=REGISTRY,
)
SOURCE_ERRORS = Counter(
    "dualwrite_producer_errors_total", "Failures reading a source or publishing.", ["side", "kind"], registry=REGISTRY
)
RECORDS = Counter(
    "dualwrite_consumer_records_total",
    "Records handled by a consumer, by outcome (applied, skipped_equal, filtered, dead_lettered, retried).",
    ["map", "direction", "outcome"],
    registry=REGISTRY,
)
APPLY_SECONDS = Histogram(
    "dualwrite_apply_batch_seconds",
    "Time to apply one batch to the target.",
    ["direction"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "dualwrite_end_to_end_seconds",
    "From the source's change time to the target's acknowledgement.",
    ["map", "direction"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
LAG = Gauge(
    "dualwrite_consumer_lag", "Records not yet committed, per source topic.", ["topic", "direction"], registry=REGISTRY
)
BLOCKED_PARTITIONS = Gauge(
    "dualwrite_blocked_partitions", "Partitions waiting to retry a record.", ["direction"], registry=REGISTRY
)
MAP_PAUSED = Gauge(
    "dualwrite_map_paused",
    "1 while a map is paused (its changes wait in Kafka).",
    ["map", "direction"],
    registry=REGISTRY,
)
CHECKPOINT_AGE = Gauge(
    "dualwrite_checkpoint_age_seconds",
    "Seconds since the Dataverse change-tracking checkpoint last advanced.",
    ["entity"],
    registry=REGISTRY,
)


class OpsServer:
    """Serves /metrics, /healthz (process alive) and /readyz (the component's own readiness check)."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], bool] = lambda: True, alive: Callable[[], bool] = lambda: True
    ) -> None:
        ready_check, alive_check = ready, alive

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = alive_check()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"worker stopped\n", "text/plain")
                elif self.path == "/readyz":
                    ok = ready_check()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"ops.port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ops", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
