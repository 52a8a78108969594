"""Component status kept in Kafka (a compacted topic), so `dualwrite status` needs only the broker."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from dualwrite import kafka, metrics
from dualwrite.config import KafkaConfig
from dualwrite.errors import DualWriteError, RetryableError

log = logging.getLogger("dualwrite.status")
PUBLISH_EVERY_S = 2.0
ALIVE_WITHIN_S = 10.0


class StatusPublisher:
    """Counts outcomes per map and publishes them every few seconds under this instance's key."""

    def __init__(self, cfg: KafkaConfig, component: str, maps: list[str], direction: str) -> None:
        self.topic = kafka.status_topic(cfg.topic_prefix)
        self.producer = kafka.producer(cfg, linger_ms=0)
        # One key per component and host (the pod name on Kubernetes), stable across restarts: a restarted
        # process replaces its last record instead of adding one, so the compacted topic does not grow forever.
        self.key = f"{component}|{socket.gethostname()}"
        self.component = component
        self.direction = direction
        self.counts: dict[str, dict[str, int]] = {m: defaultdict(int) for m in maps}
        self.state = "running"
        self.delivered: bool | None = None  # whether the broker acknowledged the last status record sent
        self._last = 0.0

    def count(self, map_name: str, outcome: str, n: int = 1) -> None:
        self.counts.setdefault(map_name, defaultdict(int))[outcome] += n

    def tick(self, force: bool = False) -> bool | None:
        """Publish every few seconds, best effort; `force`: now, waiting for the broker (on stop).

        Returns True only once the broker acknowledged, False when the record was refused or not
        acknowledged (logged), None when nothing was waited for.
        """
        now = time.time()
        if not force and now - self._last < PUBLISH_EVERY_S:
            return None
        self._last = now
        value = {
            "component": self.component,
            "direction": self.direction,
            "state": "stopped" if force else self.state,
            "time": now,
            "maps": {m: dict(c) for m, c in self.counts.items()},
        }
        record = kafka.Record(self.topic, json.dumps(value).encode(), self.key.encode())
        if not force:
            # Not waited for: the delivery report arrives with a later poll and is only logged.
            try:
                self.producer.produce(record.topic, key=record.key, value=record.value, on_delivery=self._report)
            except (KafkaException, BufferError) as exc:
                self._failed(str(exc))
            self.producer.poll(0)
            return None
        try:
            kafka.deliver(self.producer, [record], timeout_s=5)
        except RetryableError as exc:
            self._failed(str(exc))
            return False
        self.delivered = True
        return True

    def _report(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            self.delivered = True
        else:
            self._failed(f"{msg.topic()}: {error.name()}: {error.str()}")

    def _failed(self, why: str) -> None:
        if self.delivered is not False:  # log the change to failing, not every tick
            log.warning("status of %s not published (dualwrite status may show it stale): %s", self.component, why)
        self.delivered = False


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
    for msg in kafka.read_topics_to_end(cfg, topics, idle_s=0.5):
        key = (msg.topic() or "", msg.partition() or 0)
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


# -- the last reconcile report -------------------------------------------------------------------------------
RECONCILE_KEY = "reconcile|last"
DRIFT_KINDS = ("only_fo", "only_dataverse", "differs")  # rows apart that nothing explains
EXPLAINED_KINDS = ("in_flight", "dlq")  # rows apart because a change is not applied yet, or dead-lettered


def publish_reconcile(cfg: KafkaConfig, summary: dict[str, Any]) -> None:
    """Keep a reconcile run's summary (per map: counts, time, duration, runs with drift in a row) in the status
    topic under one key, so the last one survives the Job that wrote it; returns once the broker acknowledged it."""
    producer = kafka.producer(cfg, linger_ms=0)
    record = kafka.Record(kafka.status_topic(cfg.topic_prefix), json.dumps(summary).encode(), RECONCILE_KEY.encode())
    kafka.deliver(producer, [record], timeout_s=10)


def read_reconcile(cfg: KafkaConfig, idle_s: float = 0.5) -> dict[str, Any] | None:
    """The summary the last reconcile run wrote, or None."""
    latest: dict[str, Any] | None = None
    for msg in kafka.read_to_end(cfg, kafka.status_topic(cfg.topic_prefix), idle_s):
        if msg.key() == RECONCILE_KEY.encode():
            value = msg.value()
            latest = json.loads(value) if value else None
    return latest


def export_reconcile(summary: dict[str, Any]) -> None:
    """Set the reconcile gauges from a summary (maps it no longer names are removed)."""
    maps = summary.get("maps", {})
    for name, m in maps.items():
        for kind in (*DRIFT_KINDS, *EXPLAINED_KINDS):
            metrics.RECONCILE_DRIFT.labels(name, kind).set(m.get("counts", {}).get(kind, 0))
        metrics.RECONCILE_LAST_RUN.labels(name).set(m.get("time", 0))
        metrics.RECONCILE_DURATION.labels(name).set(m.get("duration_s", 0))
        metrics.RECONCILE_DRIFT_RUNS.labels(name).set(m.get("drift_runs", 0))
    for gauge in (
        metrics.RECONCILE_DRIFT,
        metrics.RECONCILE_LAST_RUN,
        metrics.RECONCILE_DURATION,
        metrics.RECONCILE_DRIFT_RUNS,
    ):
        shown = {tuple(s.labels.values()) for metric in gauge.collect() for s in metric.samples}
        for labels in shown:
            if labels[0] not in maps:
                gauge.remove(*labels)


class ReconcileGauges:
    """Reads the last reconcile summary from the status topic every `interval_s` and serves it as gauges:
    a CronJob's process ends before Prometheus could scrape it, a long-running component does not."""

    def __init__(self, cfg: KafkaConfig, interval_s: float) -> None:
        self.cfg = cfg
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reconcile-gauges")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def refresh(self) -> bool:
        """Read and export once; False when the status topic could not be read (logged)."""
        try:
            summary = read_reconcile(self.cfg)
        except (DualWriteError, KafkaException) as exc:
            log.warning("last reconcile report not read (its gauges stay as they were): %s", exc)
            return False
        if summary is not None:
            export_reconcile(summary)
        return True

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.interval_s):
                return
