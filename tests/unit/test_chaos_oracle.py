"""The chaos run's dead-letter oracle: poison by id, exact where the outcome is known."""

from wiring.chaos import NOT_POISON, dlq_failures, poison_id


def test_poison_ids_come_from_the_key_or_the_dead_data_events_correlation_id() -> None:
    assert poison_id(b"poison-12", b"\x00not avro 12") == 12
    assert poison_id(None, b'{"CorrelationId": "chaos-poison-7", "InputParameters": 7}') == 7
    assert poison_id(b"usmf|ch-00001", b"\x00\x00\x00\x00\x01...") == NOT_POISON


def test_every_poison_sent_is_dead_lettered_once_and_nothing_else_is() -> None:
    before = {3: 1}  # an earlier run's poison stays out of the count
    assert dlq_failures(before, {3: 1, 10: 1, 11: 1}, {10, 11}, set()) == []
    # A poison whose answer was lost may be there, once, or not at all.
    assert dlq_failures(before, {3: 1, 10: 1, 11: 1, 12: 1}, {10, 11}, {12, 13}) == []
    missing = dlq_failures(before, {3: 1, 10: 1}, {10, 11}, set())
    assert len(missing) == 1 and "ids [11]" in missing[0]
    twice = dlq_failures(before, {3: 1, 10: 2, 11: 1}, {10, 11}, set())
    assert len(twice) == 1 and "more than once" in twice[0]
    stray = dlq_failures(before, {3: 1, 10: 1, 11: 1, 99: 1}, {10, 11}, set())
    assert len(stray) == 1 and "never sent" in stray[0]
    good = dlq_failures(before, {3: 1, 10: 1, 11: 1, NOT_POISON: 2}, {10, 11}, set())
    assert len(good) == 1 and "not poison" in good[0]
