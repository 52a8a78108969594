"""The consumer loop: the one place that decides apply, retry, dead-letter and commit, for both directions.

One consumer group reads the topics of both sides. The `range` assignor gives one instance the same
partition number of every topic (they all have the same partition count), so one record's changes from
F&O and from Dataverse, and its sync state (`dualwrite/state.py`), are owned by one instance.

Per batch: decode; skip what waits (a paused map, a retry's backoff) and remember where each partition
resumes; apply the rest through `consumers/apply.py`, one change per record per round; then per
partition in offset order: done records move the commit point; a retryable failure pauses that
partition and seeks back to it; a permanent one goes to the DLQ. Offsets are committed only after
the target, the sync state and any dead letter were acknowledged.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from consumers import lanes
from consumers.apply import Applier, Change, state_key
from consumers.target import Target
from dualwrite import checkpoints, dlq, kafka, metrics
from dualwrite.budget import PooledBudget, RequestBudget
from dualwrite.config import Config, RetryConfig
from dualwrite.control import ControlFollower
from dualwrite.envelope import REPAIR_HEADER, ChangeEvent, Side
from dualwrite.errors import (
    AuthError,
    ConfigError,
    DualWriteError,
    MissingReferenceError,
    PartitionLostError,
    PermanentError,
    RetryableError,
    ThrottledError,
)
from dualwrite.registry import EventDeserializer
from dualwrite.status import StatusPublisher
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer")

TP = tuple[str, int]
MAX_COALESCED = 100  # changes of one record applied as one (its newest) at most


def _same_run(first: _Item, it: _Item) -> bool:
    """`it` may be coalesced with the run `first` begins: the same record's change from the same topic."""
    assert first.change is not None and it.change is not None
    return it.tp == first.tp and not it.change.repair and not first.change.repair


def direction_of(source: str) -> str:
    return f"{source}->{Side(source).other.value}"


@dataclass
class _Item:
    msg: Message
    map: TableMap
    source: str
    change: Change | None = None
    outcome: str | None = None  # filtered, or the change's outcome
    error: DualWriteError | None = None

    @property
    def tp(self) -> TP:
        return self.msg.topic() or "", self.msg.partition() or 0

    @property
    def offset(self) -> int:
        return self.msg.offset() or 0


@dataclass
class _Retry:
    attempts: int = 0  # every failed attempt (the backoff, the dead letter's header)
    # Of them, the failures that count towards `max_attempts`: not throttling or a missing token (waited out)
    # nor a missing reference (bounded by its own timeout), so that those never use up a record's retries.
    transient: int = 0
    missing: int = 0  # of them, the missing references (their backoff grows on its own count, to its own cap)

    def failed(self, error: DualWriteError | None) -> None:
        self.attempts += 1
        if isinstance(error, MissingReferenceError):
            self.missing += 1
        elif not isinstance(error, ThrottledError | AuthError | PartitionLostError):
            self.transient += 1

    def exhausted(self, rc: RetryConfig, error: DualWriteError | None, now: float) -> bool:
        """Time for the DLQ: never for throttling or a missing token ("slower", "no token yet", not "broken":
        wait as told) nor for a partition another consumer claimed (it waits for the next assignment); after its
        timeout for a missing reference; after `max_attempts` other failures."""
        if isinstance(error, ThrottledError | AuthError | PartitionLostError):
            return False
        if isinstance(error, MissingReferenceError):
            return now - self.first_failure >= rc.missing_reference_timeout_s
        return self.transient >= rc.max_attempts

    first_failure: float = field(default_factory=time.monotonic)


