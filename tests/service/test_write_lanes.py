"""Write lanes on a backlog: a round split by partition is written concurrently, and every change arrives once,
with no lane touching another's state partition (no changelog read-back)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from dualwrite import metrics
from dualwrite.config import DataverseConfig
from dualwrite.dataverse import DataverseClient
from standins import dataverse, token
from standins.server import BackgroundServer
from wiring.stack import CLIENT_ID, CLIENT_SECRET, TENANT, LocalStack, eventually, fo_create_customer
from wiring.stack import dv_account as account

pytestmark = pytest.mark.service
N = 240


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("lanes"),
        dataverse_settings={"latency_s": 0.05},  # a target whose answers take time, as the real ones do
        consumer={"lanes": 4, "lane_min_records": 10},
    )
    try:
        yield s
    finally:
        s.stop()


def lanes_observed() -> tuple[float, float]:
    """(rounds, rounds split into more than one lane) so far, from the consumer's histogram."""
    rounds = one = 0.0
    for metric in metrics.WRITE_LANES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                rounds = sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "1.0":
                one = sample.value
    return rounds, rounds - one


def test_a_backlog_is_written_in_lanes_and_arrives_whole(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    eventually(lambda: account(dv, "US-001") is not None, timeout_s=90, what="the seed synced")
    stack.settle()
    stack.stop_components(("consumer",))  # the changes wait in Kafka: one backlog, big rounds
    numbers = [f"US-L{i:04d}" for i in range(N)]
    for number in numbers:
        fo_create_customer(fo, number, f"Lane {number}")
    _, split_before = lanes_observed()
    me = stack.cfg.dataverse.auth.client_id
    before = dict(stack.stats("dataverse")["writes"].get(me, {}))
    with caplog.at_level(logging.WARNING, logger="dualwrite"):
        stack.start_components(("consumer",))
        stack.settle(timeout_s=120)
        rows = {n: account(dv, n) for n in numbers}
    assert {n for n, row in rows.items() if row is None} == set(), "customers missing in Dataverse"
    assert all(row is not None and row["name"] == f"Lane {n}" for n, row in rows.items())
    _, split_after = lanes_observed()
    assert split_after > split_before, "no round was split into lanes"
    assert not [r for r in caplog.records if "another writer" in r.getMessage()], "lanes shared a state partition"
    # each created once, nothing written twice (the stand-in counts dualwrite's writes, bulk records included)
    after = stack.stats("dataverse")["writes"].get(me, {})
    assert after.get("POST", 0) - before.get("POST", 0) == N
    assert after.get("PATCH", 0) - before.get("PATCH", 0) == 0


def test_the_client_keeps_the_parallelism_dataverse_suggests() -> None:
    tokens = BackgroundServer(token.create_app({CLIENT_ID: CLIENT_SECRET})).start()
    server = BackgroundServer(dataverse.create_app(dataverse.Settings(seed=True, dop_hint=3))).start()
    try:
        auth = {"token_url": f"{tokens.url}/{TENANT}/oauth2/v2.0/token", "client_id": CLIENT_ID}
        cfg = DataverseConfig.model_validate({"url": server.url, "auth": {**auth, "client_secret": CLIENT_SECRET}})
        client = DataverseClient(cfg)
        try:
            assert client.dop_hint is None
            client.whoami()
            assert client.dop_hint == 3  # the lanes towards Dataverse are capped by it (lanes.Width.allowed)
        finally:
            client.close()
    finally:
        server.stop()
        tokens.stop()
