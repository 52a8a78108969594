"""Prometheus metrics of every component, and the small ops server for /metrics, /healthz and /readyz."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from dualwrite.envelope import Side
from dualwrite.errors import ConfigError
from dualwrite.tablemap import TableMap

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
    "Records handled by a consumer, by outcome (applied, coalesced: a newer change of the record applied in its place, "
    "skipped_equal, filtered, dead_lettered, retried).",
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
CATCHUP_ROWS = Counter(
    "dualwrite_fo_catchup_rows_total",
    "Rows the F&O catch-up read over OData, by outcome (published, duplicate: a data event had brought it).",
    ["entity", "outcome"],
    registry=REGISTRY,
)
CATCHUP_REQUESTS = Counter(
    "dualwrite_fo_catchup_requests_total", "OData requests the F&O catch-up made.", ["entity"], registry=REGISTRY
)
DELTA_RESYNCS = Counter(
    "dualwrite_dataverse_delta_resyncs_total",
    "Full reads after Dataverse refused a delta token (expired or invalid), and the deletes of the gap they found.",
    ["entity", "what"],
    registry=REGISTRY,
)
# The last `dualwrite reconcile` report, read from the status topic (the Job that writes it ends).
RECONCILE_DRIFT = Gauge(
    "dualwrite_reconcile_drift_rows",
    "Rows the last reconcile of a map found apart, by kind: only_fo, only_dataverse, differs (drift); in_flight and "
    "dlq (explained by changes not yet applied or dead-lettered, not drift).",
    ["map", "kind"],
    registry=REGISTRY,
)
RECONCILE_LAST_RUN = Gauge(
    "dualwrite_reconcile_last_run_timestamp_seconds",
    "When the last reconcile of a map ended.",
    ["map"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Gauge(
    "dualwrite_reconcile_duration_seconds", "How long the last reconcile of a map took.", ["map"], registry=REGISTRY
)
RECONCILE_DRIFT_RUNS = Gauge(
    "dualwrite_reconcile_consecutive_drift_runs",
    "Reconcile runs in a row, up to the last, that found drift in a map (0: the last found none).",
    ["map"],
    registry=REGISTRY,
)
DATAVERSE_REQUESTS = Counter(
    "dualwrite_dataverse_requests_total",
    "HTTP requests made to Dataverse (a $batch counts once, as the service protection limits count it).",
    ["component"],
    registry=REGISTRY,
)
WRITE_LANES = Histogram(
    "dualwrite_consumer_write_lanes",
    "Write lanes one round of changes was split into (consumer.lanes; one while the round is small or the "
    "request budget makes requests wait).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BUDGET_WAIT = Counter(
    "dualwrite_request_budget_wait_seconds_total",
    "Time spent waiting to stay within the component's share of the Dataverse request limit "
    "(the consumer fills its batches meanwhile, the producer polls later).",
    ["component"],
    registry=REGISTRY,
)

# The label values each component reports, so that `initialise` can create every series at 0.
CONSUMER_OUTCOMES = (
    "applied",
    "coalesced",
    "skipped_equal",
    "stale",
    "conflict",
    "filtered",
    "retried",
    "dead_lettered",
)
PRODUCER_OUTCOMES = {
    "fo": ("published", "echo_dropped", "filtered"),
    "dataverse": ("published", "echo_dropped", "filtered", "dead_lettered"),
}
PRODUCER_ERROR_KINDS = {"fo": ("malformed", "rejected", "unauthorized", "publish"), "dataverse": ("publish",)}
CONSUMER_TOWARDS = {"consumer": (Side.DATAVERSE, Side.FO)}


def initialise(maps: Iterable[TableMap], component: str) -> None:
    """Create at 0 every labelled series `component` reports (per map, direction and outcome), before its first
    increment: `increase()` cannot see a series that Prometheus first scrapes at 1, so an alert on it would not fire."""
    maps = list(maps)
    if component.endswith("-producer"):
        side = Side(component.removesuffix("-producer"))
        for m in maps:
            entity = m.fo.entity_set if side is Side.FO else m.dataverse.entity_set
            for outcome in PRODUCER_OUTCOMES[side.value]:
                PRODUCED.labels(side.value, entity, outcome)
        for kind in PRODUCER_ERROR_KINDS[side.value]:
            SOURCE_ERRORS.labels(side.value, kind)
        return
    if component not in CONSUMER_TOWARDS:
        raise ValueError(f"metrics.initialise: unknown component {component!r}")
    for towards in CONSUMER_TOWARDS[component]:
        direction = f"{towards.other.value}->{towards.value}"
        BLOCKED_PARTITIONS.labels(direction)
        APPLY_SECONDS.labels(direction)
        for m in maps:
            if not m.writes_to(towards.value):
                continue  # a one-way map reports nothing for the direction it does not write
            END_TO_END_SECONDS.labels(m.name, direction)
            for outcome in CONSUMER_OUTCOMES:
                RECORDS.labels(m.name, direction, outcome)


class OpsServer:
    """Serves /metrics, /healthz (process alive) and /readyz (the component's own readiness check)."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], bool] = lambda: True, alive: Callable[[], bool] = lambda: True
    ) -> None:
        ready_check, alive_check = ready, alive

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that connects and sends nothing must not hold a thread for ever
            # Error answers to an unreadable request line carry a status line (HTTP/0.9 answers have none).
            default_request_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(with_body=False)

            def __getattr__(self, name: str) -> Callable[[], None]:
                # Any other method, even a made-up one, is 405: http.server answers 501 to those it has no do_ for.
                if name.startswith("do_"):
                    return self._not_allowed
                raise AttributeError(name)

            def _answer(self, with_body: bool) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST, with_body)
                elif path == "/healthz":
                    ok = alive_check()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"worker stopped\n", "text/plain", with_body)
                elif path == "/readyz":
                    ok = ready_check()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain", with_body)
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain", with_body)

            def _not_allowed(self) -> None:
                self.close_connection = True  # the body, if any, is not read
                self._send(405, b"method not allowed: GET or HEAD\n", "text/plain", True, {"Allow": "GET, HEAD"})

            def _send(
                self, status: int, body: bytes, ctype: str, with_body: bool, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionError, TimeoutError):
                    # The client hung up or stalled mid-answer (a probe timing out, a port scan): not ours to report.
                    self.close_connection = True

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                if self.headers.defects:  # e.g. a header line without a colon, which http.client lets through
                    self.send_error(400, "malformed header")
                    return False
                return True

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # An HTTP version we do not speak is the client's mistake: probes and alerts read 5xx as ours.
                if code == 505:
                    code, message = 400, "HTTP/1.0 or HTTP/1.1 only"
                super().send_error(code, message, explain)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no access log: nothing here is worth a line per scrape

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # a burst of connections (a scan) must not leave a probe's SYN unanswered

        try:
            self.httpd = Server((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"ops.port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ops", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
