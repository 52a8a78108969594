"""A record the broker never acknowledged, or the client refused, must raise, never look delivered.

These use the real Kafka client: against a port where no broker listens (with a short
`message.timeout.ms`, so each delivery report comes back as `_MSG_TIMED_OUT` within a second), and
with a small `message.max.bytes`, which the client refuses before sending. `flush()` returns 0 in
the first case although nothing reached a broker, which is the loss these tests guard against.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from confluent_kafka import Message

from dualwrite import control, dlq, kafka
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import KafkaConfig
from dualwrite.errors import MappingError, RetryableError
from dualwrite.server import free_port
from dualwrite.status import StatusPublisher


@pytest.fixture()
def nowhere() -> KafkaConfig:
    """A broker address nobody listens on; each record times out after 300 ms."""
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", client={"message.timeout.ms": 300, "log_level": 0})


@pytest.fixture()
def small() -> KafkaConfig:
    """The client refuses records over 1,000 bytes (as a broker's message.max.bytes would)."""
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", client={"message.max.bytes": 1000, "log_level": 0})


@pytest.fixture(autouse=True)
def quiet_client() -> Iterator[None]:
    logging.getLogger("dualwrite.kafka.client").setLevel(logging.CRITICAL)
    yield


def a_dead_letter(value: bytes = b"v") -> dlq.DeadLetter:
    return dlq.DeadLetter(
        "dualwrite.fo.customersv3.dlq", 0, 7, b"usmf|US-1", value, {"dualwrite.original.topic": "dualwrite.fo.x"}
    )


def a_message(value: bytes = b"v") -> Message:
    return Message(topic="dualwrite.fo.customersv3", partition=1, offset=42, key=b"usmf|US-1", value=value)


def test_checkpoint_never_acknowledged_raises_and_is_not_kept(nowhere: KafkaConfig) -> None:
    store = CheckpointStore(nowhere)
    with pytest.raises(RetryableError, match="_MSG_TIMED_OUT"):
        store.put_many({"dataverse|delta|accounts": "https://link"})
    assert store.get("dataverse|delta|accounts") is None


def test_map_state_never_acknowledged_raises(nowhere: KafkaConfig) -> None:
    with pytest.raises(RetryableError, match="_MSG_TIMED_OUT"):
        control.set_state(nowhere, "customers", control.PAUSED)


def test_replay_never_acknowledged_raises(nowhere: KafkaConfig) -> None:
    with pytest.raises(RetryableError, match="_MSG_TIMED_OUT"):
        dlq.replay(nowhere, kafka.producer(nowhere, linger_ms=0), [a_dead_letter()])


def test_replay_of_a_record_the_client_refuses_raises_retryable(small: KafkaConfig) -> None:
    with pytest.raises(RetryableError, match="MSG_SIZE_TOO_LARGE"):
        dlq.replay(small, kafka.producer(small, linger_ms=0), [a_dead_letter(b"x" * 5000)])


def test_dead_letter_the_client_refuses_raises_retryable(small: KafkaConfig) -> None:
    producer = kafka.producer(small, linger_ms=0)
    with pytest.raises(RetryableError, match="MSG_SIZE_TOO_LARGE"):
        dlq.dead_letter(producer, a_message(b"x" * 5000), MappingError("no value"), "customers", "fo->dataverse", 1)


def test_dead_letters_never_acknowledged_fail_the_tracker_the_caller_checks(nowhere: KafkaConfig) -> None:
    producer = kafka.producer(nowhere, linger_ms=0)
    tracker = kafka.DeliveryTracker()
    for _ in range(2):
        dlq.dead_letter(producer, a_message(), MappingError("no value"), "customers", "fo->dataverse", 1, tracker)
    assert tracker.sent == 2
    with pytest.raises(RetryableError, match=r"2 of 2 record\(s\).*_MSG_TIMED_OUT"):
        tracker.wait(producer, timeout_s=10)


def test_deliver_names_the_first_error(nowhere: KafkaConfig) -> None:
    producer = kafka.producer(nowhere, linger_ms=0)
    records = [kafka.Record("dualwrite.checkpoints", b"v", b"k")]
    with pytest.raises(RetryableError, match="dualwrite.checkpoints: _MSG_TIMED_OUT"):
        kafka.deliver(producer, records, timeout_s=10)


def test_final_status_not_acknowledged_is_not_claimed(nowhere: KafkaConfig) -> None:
    status = StatusPublisher(nowhere, "consumer.dataverse", ["customers"], "fo->dataverse")
    assert status.tick(force=True) is False
