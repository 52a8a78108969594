"""Durable producer checkpoints in a compacted Kafka topic (delta links, snapshot marks, id index)."""

from __future__ import annotations

from typing import Any

from dualwrite import kafka
from dualwrite.config import KafkaConfig


class CheckpointStore:
    """Key -> value strings; `put` returns only after the broker acknowledged the write."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self.topic = kafka.checkpoint_topic(cfg.topic_prefix)
        self.producer = kafka.producer(cfg, linger_ms=0)
        self.values: dict[str, str] = {}
        self._next: dict[int, int] = {}  # partition -> the next offset to read (what `load` read so far)

    def load(self, idle_s: float = 1.0) -> dict[str, str]:
        """Every checkpoint; called again, only what others wrote since (e.g. the consumer's index marks)."""
        for msg in kafka.read_to_end(self.cfg, self.topic, idle_s, start=self._next):
            self._next[msg.partition() or 0] = (msg.offset() or 0) + 1
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


# An index mark's value is the record key; a mark the consumer wrote before a create (the row may never
# have been made) is the key after MAYBE, until the producer sees the row and confirms it.
MAYBE = "?"


def index_mark(entity_set: str, row_id: str) -> str:
    """The checkpoint naming the record a Dataverse row belongs to (its delete event carries only the id)."""
    return f"dataverse|index|{entity_set}|{row_id}"


def indexed_key(value: str) -> tuple[str, bool]:
    """(the record key, whether the producer saw the row) of an index mark's value."""
    return (value[1:], False) if value.startswith(MAYBE) else (value, True)


def put_index(producer: Any, cfg: KafkaConfig, marks: dict[str, str]) -> None:
    """Index marks (`MAYBE` + record key) for rows the consumer is about to create with ids it chose, before
    it creates them: a person may delete such a row before the Dataverse producer ever saw it, and its
    delete event must still find the record (RetryableError unless the broker acknowledged them all)."""
    topic = kafka.checkpoint_topic(cfg.topic_prefix)
    records = [kafka.Record(topic, (MAYBE + v).encode(), k.encode()) for k, v in marks.items()]
    kafka.deliver(producer, records)
