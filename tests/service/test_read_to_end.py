"""Whole-topic reads on a real tansu broker: one reader for many topics reads each of them to its end."""

from __future__ import annotations

import uuid

import pytest

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.status import last_offsets

pytestmark = pytest.mark.service


def test_one_reader_reads_every_record_of_every_topic_and_skips_missing_ones(broker: str) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker, topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=3)
    kafka.ensure_topics(cfg, [])  # the control and status topics (one partition), the state topic (three)
    parts = {kafka.control_topic(cfg.topic_prefix): 1, kafka.status_topic(cfg.topic_prefix): 1}
    parts[kafka.state_topic(cfg.topic_prefix)] = 3
    p = kafka.producer(cfg)
    sent = {(t, f"k{i}", i % n) for t, n in parts.items() for i in range(40)}
    for t, key, part in sorted(sent):
        p.produce(t, key=key, value=b"v", partition=part)
    assert p.flush(10) == 0

    got = list(kafka.read_topics_to_end(cfg, [*parts, f"{cfg.topic_prefix}.missing"], idle_s=0.5))
    assert {(m.topic(), (m.key() or b"").decode(), m.partition()) for m in got} == sent
    assert len(got) == len(sent)  # each once

    # and the last offset of each partition, from one read
    last = {(t, i % n): 0 for t, n in parts.items() for i in range(40)}
    for t, _key, part in sent:
        last[(t, part)] += 1
    assert last_offsets(cfg, list(parts)) == {k: n - 1 for k, n in last.items()}
