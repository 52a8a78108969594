"""When a whole-topic read (`kafka.read_to_end`) ends.

CI once read an empty state topic: the reader's first fetch on a busy machine took longer than the
half-second idle time, and the read ended before any record. A partition short of its end offset
waits for a stall time instead; the idle time runs only once every partition reached its end.
"""

from __future__ import annotations

from dualwrite.kafka import EndOfTopic


def test_a_slow_first_fetch_does_not_end_the_read_before_the_end_offsets() -> None:
    end = EndOfTopic({0: 3, 1: 2}, idle_s=0.5, stall_s=30.0, now=0.0)
    assert not end.done(5.0)  # nothing yet after 5 s: still waiting
    end.record(0, 2, now=6.0)
    assert not end.done(7.0)  # partition 1 is short of its end
    end.record(1, 1, now=8.0)
    assert not end.done(8.4)
    assert end.done(8.5)  # idle time after every partition reached its end


def test_an_end_never_reached_ends_the_read_after_the_stall_time() -> None:
    end = EndOfTopic({0: 10}, idle_s=0.5, stall_s=30.0, now=0.0)
    end.record(0, 7, now=1.0)  # offsets 8, 9 are e.g. a transaction marker
    assert not end.done(30.9)
    assert end.done(31.0)


def test_a_topic_written_all_the_time_ends_at_the_ends_seen_at_the_start() -> None:
    end = EndOfTopic({0: 2}, idle_s=1.0, stall_s=30.0, now=0.0)
    t = 0.0
    for offset in range(50):  # records keep coming every 0.1 s, past the end seen at the start
        t += 0.1
        if end.done(t):
            break
        end.record(0, offset, now=t)
    assert end.done(t) and t < 1.5


def test_empty_partitions_are_at_their_end_from_the_start() -> None:
    end = EndOfTopic({0: 0, 1: 0}, idle_s=0.5, stall_s=30.0, now=0.0)
    assert end.done(0.5)
    assert not EndOfTopic({0: 0, 1: 4}, idle_s=0.5, stall_s=30.0, now=0.0).done(0.5)
