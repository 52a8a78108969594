"""Dead-letter topics: what a failed record carries, and listing and replaying them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Message, Producer

from dualwrite.config import KafkaConfig
from dualwrite.errors import DualWriteError, RetryableError
from dualwrite.kafka import DeliveryTracker, Record, deliver, dlq_topic, read_to_end

H = "dualwrite."


def headers_for(
    msg: Message, error: DualWriteError, map_name: str, direction: str, attempts: int
) -> list[tuple[str, bytes]]:
    """The original headers plus ours: the error, the map, the attempt count and where the record came from."""
    original: list[tuple[str, bytes]] = []
    for k, v in msg.headers() or []:  # type: ignore[str-unpack]
        if v is not None:
            original.append((k, v if isinstance(v, bytes) else str(v).encode()))
    ours = {
        "error.class": type(error).__name__,
        "error.kind": "retries-exhausted" if isinstance(error, RetryableError) else "permanent",
        "error.message": str(error)[:2000],
        "map": map_name,
        "direction": direction,
        "attempts": str(attempts),
        "original.topic": msg.topic() or "",
        "original.partition": str(msg.partition()),
        "original.offset": str(msg.offset()),
        "original.timestamp": str(msg.timestamp()[1]),
        "failed.at": str(int(time.time() * 1000)),
    }
    drop = {H + k for k in ours}
    return [(k, v) for k, v in original if k not in drop] + [(H + k, v.encode()) for k, v in ours.items()]


def dead_letter(
    producer: Producer,
    msg: Message,
    error: DualWriteError,
    map_name: str,
    direction: str,
    attempts: int,
    tracker: DeliveryTracker | None = None,
) -> DeliveryTracker:
    """Queue the original key and bytes to `<topic>.dlq` through `tracker` (a new one when None) and return it.

    The caller commits only after `tracker.wait(producer)` returned: it raises RetryableError when the
    broker refused or did not acknowledge a dead letter. A record the client refuses at once raises here.
    """
    tracker = tracker or DeliveryTracker()
    headers = headers_for(msg, error, map_name, direction, attempts)
    tracker.produce(producer, Record(dlq_topic(msg.topic() or ""), msg.value(), msg.key(), headers))
    return tracker


def source_letter(
    source_topic: str,
    value: bytes,
    error: DualWriteError,
    map_name: str,
    direction: str,
    key: bytes | None = None,
    **more: str,
) -> Record:
    """A DLQ record for what a producer could not publish (a data event, a source row): no offset, since it
    never was a record of `source_topic`; `more` adds headers (`event_index="3"` -> `dualwrite.event.index`)."""
    ours = {
        "error.class": type(error).__name__,
        "error.kind": "permanent",
        "error.message": str(error)[:2000],
        "map": map_name,
        "direction": direction,
        "attempts": "1",
        "failed.at": str(int(time.time() * 1000)),
        **{k.replace("_", "."): v for k, v in more.items()},
    }
    return Record(dlq_topic(source_topic), value, key, [(H + k, v.encode()) for k, v in ours.items()])


@dataclass
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def original_topic(self) -> str:
        return self.headers.get(H + "original.topic", self.topic.removesuffix(".dlq"))


def read_all(cfg: KafkaConfig, topic: str, idle_s: float = 1.5) -> Iterator[DeadLetter]:
    """Every record in a DLQ topic, oldest first (reads without a consumer group)."""
    for msg in read_to_end(cfg, topic, idle_s, missing_ok=False):
        hdrs: dict[str, str] = {}
        for k, v in msg.headers() or []:  # type: ignore[str-unpack]
            hdrs[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")
        yield DeadLetter(msg.topic() or topic, msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(), hdrs)


def replay(cfg: KafkaConfig, producer: Producer, letters: list[DeadLetter]) -> int:
    """Send the original bytes back to their original topic; returns once the broker acknowledged every one."""
    records = []
    for d in letters:
        headers = [(k, v.encode()) for k, v in d.headers.items() if not k.startswith(H)]
        headers.append((H + "replay.of", f"{d.topic}/{d.partition}/{d.offset}".encode()))
        records.append(Record(d.original_topic, d.value, d.key, headers))
    return deliver(producer, records)
