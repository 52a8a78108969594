"""Durable producer checkpoints in a compacted Kafka topic (delta links, snapshot marks, id index)."""

from __future__ import annotations

from dualwrite import kafka
from dualwrite.config import KafkaConfig


class CheckpointStore:
    """Key -> value strings; `put` returns only after the broker acknowledged the write."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self.topic = kafka.checkpoint_topic(cfg.topic_prefix)
        self.producer = kafka.producer(cfg, linger_ms=0)
        self.values: dict[str, str] = {}

    def load(self, idle_s: float = 1.0) -> dict[str, str]:
        for msg in kafka.read_to_end(self.cfg, self.topic, idle_s):
            key = (msg.key() or b"").decode()
            value = msg.value()
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value.decode()
        return self.values

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def put_many(self, items: dict[str, str | None]) -> None:
        """Write (None: delete) checkpoints; RetryableError, and nothing kept, unless the broker acknowledged all."""
        records = [
            kafka.Record(self.topic, None if value is None else value.encode(), key.encode())
            for key, value in items.items()
        ]
        kafka.deliver(self.producer, records)
        for key, value in items.items():
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value

    def close(self) -> None:
        self.producer.flush(10)
