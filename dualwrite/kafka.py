"""Kafka plumbing: topic names, topic creation through the admin API, and client factories."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError, RetryableError
from dualwrite.tablemap import TableMap


def topic(prefix: str, side: str, entity_set: str) -> str:
    return f"{prefix}.{side}.{entity_set.lower()}"


def dlq_topic(source_topic: str) -> str:
    return f"{source_topic}.dlq"


def checkpoint_topic(prefix: str) -> str:
    return f"{prefix}.checkpoints"


def control_topic(prefix: str) -> str:
    return f"{prefix}.control"


def status_topic(prefix: str) -> str:
    return f"{prefix}.status"


def state_topic(prefix: str) -> str:
    """The compacted changelog of the consumers' per-record sync state, co-partitioned with the map topics."""
    return f"{prefix}.state"


def group_id(prefix: str) -> str:
    """The consumer group that applies every map's changes, both ways."""
    return f"{prefix}.consumer"


def map_topics(prefix: str, m: TableMap) -> dict[str, str]:
    """Source topic per side of one map: {'fo': ..., 'dataverse': ...}."""
    return {
        "fo": topic(prefix, "fo", m.fo.topic or m.fo.entity_set),
        "dataverse": topic(prefix, "dataverse", m.dataverse.topic or m.dataverse.entity_set),
    }


_CLIENT_LOG = logging.getLogger("dualwrite.kafka.client")


def _base(cfg: KafkaConfig) -> dict[str, Any]:
    # librdkafka's own log lines go through Python logging (levels, format, capture), not raw stderr.
    return {"bootstrap.servers": cfg.bootstrap_servers, "logger": _CLIENT_LOG, **cfg.client}


def admin(cfg: KafkaConfig) -> AdminClient:
    return AdminClient(_base(cfg))


def check_reachable(cfg: KafkaConfig, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear line when no broker answers."""
    client = AdminClient({**_base(cfg), "log_level": 0})
    try:
        client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConfigError(
            f"kafka.bootstrap_servers: no Kafka broker answered at {cfg.bootstrap_servers} within "
            f"{timeout_s:.0f} s ({exc.args[0].str() if exc.args else exc})"
        ) from None


def ensure_topics(cfg: KafkaConfig, maps: list[TableMap]) -> list[str]:
    """Create every source topic with its `.dlq`, plus the compacted control and state topics; return the new ones."""
    wanted: dict[str, NewTopic] = {}
    for m in maps:
        for source in map_topics(cfg.topic_prefix, m).values():
            wanted[source] = NewTopic(source, cfg.partitions, cfg.replication_factor)
            wanted[dlq_topic(source)] = NewTopic(dlq_topic(source), 1, cfg.replication_factor)
    for compacted in (
        checkpoint_topic(cfg.topic_prefix),
        status_topic(cfg.topic_prefix),
        control_topic(cfg.topic_prefix),
    ):
        wanted[compacted] = NewTopic(compacted, 1, cfg.replication_factor, config={"cleanup.policy": "compact"})
    # A record's state lives in the partition number its change events have: as many partitions as a map topic.
    state = state_topic(cfg.topic_prefix)
    wanted[state] = NewTopic(state, cfg.partitions, cfg.replication_factor, config={"cleanup.policy": "compact"})
    check_reachable(cfg)
    client = admin(cfg)
    existing = set(client.list_topics(timeout=10).topics)
    missing = [t for name, t in wanted.items() if name not in existing]
    if not missing:
        return []
    created = []
    for name, future in client.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                continue
            raise ConfigError(f"cannot create topic {name}: {exc}") from None
    return created


def producer(cfg: KafkaConfig, linger_ms: int = 5, **overrides: Any) -> Producer:
    """An idempotent producer: acks=all, no duplicates on retry, ordering kept per partition."""
    settings = {
        **_base(cfg),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": linger_ms,
        "compression.type": "none",
        **overrides,
    }
    return Producer(settings)


@dataclass(frozen=True)
class Record:
    """One record to produce."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, str | bytes | None]] | None = None


def _describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


class DeliveryTracker:
    """Counts the delivery reports of the records produced through it; `wait` raises unless every one was acknowledged.

    `flush()` returning 0 only says the client has nothing left to send: a record the broker refused
    (too large, ACL) or that timed out is gone from the queue too. Only the delivery report tells.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.acknowledged = 0
        self.errors: list[str] = []
        self._reported = threading.Condition()

    def produce(self, producer: Producer, record: Record) -> None:
        """Queue one record; a record the client refuses at once (too large, queue full) raises RetryableError."""
        try:
            producer.produce(
                record.topic,
                key=record.key,
                value=record.value,
                headers=list(record.headers) if record.headers else None,
                on_delivery=self._report,
            )
        except KafkaException as exc:
            why = _describe(exc.args[0]) if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
            raise RetryableError(f"{record.topic}: the Kafka client refused the record: {why}") from None
        except BufferError as exc:
            raise RetryableError(f"{record.topic}: the Kafka client's queue is full: {exc}") from None
        with self._reported:
            self.sent += 1

    def _report(self, error: KafkaError | None, msg: Message) -> None:
        with self._reported:
            if error is None:
                self.acknowledged += 1
            else:
                self.errors.append(f"{msg.topic()}: {_describe(error)}")
            self._reported.notify_all()

    def wait(self, producer: Producer, timeout_s: float = 30.0) -> int:
        """Flush; the count when the broker acknowledged every record, else RetryableError naming the first error."""
        deadline = time.monotonic() + timeout_s
        producer.flush(timeout_s)
        with self._reported:
            # Another thread polling the same producer may still be running a report's callback.
            self._reported.wait_for(
                lambda: self.acknowledged + len(self.errors) >= self.sent, max(0.0, deadline - time.monotonic())
            )
            if self.errors:
                raise RetryableError(
                    f"the broker refused {len(self.errors)} of {self.sent} record(s): {self.errors[0]}"
                )
            if self.acknowledged < self.sent:
                raise RetryableError(
                    f"{self.sent - self.acknowledged} of {self.sent} record(s) not acknowledged by the broker "
                    f"within {timeout_s:g} s"
                )
            return self.sent


def deliver(producer: Producer, records: Iterable[Record], timeout_s: float = 30.0) -> int:
    """Produce and wait for the broker's acknowledgement of every record; RetryableError naming the first failure."""
    tracker = DeliveryTracker()
    for record in records:
        tracker.produce(producer, record)
    return tracker.wait(producer, timeout_s)


def consumer(cfg: KafkaConfig, group_id: str, session_timeout_ms: int = 6000, **overrides: Any) -> Consumer:
    settings = {
        **_base(cfg),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 6),
        "partition.assignment.strategy": "cooperative-sticky",
        **overrides,
    }
    return Consumer(settings)


