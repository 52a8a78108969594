"""Map states on a real broker: a pause acknowledged before a change was produced holds that change,
however far behind the consumer's control-topic thread is."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.control import PAUSED, RUNNING, ControlFollower, set_state

pytestmark = pytest.mark.service


def _end(cfg: KafkaConfig) -> int:
    probe = kafka.consumer(cfg, f"probe.{uuid.uuid4().hex}")
    try:
        return probe.get_watermark_offsets(
            TopicPartition(kafka.control_topic(cfg.topic_prefix), 0), timeout=5, cached=False
        )[1]
    finally:
        probe.close()


def test_a_pause_is_seen_when_the_follower_lags_behind_the_change(broker: str) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker, topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=1)
    kafka.ensure_topics(cfg, [])
    follower = ControlFollower(cfg)
    set_state(cfg, "customers", PAUSED)  # acknowledged before the "change" below is fetched
    end = _end(cfg)  # what the consumer loop asks the broker after fetching a batch
    assert follower.paused == set()  # the follower has not read the pause yet (not even started)
    threading.Timer(1.0, follower.start).start()  # it catches up late, as under load
    try:
        t0 = time.monotonic()
        assert follower.paused_as_of(end, timeout_s=15) == {"customers"}
        assert time.monotonic() - t0 >= 0.9  # it waited for the follower rather than answer early
        set_state(cfg, "customers", RUNNING)
        assert follower.paused_as_of(_end(cfg), timeout_s=15) == set()
    finally:
        time.sleep(1.1)
        follower.stop()
