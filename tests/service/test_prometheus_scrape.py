"""A real Prometheus (Debian's package) scrapes a running stack with the alert rules of deploy/prometheus/rules.yml:
every dashboard panel's query returns data, and a dead letter fires DualwriteDeadLetters.

Prometheus runs on loopback and scrapes each component's ops URL every second, with the labels the ServiceMonitor
gives (job dualwrite-<component>-metrics, component). The components of the in-process stack share one metrics
registry, so every target serves the same series; the queries only need them to be there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer

from dualwrite import kafka
from dualwrite.server import free_port
from wiring.components import NAMES
from wiring.stack import LocalStack, dv_company_id, dv_one, eventually

pytestmark = pytest.mark.service

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dualwrite-dashboard.json"
# Grafana's variables, for a Prometheus that scrapes every second.
VARIABLES = {"$__rate_interval": "20s", "$__interval": "5s", "$__range": "10m", "$map": ".*", "$direction": ".*"}
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": f"dualwrite-{name}-metrics",
                    "static_configs": [{"targets": [hostport], "labels": {"component": name, "pod": f"{name}-0"}}],
                }
                for name, hostport in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = resp.json()
        assert body.get("status") == "success", (expr, body)
        return list(body["data"]["result"])

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("prometheus-stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("needs Debian's prometheus package (deploy/check installs it)")
    targets = {name: stack.components[name].ops_url.removeprefix("http://") for name in NAMES}
    p = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    try:
        eventually(p.ready, timeout_s=30, interval_s=0.2, what="Prometheus ready")
        yield p
    finally:
        p.stop()


def panel_queries() -> list[tuple[str, str]]:
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} ({target['refId']})", expr))
    return out


def make_traffic(stack: LocalStack) -> None:
    """A change that syncs, a poison record that is dead-lettered, and a data event F&O's receiver cannot read."""
    with stack.user_client("fo") as fo, stack.user_client("dataverse") as dv:
        body = {
            "dataAreaId": "usmf",
            "CustomerAccount": "T-PROM-1",
            "OrganizationName": "Scraped Ltd",
            "CustomerGroupId": "30",
            "SalesCurrencyCode": "USD",
            "PartyType": "Organization",
        }
        assert fo.post("CustomersV3", json=body).status_code == 201

        def arrived() -> dict[str, Any] | None:
            cid = dv_company_id(dv, "usmf")
            return (
                dv_one(dv, "accounts", f"accountnumber eq 'T-PROM-1' and _msdyn_company_value eq {cid}")
                if cid
                else None
            )

        eventually(arrived, timeout_s=60, what="T-PROM-1 in Dataverse")
    topic = kafka.topic(stack.cfg.kafka.topic_prefix, "fo", "CustomersV3")
    p = Producer({"bootstrap.servers": stack.cfg.kafka.bootstrap_servers})
    p.produce(topic, key=b"usmf|T-PROM-POISON", value=b"\x00\x00\x00\x00\x63not avro")
    assert p.flush(10) == 0
    unreadable = {"MessageName": "Create", "PrimaryEntityName": "mserp_custcustomerv3entity", "InputParameters": 5}
    resp = httpx.post(stack.event_url, json=[unreadable], timeout=10)
    assert resp.status_code == 202 and resp.json()["dead_lettered"] == 1, resp.text


def test_dashboard_queries_return_data_and_a_dead_letter_fires_its_alert(
    stack: LocalStack, prometheus: Prometheus
) -> None:
    eventually(
        lambda: len(prometheus.query('up{job=~"dualwrite-.+-metrics"} == 1')) == len(NAMES),
        timeout_s=30,
        interval_s=0.5,
        what="every component scraped",
    )
    time.sleep(3)  # a few samples of the counters at 0 before anything happens (as after a real start)
    make_traffic(stack)

    def firing() -> list[dict[str, Any]] | None:
        alerts = prometheus.query('ALERTS{alertname="DualwriteDeadLetters", alertstate="firing"}')
        return alerts or None

    def customers_firing() -> list[dict[str, Any]] | None:
        alerts = firing() or []
        labels = {(a["metric"]["map"], a["metric"]["direction"]) for a in alerts}
        return alerts if ("customers", "fo->dataverse") in labels else None

    # (Only this one is ours to expect: in one test process the counters also hold what earlier tests counted.)
    eventually(customers_firing, timeout_s=60, interval_s=0.5, what="DualwriteDeadLetters firing for customers")
    malformed = eventually(
        lambda: prometheus.query('ALERTS{alertname="DualwriteMalformedDataEvents", alertstate="firing"}') or None,
        timeout_s=30,
        interval_s=0.5,
        what="DualwriteMalformedDataEvents firing",
    )
    assert malformed[0]["metric"]["side"] == "fo"

    def empty_panels() -> list[str]:
        return [title for title, expr in panel_queries() if not prometheus.query(expr)]

    # Lag comes with librdkafka's statistics (every 5 s), latency with the applied change: give them a moment.
    deadline = time.monotonic() + 30
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(1)
    assert empty == [], f"dashboard panels without data: {empty}"
    for rule in ("DualwriteComponentDown", "DualwriteComponentAbsent"):
        assert prometheus.query(f'ALERTS{{alertname="{rule}", alertstate="firing"}}') == [], rule
