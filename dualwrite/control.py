"""Map states (running / paused), kept in a compacted Kafka topic so they survive every restart."""

from __future__ import annotations

import getpass
import json
import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import TopicPartition

from dualwrite import kafka
from dualwrite.config import KafkaConfig

RUNNING, PAUSED = "running", "paused"
log = logging.getLogger("dualwrite.control")


def _key(map_name: str) -> bytes:
    return f"map|{map_name}".encode()


def set_state(cfg: KafkaConfig, map_name: str, state: str) -> None:
    """Record a map's state; returns once the broker acknowledged it."""
    producer = kafka.producer(cfg, linger_ms=0)
    value = {"state": state, "at": time.time(), "by": getpass.getuser()}
    record = kafka.Record(kafka.control_topic(cfg.topic_prefix), json.dumps(value).encode(), _key(map_name))
    kafka.deliver(producer, [record], timeout_s=15)


def read_states(cfg: KafkaConfig) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {}
    for msg in kafka.read_to_end(cfg, kafka.control_topic(cfg.topic_prefix), idle_s=0.5):
        key, value = (msg.key() or b"").decode(), msg.value()
        if key.startswith("map|") and value:
            states[key[4:]] = json.loads(value)
    return states


def paused_maps(cfg: KafkaConfig) -> set[str]:
    return {name for name, s in read_states(cfg).items() if s.get("state") == PAUSED}


class ControlFollower:
    """Follows the control topic from the start on its own thread; `paused` is the current set."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.topic = kafka.control_topic(cfg.topic_prefix)
        self._consumer = kafka.consumer(cfg, f"{cfg.topic_prefix}.control-follower.{uuid.uuid4().hex}")
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._read = threading.Condition(self._lock)
        self._next = 0  # the control topic's offset read up to
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="control-follower")

    def start(self) -> ControlFollower:
        self._thread.start()
        return self

    @property
    def paused(self) -> set[str]:
        with self._lock:
            return {m for m, s in self._states.items() if s == PAUSED}

    def _run(self) -> None:
        self._consumer.assign([TopicPartition(self.topic, 0, 0)])
        idle = 0
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                idle += 1
                if idle >= 3:
                    self.caught_up.set()  # nothing more for a while: what we hold is the current state
                continue
            idle = 0
            key, value = (msg.key() or b"").decode(), msg.value()
            with self._read:
                if key.startswith("map|") and value:
                    self._states[key[4:]] = json.loads(value).get("state", RUNNING)
                self._next = max(self._next, (msg.offset() or 0) + 1)
                self._read.notify_all()
        self._consumer.close()

    def paused_as_of(self, end_offset: int, timeout_s: float = 5.0) -> set[str]:
        """The paused maps once the follower has read the control topic up to `end_offset` (its end when
        the caller fetched a batch): a pause acknowledged before a change was produced then holds that
        change, however far behind this thread was. After `timeout_s`, the set read so far."""
        with self._read:
            if not self._read.wait_for(lambda: self._next >= end_offset, timeout=timeout_s):
                log.warning(
                    "the control topic was not read up to offset %d in %.0f s; using the map states read so far",
                    end_offset,
                    timeout_s,
                )
            return {m for m, s in self._states.items() if s == PAUSED}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