class EndOfTopic:
    """When a whole-topic read is done, from the end offsets seen at its start.

    Done `idle_s` after every partition reached its end offset (tansu under-reports a batch's end, so we
    read on a little). A partition not yet at its end may wait long for its next record (a consumer's
    first fetch on a busy machine, a broker pause): that ends the read only after `stall_s` without
    any record, for ends that are never reached (e.g. a transaction marker at the end). Ending after
    `idle_s` there read nothing at all when the first fetch was slow, and a reader then saw an empty
    control or state topic. A partition is any hashable key (a number, or a (topic, number) pair).
    """

    def __init__(self, ends: Mapping[Hashable, int], idle_s: float, stall_s: float, now: float) -> None:
        self.ends = ends
        self.idle_s, self.stall_s = idle_s, max(stall_s, idle_s)
        self.reached: set[Hashable] = {p for p, e in ends.items() if e <= 0}
        self.last = now
        self.all_reached_at: float | None = now if len(self.reached) == len(ends) else None

    def record(self, partition: Hashable, offset: int, now: float) -> None:
        self.last = now
        if offset + 1 >= self.ends.get(partition, 0):
            self.reached.add(partition)
            if self.all_reached_at is None and len(self.reached) == len(self.ends):
                self.all_reached_at = now

    def done(self, now: float) -> bool:
        if self.all_reached_at is not None:
            return now - self.all_reached_at >= self.idle_s or now - self.last >= self.idle_s
        return now - self.last >= self.stall_s


def read_to_end(
    cfg: KafkaConfig,
    topic: str,
    idle_s: float = 1.0,
    missing_ok: bool = True,
    stall_s: float = 30.0,
    start: Mapping[int, int] | None = None,
) -> Iterator[Message]:
    """Every record of `topic` from the start (or from `start`'s offset per partition), without a consumer
    group; see `EndOfTopic` for when it ends.

    A topic that is being written all the time still ends: at the end offsets seen at the start.
    """
    first = {(topic, p): o for p, o in (start or {}).items()}
    yield from read_topics_to_end(cfg, [topic], idle_s, missing_ok, stall_s, first)


def read_topics_to_end(
    cfg: KafkaConfig,
    topics: Sequence[str],
    idle_s: float = 1.0,
    missing_ok: bool = True,
    stall_s: float = 30.0,
    start: Mapping[tuple[str, int], int] | None = None,
) -> Iterator[Message]:
    """Every record of each of `topics`, read by one consumer (one set-up and one idle wait for them all,
    not one per topic), in offset order per partition; as `read_to_end` otherwise."""
    from dualwrite.errors import DualWriteError

    c = consumer(cfg, f"{cfg.topic_prefix}.reader.{uuid.uuid4().hex}")
    try:
        known = c.list_topics(timeout=10).topics if len(topics) > 1 else {}
        parts: list[TopicPartition] = []
        for topic in topics:
            meta = known.get(topic) if known else c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                if missing_ok:
                    continue
                raise DualWriteError(f"topic {topic} does not exist")
            parts += [TopicPartition(topic, p, (start or {}).get((topic, p), 0)) for p in meta.partitions]
        ends: dict[Hashable, int] = {}
        for p in parts:
            low, high = c.get_watermark_offsets(p, timeout=10)
            p.offset = max(p.offset, low)
            # (a partition emptied by retention, or read to its end before, has nothing to read)
            ends[(p.topic, p.partition)] = 0 if high <= p.offset else high
        if all(e == 0 for e in ends.values()):
            return
        c.assign(parts)
        end = EndOfTopic(ends, idle_s, stall_s, time.monotonic())
        while not end.done(time.monotonic()):
            msg = c.poll(0.1)
            if msg is None or msg.error():
                continue
            end.record((msg.topic(), msg.partition() or 0), msg.offset() or 0, time.monotonic())
            yield msg
    finally:
        c.close()
