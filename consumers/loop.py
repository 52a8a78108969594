"""The consumer loop: the one place that decides apply, retry, dead-letter and commit for every record.

Per batch: decode, map, coalesce to the last change per record, apply through the target, then per
partition in offset order: done records advance the commit point; a retryable failure pauses that
partition and seeks back to it (later records keep their place and are not re-applied); a permanent
failure goes to the DLQ. Offsets are committed only after the target acknowledged or the DLQ did.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

import schemas
from consumers.target import Outcome, Result, Target
from dualwrite import dlq, kafka, metrics
from dualwrite.config import Config
from dualwrite.control import ControlFollower
from dualwrite.envelope import ChangeEvent, Side
from dualwrite.errors import DualWriteError, MissingReferenceError, PermanentError, RetryableError, ThrottledError
from dualwrite.mapping import TargetWrite, map_event
from dualwrite.registry import EventDeserializer
from dualwrite.status import StatusPublisher
from dualwrite.tablemap import TableMap
from producers.publish import Publisher

log = logging.getLogger("dualwrite.consumer")

FILTERED = Result(Outcome.SKIPPED_EQUAL)
ALREADY_DONE = Result(Outcome.SKIPPED_EQUAL)  # applied before a seek brought it back


@dataclass
class _Item:
    msg: Message
    map_name: str
    write: TargetWrite | None = None
    event: ChangeEvent | None = None
    result: Result | None = None


@dataclass
class _Retry:
    attempts: int = 0
    first_failure: float = field(default_factory=time.monotonic)


def group_id(prefix: str, towards: Side) -> str:
    return f"{prefix}.consumer.{towards.value}"


class ConsumerLoop:
    """Applies the other side's topics to `target` (towards F&O or towards Dataverse)."""

    def __init__(
        self, cfg: Config, maps: dict[str, TableMap], towards: Side, target: Target, deserializer: EventDeserializer
    ) -> None:
        self.cfg = cfg
        self.maps = maps
        self.towards = towards
        self.direction = f"{towards.other.value}->{towards.value}"
        self.target = target
        self.deserialize = deserializer
        self.prefix = cfg.kafka.topic_prefix
        source = towards.other.value
        self.routes = {kafka.map_topics(self.prefix, m)[source]: m for m in maps.values() if m.writes_to(towards.value)}
        self.consumer = kafka.consumer(
            cfg.kafka,
            group_id(self.prefix, towards),
            cfg.consumer.session_timeout_ms,
            **{
                "fetch.wait.max.ms": cfg.consumer.fetch_wait_max_ms,
                "statistics.interval.ms": 5000,
                "stats_cb": self._on_stats,
            },
        )
        self.producer = kafka.producer(cfg.kafka, linger_ms=0)
        self._kept_publisher: Publisher | None = None
        self._kept_backlog: list[ChangeEvent] = []
        self.status = StatusPublisher(cfg.kafka, f"consumer.{towards.value}", list(maps), self.direction)
        self._stop = threading.Event()
        self._blocked: dict[tuple[str, int], float] = {}  # partition -> resume time
        self._done_ahead: dict[tuple[str, int], set[int]] = {}
        self._retries: dict[tuple[str, int, int], _Retry] = {}
        self._block_offset: dict[tuple[str, int], int] = {}
        self._held: set[tuple[str, int]] = set()  # partitions of paused maps
        self._pauses_checked = 0.0
        self.control = ControlFollower(cfg.kafka)
        self.assigned = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.control.start()
        self.control.caught_up.wait(10)  # know which maps are paused before applying anything
        self.consumer.subscribe(list(self.routes), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._resume_due()
                self._follow_pauses()
                msgs = self.consumer.consume(self.cfg.consumer.batch_size, self.cfg.consumer.poll_timeout_s)
                if msgs:
                    self._process(msgs)
                self.status.tick()
        finally:
            self.control.stop()
            self.status.tick(force=True)
            self.consumer.close()
            self.producer.flush(10)
            if self._kept_publisher is not None:
                self._kept_publisher.close()
            self.target.close()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._blocked.pop(key, None)
            self._done_ahead.pop(key, None)
            self._held.discard(key)

    def _follow_pauses(self, every_s: float = 0.2) -> None:
        """Hold the partitions of paused maps (changes wait in Kafka); release them on resume."""
        now = time.monotonic()
        if now - self._pauses_checked < every_s:
            return
        self._pauses_checked = now
        paused = self.control.paused
        for m in self.routes.values():
            metrics.MAP_PAUSED.labels(m.name, self.direction).set(1 if m.name in paused else 0)
        release = [tp for tp in self._held if self.routes[tp[0]].name not in paused]
        if release:
            self.consumer.resume([TopicPartition(t, p) for t, p in release])
            self._held.difference_update(release)
            log.info("map(s) resumed: applying what waited on %s", sorted(release))
        hold = [
            (tp.topic, tp.partition)
            for tp in self.consumer.assignment()
            if self.routes[tp.topic].name in paused and (tp.topic, tp.partition) not in self._held
        ]
        if hold:
            self.consumer.pause([TopicPartition(t, p) for t, p in hold])
            self._held.update(hold)

    def _on_stats(self, stats_json: str) -> None:
        """Lag per topic from librdkafka's statistics (no extra broker requests on the hot loop)."""
        try:
            topics = json.loads(stats_json).get("topics", {})
        except ValueError:
            return
        for topic, t in topics.items():
            if topic not in self.routes:
                continue
            lag = sum(max(0, p.get("consumer_lag", 0)) for pid, p in t.get("partitions", {}).items() if pid != "-1")
            metrics.LAG.labels(topic, self.direction).set(lag)

    # -- one batch ---------------------------------------------------------------------------
    def _process(self, msgs: list[Message]) -> None:
        items: list[_Item] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            if tp in self._blocked or tp in self._held:
                continue  # fetched before the pause; it comes again after the seek
            if self.routes[tp[0]].name in self.control.paused:
                self._hold(tp, msg.offset() or 0)
                continue
            ahead = self._done_ahead.get(tp)
            if ahead and (msg.offset() or 0) in ahead:
                ahead.discard(msg.offset() or 0)
                items.append(_Item(msg, self.routes[tp[0]].name, result=ALREADY_DONE))
                continue
            items.append(self._decode(msg))
        self._apply(items)
        self._settle(items)

    def _decode(self, msg: Message) -> _Item:
        m = self.routes[msg.topic() or ""]
        item = _Item(msg, m.name)
        try:
            value = self.deserialize(msg.topic() or "", msg.value())
            item.event = ChangeEvent.from_avro(value)
            if item.event.origin.by_dualwrite:
                item.result = FILTERED  # defence in depth: producers drop these already
                return item
            item.write = map_event(m, item.event)
            if item.write is None:
                item.result = FILTERED
        except PermanentError as exc:
            item.result = Result(Outcome.FAILED, exc)
        except (KeyError, ValueError, TypeError) as exc:
            item.result = Result(Outcome.FAILED, PermanentError(f"malformed change event: {exc}"))
        return item

    def _apply(self, items: list[_Item]) -> None:
        """Apply the last write per record identity; earlier ones for it share its result."""
        last: dict[tuple[str, Any], int] = {}
        for i, it in enumerate(items):
            if it.write is not None and it.result is None:
                last[(it.map_name, it.write.identity)] = i
        if not last:
            return
        order = sorted(last.values())
        started = time.monotonic()
        try:
            results = self.target.apply_batch([items[i].write for i in order])  # type: ignore[misc]
        except DualWriteError as exc:  # a target that raises instead of answering per record
            results = [Result(Outcome.RETRY if isinstance(exc, RetryableError) else Outcome.FAILED, exc)] * len(order)
        metrics.APPLY_SECONDS.labels(self.direction).observe(time.monotonic() - started)
        self._send_kept()
        by_identity = {(items[i].map_name, items[i].write.identity): r for i, r in zip(order, results, strict=True)}  # type: ignore[union-attr]
        now = time.time()
        for it in items:
            if it.write is not None and it.result is None:
                it.result = by_identity[(it.map_name, it.write.identity)]
                if it.result.outcome is Outcome.APPLIED and it.event is not None:
                    metrics.END_TO_END_SECONDS.labels(it.map_name, self.direction).observe(
                        max(0.0, now - it.event.source_time.timestamp())
                    )

    def _send_kept(self) -> None:
        """Send the target rows that won a conflict back out as changes of the target side, so the
        other side ends with the winning value even when the winner's own event was applied before
        (source-of-truth window, ties)."""
        side = self.towards.value
        events = self._kept_backlog + self.target.take_kept(
            lambda m: list(schemas.record_fields(side, m.fo.entity_set if side == "fo" else m.dataverse.entity_set))
        )
        self._kept_backlog = []
        if not events:
            return
        if self._kept_publisher is None:
            self._kept_publisher = Publisher(self.cfg, side, self.maps)
        pub = self._kept_publisher
        try:
            pub.publish([replace(e, after=pub.coerce(e.entity, e.after or {})) for e in events])
        except DualWriteError as exc:
            log.warning("could not send %d conflict-winning row(s) yet, retrying next batch: %s", len(events), exc)
            self._kept_backlog.extend(events)
            return
        log.info("sent %d conflict-winning row(s) of %s back out", len(events), side)

    def _settle(self, items: list[_Item]) -> None:
        commit: dict[tuple[str, int], int] = {}
        dead = 0
        for it in items:
            msg = it.msg
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            result = it.result or FILTERED
            if tp in self._blocked:
                if result.outcome in (Outcome.APPLIED, Outcome.SKIPPED_EQUAL, Outcome.SKIPPED_CONFLICT):
                    self._count(it, result)
                    self._done_ahead.setdefault(tp, set()).add(offset)
                elif result.outcome is Outcome.FAILED:
                    self._dead_letter(it, result.error, 1)
                    dead += 1
                    self._done_ahead.setdefault(tp, set()).add(offset)
                continue
            if result.outcome is Outcome.RETRY:
                retry = self._retries.setdefault((*tp, offset), _Retry())
                retry.attempts += 1
                if self._exhausted(retry, result.error):
                    self._dead_letter(it, result.error, retry.attempts)
                    dead += 1
                    self._retries.pop((*tp, offset), None)
                    commit[tp] = offset + 1
                    continue
                self._block(tp, offset, retry, result.error)
                metrics.RECORDS.labels(it.map_name, self.direction, "retried").inc()
                continue
            if result.outcome is Outcome.FAILED:
                self._dead_letter(it, result.error, 1)
                dead += 1
            else:
                self._count(it, result)
            self._retries.pop((*tp, offset), None)
            commit[tp] = offset + 1
        if dead:
            remaining = self.producer.flush(30)
            if remaining:
                raise DualWriteError(f"{remaining} dead letter(s) not acknowledged by the broker; not committing")
        for tp, offset in list(commit.items()):
            if tp in self._blocked:
                commit[tp] = min(offset, self._block_offset.get(tp, offset))
        if commit:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in commit.items()], asynchronous=False)

    def _count(self, it: _Item, result: Result) -> None:
        if result is ALREADY_DONE:
            return  # counted when it was applied, before the seek brought it back
        outcome = "filtered" if result is FILTERED else result.outcome.value
        metrics.RECORDS.labels(it.map_name, self.direction, outcome).inc()
        self.status.count(it.map_name, outcome)

    def _hold(self, tp: tuple[str, int], offset: int) -> None:
        part = TopicPartition(tp[0], tp[1], offset)
        self.consumer.pause([part])
        self.consumer.seek(part)
        self._held.add(tp)

    def _exhausted(self, retry: _Retry, error: DualWriteError | None) -> bool:
        rc = self.cfg.consumer.retry
        if isinstance(error, ThrottledError):
            return False  # service protection says "slower", not "broken": wait as told, never dead-letter
        if isinstance(error, MissingReferenceError):
            return time.monotonic() - retry.first_failure >= rc.missing_reference_timeout_s
        return retry.attempts >= rc.max_attempts

    def _block(self, tp: tuple[str, int], offset: int, retry: _Retry, error: DualWriteError | None) -> None:
        rc = self.cfg.consumer.retry
        backoff = min(rc.max_backoff_s, rc.initial_backoff_s * (2 ** (retry.attempts - 1)))
        backoff *= random.uniform(0.5, 1.0)  # jitter keeps many consumers from retrying in step
        if isinstance(error, ThrottledError) and error.retry_after:
            # The service said when; growing our own backoff on top would only idle the budget.
            backoff = error.retry_after * random.uniform(1.0, 1.2)
        elif isinstance(error, RetryableError) and error.retry_after:
            backoff = max(backoff, error.retry_after)
        log.info("retrying %s[%d]@%d in %.2fs (attempt %d): %s", tp[0], tp[1], offset, backoff, retry.attempts, error)
        part = TopicPartition(tp[0], tp[1], offset)
        self.consumer.pause([part])
        self.consumer.seek(part)
        self._blocked[tp] = time.monotonic() + backoff
        self._block_offset[tp] = offset
        metrics.BLOCKED_PARTITIONS.labels(self.direction).set(len(self._blocked))

    def _resume_due(self) -> None:
        now = time.monotonic()
        due = [tp for tp, at in self._blocked.items() if at <= now]
        for tp in due:
            del self._blocked[tp]
            self._block_offset.pop(tp, None)
            self.consumer.resume([TopicPartition(tp[0], tp[1])])
        if due:
            metrics.BLOCKED_PARTITIONS.labels(self.direction).set(len(self._blocked))

    def _dead_letter(self, it: _Item, error: DualWriteError | None, attempts: int) -> None:
        error = error or PermanentError("unknown failure")
        log.warning(
            "dead-lettering %s[%d]@%d (map %s): %s",
            it.msg.topic(),
            it.msg.partition(),
            it.msg.offset(),
            it.map_name,
            error,
        )
        dlq.dead_letter(self.producer, it.msg, error, it.map_name, self.direction, attempts)
        metrics.RECORDS.labels(it.map_name, self.direction, "dead_lettered").inc()
        self.status.count(it.map_name, "dead_lettered")