def backoff_s(rc: RetryConfig, retry: _Retry, error: DualWriteError | None, jitter: float) -> float:
    """How long a record's partition waits before the record is tried again (`jitter` in [0.5, 1] keeps
    many consumers from retrying in step)."""
    if isinstance(error, ThrottledError) and error.retry_after:
        # The service said when; growing our own backoff on top would only idle the budget.
        return error.retry_after * (1.0 + (1.0 - jitter) * 0.4)
    if isinstance(error, MissingReferenceError):
        # The referenced row usually arrives within seconds: try again soon, whatever failed before.
        cap = min(rc.max_backoff_s, rc.missing_reference_backoff_s)
        return min(cap, rc.initial_backoff_s * (2 ** (max(1, retry.missing) - 1))) * jitter
    backoff = min(rc.max_backoff_s, rc.initial_backoff_s * (2 ** (retry.attempts - 1))) * jitter
    if isinstance(error, RetryableError) and error.retry_after:
        backoff = max(backoff, error.retry_after)
    return backoff


@dataclass
class GroupWatch:
    """Says when the consumer has held no partition for long: a group that never finishes its rebalance (a
    coordinator that lost track of a member, a member stuck in a callback) otherwise shows only as a sync that
    stopped. Warns after `after_s` without an assignment, then once per `after_s`, with what librdkafka
    last said of the group."""

    after_s: float = 60.0
    since: float | None = None  # when the consumer last had no partition while it had had some or subscribed
    warned: float = 0.0
    group: dict[str, Any] = field(default_factory=dict)  # librdkafka's `cgrp` statistics

    def check(self, now: float, partitions: int) -> str | None:
        if partitions:
            self.since = None
            return None
        if self.since is None:
            self.since, self.warned = now, now
            return None
        if now - self.warned < self.after_s:
            return None
        self.warned = now
        g = self.group
        return (
            f"no partition assigned for {now - self.since:.0f} s; the group's state as librdkafka sees it: "
            f"{g.get('state', '?')}, join state {g.get('join_state', '?')}, "
            f"{g.get('rebalance_cnt', '?')} rebalances, last {g.get('rebalance_reason', '?')!r}"
        )


class PartitionGate:
    """Which partitions wait (a retry's backoff, a paused map) and the offset each resumes at.

    A waiting partition is paused and sought back to its first unapplied offset; records of it that
    a fetch still delivers are skipped, and come again after the seek. Resuming always seeks first.
    """

    def __init__(self) -> None:
        self.blocked: dict[TP, tuple[float, int]] = {}  # partition -> (resume time, offset)
        self.held: dict[TP, int] = {}  # partitions of paused maps -> offset

    def waiting(self, tp: TP) -> bool:
        return tp in self.blocked or tp in self.held

    def _offset(self, tp: TP, offset: int) -> int:
        known = [o for o in (self.held.get(tp), self.blocked.get(tp, (0, None))[1]) if o is not None]
        return min([offset, *known])

    def block(self, consumer: Any, tp: TP, offset: int, until: float) -> None:
        offset = self._offset(tp, offset)
        _pause_at(consumer, tp, offset)
        self.blocked[tp] = (until, offset)
        if tp in self.held:
            self.held[tp] = offset

    def hold(self, consumer: Any, tp: TP, offset: int) -> None:
        offset = self._offset(tp, offset)
        _pause_at(consumer, tp, offset)
        self.held[tp] = offset
        if tp in self.blocked:
            self.blocked[tp] = (self.blocked[tp][0], offset)

    def resume_due(self, consumer: Any, now: float) -> None:
        for tp, (at, offset) in list(self.blocked.items()):
            if at > now:
                continue
            del self.blocked[tp]
            if tp not in self.held:  # a paused map keeps its partition held after the backoff
                _resume_at(consumer, tp, offset)

    def release(self, consumer: Any, tps: list[TP]) -> None:
        for tp in tps:
            offset = self.held.pop(tp, None)
            if offset is not None and tp not in self.blocked:
                _resume_at(consumer, tp, offset)

    def forget(self, tps: list[TP]) -> None:
        for tp in tps:
            self.blocked.pop(tp, None)
            self.held.pop(tp, None)


def _pause_at(consumer: Any, tp: TP, offset: int) -> None:
    part = TopicPartition(tp[0], tp[1], offset)
    consumer.pause([part])
    consumer.seek(part)


def _resume_at(consumer: Any, tp: TP, offset: int) -> None:
    part = TopicPartition(tp[0], tp[1], offset)
    consumer.seek(part)
    consumer.resume([part])


