"""Component status kept in Kafka (a compacted topic), so `dualwrite status` needs only the broker."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from dualwrite import kafka
from dualwrite.config import KafkaConfig

PUBLISH_EVERY_S = 2.0
ALIVE_WITHIN_S = 10.0


class StatusPublisher:
    """Counts outcomes per map and publishes them every few seconds under this instance's key."""

    def __init__(self, cfg: KafkaConfig, component: str, maps: list[str], direction: str) -> None:
        self.topic = kafka.status_topic(cfg.topic_prefix)
        self.producer = kafka.producer(cfg, linger_ms=0)
        self.key = f"{component}|{socket.gethostname()}|{os.getpid()}|{uuid.uuid4().hex[:6]}"
        self.component = component
        self.direction = direction
        self.counts: dict[str, dict[str, int]] = {m: defaultdict(int) for m in maps}
        self.state = "running"
        self._last = 0.0

    def count(self, map_name: str, outcome: str, n: int = 1) -> None:
        self.counts.setdefault(map_name, defaultdict(int))[outcome] += n

    def tick(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < PUBLISH_EVERY_S:
            return
        self._last = now
        value = {
            "component": self.component,
            "direction": self.direction,
            "state": "stopped" if force else self.state,
            "time": now,
            "maps": {m: dict(c) for m, c in self.counts.items()},
        }
        self.producer.produce(self.topic, key=self.key, value=json.dumps(value).encode())
        self.producer.poll(0)
        if force:
            self.producer.flush(5)


def read_status(cfg: KafkaConfig, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """The latest status record of every instance that ever published."""
    latest: dict[bytes, dict[str, Any]] = {}
    for msg in kafka.read_to_end(cfg, kafka.status_topic(cfg.topic_prefix), idle_s):
        value = msg.value()
        if value:
            latest[msg.key() or b""] = json.loads(value)
    return list(latest.values())


def consumer_lag(cfg: KafkaConfig, group: str, topics: list[str]) -> dict[str, int]:
    """Records not yet committed by `group`, per topic (end offset minus committed offset)."""
    c = kafka.consumer(cfg, group)
    lag: dict[str, int] = {}
    try:
        meta = c.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)} if parts else {}
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
            done = committed.get((tp.topic, tp.partition), -1)
            start = done if done >= 0 else low
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - start)
    finally:
        c.close()
    return lag


def committed_past(c: Consumer, offsets: dict[tuple[str, int], int]) -> bool:
    """True once `c`'s group has committed beyond every given (topic, partition) offset: each of
    those records has been applied (or dead-lettered). Exact, unlike lag from tansu's watermarks."""
    if not offsets:
        return True
    parts = [TopicPartition(t, p) for (t, p) in offsets]
    committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
    return all(committed.get(k, -1) > o for k, o in offsets.items())


def last_offsets(cfg: KafkaConfig, topics: list[str]) -> dict[tuple[str, int], int]:
    """The offset of the last record now in each non-empty (topic, partition), found by reading."""
    last: dict[tuple[str, int], int] = {}
    for t in topics:
        for msg in kafka.read_to_end(cfg, t, idle_s=0.5):
            key = (t, msg.partition() or 0)
            last[key] = max(last.get(key, -1), msg.offset() or 0)
    return last


def topic_depth(cfg: KafkaConfig, topics: list[str]) -> dict[str, int]:
    """Records currently held in each topic (end minus start offset)."""
    c = kafka.consumer(cfg, f"{cfg.topic_prefix}.depth-reader")
    depth: dict[str, int] = {}
    try:
        meta = c.list_topics(timeout=10).topics
        for t in topics:
            if t not in meta:
                continue
            for p in meta[t].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
                depth[t] = depth.get(t, 0) + max(0, high - low)
    finally:
        c.close()
    return depth
