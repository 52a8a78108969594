"""Which failures use up a record's retries (pure logic of the consumer loop; no broker)."""

from __future__ import annotations

from consumers.loop import _Retry, backoff_s
from dualwrite.config import RetryConfig
from dualwrite.errors import AuthError, MissingReferenceError, PartitionLostError, RetryableError, ThrottledError

RC = RetryConfig(max_attempts=3, missing_reference_timeout_s=60)


def test_throttling_and_missing_references_do_not_use_up_the_retries_of_transient_errors() -> None:
    r = _Retry(first_failure=0.0)
    # A start-up: the record waits for a referenced row, and the service throttles meanwhile.
    for error in [MissingReferenceError("group 10 not there yet")] * 5 + [ThrottledError("429", 2.0)] * 10:
        r.failed(error)
        assert not r.exhausted(RC, error, now=10.0)
    r.failed(AuthError("no token"))
    assert not r.exhausted(RC, AuthError("no token"), now=10.0)
    # Then two 503s: still retried (3 allowed), although the record failed 18 times in all.
    for _ in range(2):
        r.failed(RetryableError("503"))
        assert not r.exhausted(RC, RetryableError("503"), now=10.0)
    r.failed(RetryableError("503"))
    assert r.exhausted(RC, RetryableError("503"), now=10.0)
    assert r.attempts == 19


def test_a_missing_reference_goes_to_the_dlq_after_its_timeout_and_throttling_never() -> None:
    r = _Retry(first_failure=0.0)
    r.failed(MissingReferenceError("gone"))
    assert not r.exhausted(RC, MissingReferenceError("gone"), now=59.0)
    assert r.exhausted(RC, MissingReferenceError("gone"), now=60.0)
    for _ in range(100):
        r.failed(ThrottledError("429", 1.0))
    assert not r.exhausted(RC, ThrottledError("429", 1.0), now=10_000.0)


def test_a_partition_another_consumer_claimed_never_sends_its_records_to_the_dlq() -> None:
    r = _Retry(first_failure=0.0)
    lost = PartitionLostError("claimed by another consumer")
    for _ in range(50):
        r.failed(lost)
        assert not r.exhausted(RC, lost, now=10_000.0)
    assert r.transient == 0


def test_a_record_waiting_for_a_referenced_row_is_tried_again_within_seconds_after_any_history() -> None:
    # A child row of a dependency chain: its partition throttled for a while, then its parent missing for
    # a while. The parent usually arrives within seconds (another partition, another map): the wait between
    # tries must not grow to the transient errors' 30 s cap, or a throttled initial load idles for minutes.
    rc = RetryConfig()
    r = _Retry(first_failure=0.0)
    for _ in range(10):
        r.failed(ThrottledError("429", 1.0))
    waits = []
    for _ in range(10):
        r.failed(MissingReferenceError("customer group 10 not there yet"))
        waits.append(backoff_s(rc, r, MissingReferenceError("not there yet"), jitter=1.0))
    assert max(waits) <= rc.missing_reference_backoff_s
    assert waits[0] == rc.initial_backoff_s  # the first wait of its kind is the shortest
    # Transient errors still back off up to their own cap; the service's Retry-After is waited as told.
    for _ in range(10):
        r.failed(RetryableError("503"))
    assert backoff_s(rc, r, RetryableError("503"), jitter=1.0) == rc.max_backoff_s
    assert 2.0 <= backoff_s(rc, r, ThrottledError("429", 2.0), jitter=1.0) <= 2.4
