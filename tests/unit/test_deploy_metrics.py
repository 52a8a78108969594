"""What the alerts and the dashboard rely on from the components: every labelled series exists at 0 from the
start (an `increase()` alert cannot see a counter Prometheus first scrapes at 1), and status records are keyed
by component and host, so the compacted status topic holds one record per pod instead of one per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dualwrite import metrics
from dualwrite.config import KafkaConfig
from dualwrite.server import free_port
from dualwrite.status import StatusPublisher
from dualwrite.tablemap import load_maps
from wiring.components import NAMES


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


@pytest.mark.parametrize("component", NAMES)
def test_every_series_a_component_reports_exists_before_its_first_increment(component: str) -> None:
    maps = load_maps()
    metrics.initialise(maps.values(), component)
    if component.endswith("-producer"):
        side = component.removesuffix("-producer")
        kinds = metrics.PRODUCER_ERROR_KINDS[side]
        assert all(sample("dualwrite_producer_errors_total", side=side, kind=k) is not None for k in kinds)
        entity = (
            next(iter(maps.values())).fo.entity_set if side == "fo" else next(iter(maps.values())).dataverse.entity_set
        )
        assert sample("dualwrite_producer_events_total", side=side, entity=entity, outcome="published") is not None
        return
    towards = [t.value for t in metrics.CONSUMER_TOWARDS[component]]
    for side in towards:
        direction = f"{'dataverse' if side == 'fo' else 'fo'}->{side}"
        writing = [m for m in maps.values() if m.writes_to(side)]
        assert writing, side
        for m in writing:
            for outcome in metrics.CONSUMER_OUTCOMES:
                value = sample("dualwrite_consumer_records_total", map=m.name, direction=direction, outcome=outcome)
                assert value is not None, (m.name, direction, outcome)
        assert sample("dualwrite_blocked_partitions", direction=direction) is not None


def test_the_dead_letter_series_of_the_alert_starts_at_zero() -> None:
    # A fresh process: this one's registry has counted what earlier tests did.
    code = (
        "from dualwrite import metrics\n"
        "from dualwrite.tablemap import load_maps\n"
        "maps = load_maps()\n"
        "metrics.initialise(maps.values(), 'fo-producer')\n"
        "metrics.initialise(maps.values(), 'consumer')\n"
        "get = metrics.REGISTRY.get_sample_value\n"
        "print(get('dualwrite_producer_errors_total', {'side': 'fo', 'kind': 'malformed'}))\n"
        "print(get('dualwrite_consumer_records_total',"
        " {'map': 'customers', 'direction': 'fo->dataverse', 'outcome': 'dead_lettered'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0.0", "0.0"]


def test_an_unknown_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown component"):
        metrics.initialise([], "consumer-sideways")


def test_status_key_is_component_and_host_stable_across_restarts() -> None:
    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", client={"log_level": 0})
    first = StatusPublisher(cfg, "consumer.fo", ["customers"], "dataverse->fo")
    again = StatusPublisher(cfg, "consumer.fo", ["customers"], "dataverse->fo")
    other = StatusPublisher(cfg, "consumer.dataverse", ["customers"], "fo->dataverse")
    try:
        assert first.key == again.key, "a restarted process must replace its status record, not add one"
        assert first.key != other.key
        assert first.key.startswith("consumer.fo|")
    finally:
        for p in (first, again, other):
            p.producer.flush(0)