class ConsumerLoop:
    """Applies every map's changes from both sides to the other side."""

    def __init__(
        self,
        cfg: Config,
        maps: dict[str, TableMap],
        targets: dict[str, Target],
        deserializer: EventDeserializer,
        store: Any,
        budget: RequestBudget | PooledBudget | None = None,
    ) -> None:
        self.cfg = cfg
        self.budget = budget  # the consumer's share of the Dataverse request limit
        self.maps = maps
        self.deserialize = deserializer
        self.prefix = cfg.kafka.topic_prefix
        self.routes: dict[str, tuple[TableMap, str]] = {}
        for m in maps.values():
            for source in ("fo", "dataverse"):
                if m.writes_to(Side(source).other.value):
                    self.routes[kafka.map_topics(self.prefix, m)[source]] = (m, source)
        self.store = store
        self.applier = Applier(maps, targets, store, cfg.schemas_dir, index=self._put_index)
        self.targets = targets
        self.consumer = kafka.consumer(
            cfg.kafka,
            kafka.group_id(self.prefix),
            cfg.consumer.session_timeout_ms,
            **{
                "fetch.wait.max.ms": cfg.consumer.fetch_wait_max_ms,
                "statistics.interval.ms": 5000,
                "stats_cb": self._on_stats,
                # One instance owns partition p of every topic, and so every record's state.
                "partition.assignment.strategy": "range",
            },
        )
        self.producer = kafka.producer(cfg.kafka, linger_ms=0)
        names = list(maps)
        self.status = {
            source: StatusPublisher(cfg.kafka, f"consumer.{Side(source).other.value}", names, direction_of(source))
            for source in ("fo", "dataverse")
        }
        self._stop = threading.Event()
        self.lanes = lanes.Lanes(cfg.consumer.lanes)
        self.width = lanes.Width(cfg.consumer.lanes)  # the lanes a round may use now (adaptive)
        self.gate = PartitionGate()
        self._retries: dict[tuple[str, int, int], _Retry] = {}
        self._pauses_checked = 0.0
        self.control = ControlFollower(cfg.kafka)
        self.assigned = threading.Event()
        self._revokes = 0  # rebalances that took partitions away, so far
        self.group_watch = GroupWatch(max(60.0, cfg.consumer.session_timeout_ms / 100))

    # -- lifecycle ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def check_partitions(self) -> None:
        """Every topic the loop reads must have the same partition count, or records' states would split."""
        meta = self.consumer.list_topics(timeout=10).topics
        counts = {t: len(meta[t].partitions) for t in self.routes if t in meta}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            raise ConfigError(f"kafka.partitions: the map topics must all have the same partition count ({listing})")

    def run(self) -> None:
        self.check_partitions()
        self.control.start()
        self.control.caught_up.wait(10)  # know which maps are paused before applying anything
        self.consumer.subscribe(list(self.routes), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self.gate.resume_due(self.consumer, time.monotonic())
                self._follow_pauses()
                msgs = self.consumer.consume(self.cfg.consumer.batch_size, self.cfg.consumer.poll_timeout_s)
                stalled = self.group_watch.check(time.monotonic(), len(self.consumer.assignment()))
                if stalled:
                    log.warning("%s", stalled)
                if msgs:
                    self._process(self._fill(msgs))
                for s in self.status.values():
                    s.tick()
        finally:
            self.lanes.close()
            self.control.stop()
            for s in self.status.values():
                s.tick(force=True)
            self.consumer.close()
            self.producer.flush(10)
            self.store.close()
            for t in self.targets.values():
                t.close()

    def _put_index(self, marks: dict[str, str]) -> None:
        checkpoints.put_index(self.producer, self.cfg.kafka, marks)

    def _fill(self, msgs: list[Message]) -> list[Message]:
        """Near the request budget's share, wait for it by filling the batch: the writes towards Dataverse
        then go out in fewer, fuller requests instead of the service answering 429 (and every record of
        the batch, both directions, is applied together when the share allows the next request)."""
        if self.budget is None:
            return msgs
        wait = self.budget.wait_s()
        if wait <= 0:  # (any record may need Dataverse: a write towards it, or a read of its row)
            return msgs
        metrics.BUDGET_WAIT.labels("consumer").inc(wait)
        revokes = self._revokes
        deadline = time.monotonic() + wait
        size = self.cfg.consumer.batch_size
        while len(msgs) < size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs.extend(self.consumer.consume(size - len(msgs), min(left, 0.1)))
        left = deadline - time.monotonic()
        if left > 0:  # a full batch: the share still decides when it goes out
            self._stop.wait(left)
        if self._revokes != revokes:  # a rebalance meanwhile: records of partitions given away are not ours
            owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
            msgs = [m for m in msgs if (m.topic(), m.partition()) in owned]
        return msgs

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.store.assign(sorted({tp.partition for tp in partitions}))
        # librdkafka keeps a partition's pause across a rebalance; the gate starts afresh, so must it.
        consumer.resume(partitions)
        self.assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._revokes += 1
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.gate.forget(tps)
        gone = set(tps)
        # A partition's retry counters start again with its next owner (or this one, later).
        self._retries = {k: v for k, v in self._retries.items() if (k[0], k[1]) not in gone}
        self.store.revoke(sorted({tp.partition for tp in partitions}))

    def _follow_pauses(self, every_s: float = 0.2) -> None:
        """Hold the partitions of paused maps (changes wait in Kafka); release them on resume."""
        now = time.monotonic()
        if now - self._pauses_checked < every_s:
            return
        self._pauses_checked = now
        paused = self.control.paused
        for m, source in self.routes.values():
            metrics.MAP_PAUSED.labels(m.name, direction_of(source)).set(1 if m.name in paused else 0)
        release = [tp for tp in self.gate.held if self.routes[tp[0]][0].name not in paused]
        if release:
            self.gate.release(self.consumer, release)
            log.info("map(s) resumed: applying what waited on %s", sorted(release))

    def _on_stats(self, stats_json: str) -> None:
        """Lag per topic from librdkafka's statistics (no extra broker requests on the hot loop)."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        self.group_watch.group = dict(stats.get("cgrp") or {})
        topics = stats.get("topics", {})
        for topic, t in topics.items():
            if topic not in self.routes:
                continue
            lag = sum(max(0, p.get("consumer_lag", 0)) for pid, p in t.get("partitions", {}).items() if pid != "-1")
            metrics.LAG.labels(topic, direction_of(self.routes[topic][1])).set(lag)

    # -- one batch ------------------------------------------------------------------------------------------
    def _paused_now(self) -> set[str]:
        """The paused maps, read up to the control topic's end as it is now (after the batch was fetched):
        `dualwrite map pause` returns once its record is acknowledged, so every change produced after that
        finds the pause here (one offsets request per batch, to the broker only)."""
        try:
            _, end = self.consumer.get_watermark_offsets(TopicPartition(self.control.topic, 0), timeout=5, cached=False)
        except KafkaException as e:
            log.warning("could not read the control topic's end (%s); using the map states read so far", e)
            return self.control.paused
        return self.control.paused_as_of(end)

    def _process(self, msgs: list[Message]) -> None:
        items: list[_Item] = []
        paused = self._paused_now()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            m, source = self.routes[msg.topic() or ""]
            item = _Item(msg, m, source)
            if self.gate.waiting(item.tp):
                continue  # fetched before the pause: it comes again after the seek
            if m.name in paused:
                self.gate.hold(self.consumer, item.tp, item.offset)
                continue
            self._decode(item)
            items.append(item)
        self._apply([it for it in items if it.change is not None])
        self._settle(items)

    def _decode(self, it: _Item) -> None:
        try:
            value = self.deserialize(it.msg.topic() or "", it.msg.value())
            event = ChangeEvent.from_avro(value)
            repair = REPAIR_HEADER in dict(it.msg.headers() or [])
            change = Change(it.map, event, it.msg.partition() or 0, repair=repair)
            if change.target_write() is None:
                it.outcome = "filtered"
                return
            it.change = change
        except PermanentError as exc:
            it.error = exc
        except (KeyError, ValueError, TypeError) as exc:
            it.error = PermanentError(f"malformed change event: {exc}")

    def _apply(self, items: list[_Item]) -> None:
        """Rounds of at most one change per record, in offset order; a partition stops at its first retry.

        A record's successive changes from one side go as one (`merge.coalesce`: the newest stands for
        them, one write instead of one round each, so a backlog costs fewer requests); when the applier
        declines that, they go one per round after all."""
        queues: dict[str, list[_Item]] = defaultdict(list)
        for it in items:
            assert it.change is not None
            queues[state_key(it.map, it.change.event)].append(it)
        stopped: dict[TP, int] = {}  # partition -> offset of its first change to retry
        one_by_one: set[str] = set()  # records whose changes could not be coalesced
        started = time.monotonic()
        while queues:
            runs: list[tuple[str, list[_Item]]] = []
            for key in list(queues):
                queue = queues[key]
                head = queue[0]
                if head.tp in stopped and head.offset > stopped[head.tp]:
                    del queues[key]  # comes again after the seek
                    continue
                run = [queue.pop(0)]
                if key not in one_by_one:
                    while queue and len(run) < MAX_COALESCED and _same_run(run[0], queue[0]):
                        run.append(queue.pop(0))
                if not queue:
                    del queues[key]
                newest = run[-1].change
                assert newest is not None
                newest.earlier = [it.change for it in run[:-1] if it.change is not None]
                runs.append((key, run))
            if not runs:
                break
            changes = [run[-1].change for _, run in runs if run[-1].change is not None]
            self.lanes.run(self._lane_parts(changes), self._apply_part)
            self.width.after_round(any(isinstance(c.error, ThrottledError) for c in changes))
            for key, run in runs:
                newest = run[-1].change
                assert newest is not None
                newest.earlier = []
                if newest.declined:  # one change at a time for this record
                    newest.declined = False
                    one_by_one.add(key)
                    queues[key] = run + queues.get(key, [])
                    continue
                for it in run:
                    it.outcome, it.error = newest.outcome, newest.error
                    if it is not run[-1] and it.outcome in ("applied", "skipped_equal"):
                        it.outcome = "coalesced"
                first = run[0]
                if first.error is not None and isinstance(first.error, RetryableError):
                    stopped[first.tp] = min(stopped.get(first.tp, first.offset), first.offset)
        for it in items:
            if it.change is not None and it.outcome is None and it.error is None:
                it.error = RetryableError("not applied: an earlier change of its partition is retried")
        self._observe_latency(items, time.monotonic() - started)

    def _lane_parts(self, changes: list[Change]) -> list[list[Change]]:
        """The round's parts for the write lanes: as many as `self.width` allows now (see `lanes.Width`), one
        while the request budget makes requests wait (each lane sends requests of its own, and then fewer,
        fuller ones are what the budget needs)."""
        cc = self.cfg.consumer
        target = self.targets.get("dataverse")
        width = self.width.allowed(getattr(getattr(target, "client", None), "dop_hint", None))
        if self.budget is not None and self.budget.wait_s(width) > 0:
            width = 1
        parts = lanes.split(changes, lambda c: c.partition, width, cc.lane_min_records)
        metrics.WRITE_LANES.observe(len(parts))
        return parts

    def _apply_part(self, changes: list[Change]) -> None:
        """One lane's part of a round (whole partitions: see consumers/lanes.py)."""
        try:
            self.applier.apply(changes)
        except DualWriteError as exc:  # a store or target that raises instead of answering per change
            for c in changes:
                c.error, c.outcome, c.declined = exc, None, False

    def _observe_latency(self, items: list[_Item], seconds: float) -> None:
        now = time.time()
        directions = {direction_of(it.source) for it in items}
        for d in directions:
            metrics.APPLY_SECONDS.labels(d).observe(seconds)
        for it in items:
            if it.outcome == "applied" and it.change is not None:
                metrics.END_TO_END_SECONDS.labels(it.map.name, direction_of(it.source)).observe(
                    max(0.0, now - it.change.event.source_time.timestamp())
                )

    def _settle(self, items: list[_Item]) -> None:
        commit: dict[TP, int] = {}
        first: dict[TP, int] = {}
        tracker: kafka.DeliveryTracker | None = None
        stopped: set[TP] = set()
        for it in sorted(items, key=lambda i: (i.tp, i.offset)):
            tp, offset = it.tp, it.offset
            first.setdefault(tp, offset)
            if tp in stopped:
                continue
            error = it.error
            if error is not None and isinstance(error, RetryableError):
                retry = self._retries.setdefault((*tp, offset), _Retry())
                retry.failed(error)
                if not retry.exhausted(self.cfg.consumer.retry, error, time.monotonic()):
                    self._block(tp, offset, retry, error)
                    metrics.RECORDS.labels(it.map.name, direction_of(it.source), "retried").inc()
                    stopped.add(tp)
                    continue
                tracker = self._dead_letter(it, error, retry.attempts, tracker)
            elif error is not None:
                tracker = self._dead_letter(it, error, 1, tracker)
            else:
                self._count(it, it.outcome or "filtered")
            self._retries.pop((*tp, offset), None)
            commit[tp] = offset + 1
        if tracker is not None:
            try:
                tracker.wait(self.producer, 30)
            except RetryableError as exc:
                log.warning("dead letters not acknowledged, applying the batch again: %s", exc)
                for tp, offset in first.items():
                    self.gate.block(self.consumer, tp, offset, time.monotonic() + 1.0)
                return
        for tp in list(commit):
            if tp in self.gate.blocked:
                commit[tp] = min(commit[tp], self.gate.blocked[tp][1])
        if commit:
            self._commit(commit)

    def _commit(self, commit: dict[tuple[str, int], int]) -> None:
        """Commit the offsets applied. A refused commit loses nothing: the group moved on (the member
        was fenced while the broker or this process stalled) or the broker is away, and whoever owns
        the partitions next applies the records again from the last commit, which the sync state
        makes idempotent; a later commit of this member covers these offsets too."""
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in commit.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit refused, the records will be applied again after the rebalance: %s", exc)

    def _count(self, it: _Item, outcome: str) -> None:
        direction = direction_of(it.source)
        metrics.RECORDS.labels(it.map.name, direction, outcome).inc()
        self.status[it.source].count(it.map.name, outcome)
        if it.change is not None and it.change.conflict:
            metrics.RECORDS.labels(it.map.name, direction, "conflict").inc()
            self.status[it.source].count(it.map.name, "conflict")

    def _block(self, tp: TP, offset: int, retry: _Retry, error: DualWriteError | None) -> None:
        backoff = backoff_s(self.cfg.consumer.retry, retry, error, random.uniform(0.5, 1.0))
        log.info("retrying %s[%d]@%d in %.2fs (attempt %d): %s", tp[0], tp[1], offset, backoff, retry.attempts, error)
        self.gate.block(self.consumer, tp, offset, time.monotonic() + backoff)
        metrics.BLOCKED_PARTITIONS.labels(direction_of(self.routes[tp[0]][1])).set(
            sum(1 for t in self.gate.blocked if self.routes[t[0]][1] == self.routes[tp[0]][1])
        )

    def _dead_letter(
        self, it: _Item, error: DualWriteError, attempts: int, tracker: kafka.DeliveryTracker | None
    ) -> kafka.DeliveryTracker:
        log.warning(
            "dead-lettering %s[%d]@%d (map %s): %s", it.msg.topic(), it.msg.partition(), it.offset, it.map.name, error
        )
        direction = direction_of(it.source)
        tracker = dlq.dead_letter(self.producer, it.msg, error, it.map.name, direction, attempts, tracker)
        metrics.RECORDS.labels(it.map.name, direction, "dead_lettered").inc()
        self.status[it.source].count(it.map.name, "dead_lettered")
        return tracker
