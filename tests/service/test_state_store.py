"""The per-record state store on a real tansu broker: restores are exact, the changelog comes first."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError, DualWriteError, RetryableError
from dualwrite.merge import FieldState, Observed, Pending, Plan, RecordState, SideState, digest
from dualwrite.state import FENCE, StateStore

pytestmark = pytest.mark.service
HOST = "127.0.0.1"


def _cfg(broker: str, **client: str | int | bool) -> KafkaConfig:
    """A config with a topic prefix of its own, its state topic created (3 partitions)."""
    cfg = KafkaConfig(bootstrap_servers=broker, topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=3, client=client)
    kafka.ensure_topics(cfg, [])
    return cfg


@pytest.fixture()
def cfg(broker: str) -> KafkaConfig:
    return _cfg(broker)


@pytest.fixture()
def stores() -> Iterator[list[StateStore]]:
    """Stores a test opens, closed even when it fails."""
    opened: list[StateStore] = []
    yield opened
    for s in opened:
        s.close()


def state(n: int, name: str = "Contoso", pending: bool = False) -> RecordState:
    s = RecordState(
        SideState(True, n, f'W/"{n}"', f"id-{n}", n),
        SideState(True, 10 * n, None, None),
        {"name": FieldState(digest(f"{name} {n}"), n, 10 * n), "group": FieldState(digest("10"), 1, 2)},
    )
    if pending:
        ev = Observed("fo", True, {"name": digest(name)}, n + 1, 'W/"x"', None, datetime(2024, 5, 1, 12, tzinfo=UTC))
        return RecordState(s.fo, s.dataverse, s.fields, Pending(ev, None, Plan("update", frozenset({"name"}))))
    return s


def open_store(stores: list[StateStore], cfg: KafkaConfig, directory: Path, partitions: list[int]) -> StateStore:
    s = StateStore(cfg, directory)
    stores.append(s)
    s.assign(partitions)
    return s


def file_contents(path: Path) -> tuple[dict[str, str], int]:
    """The states and the recorded changelog offset of a closed state file, read with SQLite itself."""
    with sqlite3.connect(path) as conn:
        rows = {k: v for k, v in conn.execute("SELECT key, value FROM states") if not k.startswith(FENCE)}
        (offset,) = conn.execute("SELECT changelog_offset FROM meta").fetchone()
    conn.close()
    return rows, offset


def test_put_then_get_and_a_restart_reads_only_the_tail(
    cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path
) -> None:
    a = open_store(stores, cfg, tmp_path, [0, 1])
    assert a.restored == {0: 0, 1: 0}
    items = [(i % 2, f"customers|usmf|us-{i:03d}", state(i, pending=i == 7)) for i in range(100)]
    a.put(items)
    assert a.get(1, "customers|usmf|us-007") == state(7, pending=True)
    assert a.get(0, "customers|usmf|us-missing") is None
    keys = [k for p, k, _ in items if p == 0]
    assert a.get_many(0, [*keys, "customers|usmf|us-missing"]) == {k: s for p, k, s in items if p == 0}
    a.close()

    b = open_store(stores, cfg, tmp_path, [0, 1])  # a restart: same directory
    assert b.restored == {0: 0, 1: 0}  # nothing replayed: the files were up to date
    for p, key, s in items:
        assert b.get(p, key) == s


def test_an_empty_directory_restores_everything_exactly(
    cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path
) -> None:
    a = open_store(stores, cfg, tmp_path / "a", [0, 1, 2])
    # One call, so the last records share a batch: tansu reports that batch's base offset + 1 as the watermark.
    items = [(i % 3, f"vendors|demf|v-{i:05d}", state(i)) for i in range(3000)]
    a.put(items)

    b = open_store(stores, cfg, tmp_path / "b", [0, 1, 2])  # another pod, no volume
    assert b.restored == {p: 1000 + 1 for p in range(3)}  # every state, plus the fence of a's first restore
    for p in range(3):
        assert b.get_many(p, [k for q, k, _ in items if q == p]) == {k: s for q, k, s in items if q == p}
    assert b.get(2, "vendors|demf|v-02999") == state(2999)  # the very last record of the batch


def test_tombstones_delete_and_the_later_put_wins(cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path) -> None:
    a = open_store(stores, cfg, tmp_path / "a", [1])
    a.put([(1, "k1", state(1)), (1, "k2", state(2)), (1, "k3", state(3))])
    a.put([(1, "k1", state(11, "Fabrikam")), (1, "k2", None), (1, "k3", state(4)), (1, "k3", state(5))])
    expected = {"k1": state(11, "Fabrikam"), "k3": state(5)}
    assert a.get_many(1, ["k1", "k2", "k3"]) == expected
    assert a.get(1, "k2") is None
    a.close()

    for directory in (tmp_path / "a", tmp_path / "b"):  # a restart, and a restore from nothing
        s = open_store(stores, cfg, directory, [1])
        assert s.get_many(1, ["k1", "k2", "k3"]) == expected
        s.close()


def test_a_refused_changelog_write_changes_nothing_local(broker: str, stores: list[StateStore], tmp_path: Path) -> None:
    cfg = _cfg(broker, **{"message.max.bytes": 4000})
    big = RecordState(fields={f"field{i}": FieldState(digest(i), i, i) for i in range(200)})
    a = open_store(stores, cfg, tmp_path / "a", [0])
    a.put([(0, "k1", state(1)), (0, "k2", state(2))])

    with pytest.raises(RetryableError, match="refused"):
        a.put([(0, "k2", big)])
    assert a.get(0, "k2") == state(2)

    # The small one before it is queued (it may reach the changelog); the file holds none of the call.
    with pytest.raises(RetryableError, match="refused"):
        a.put([(0, "k1", state(9)), (0, "k3", big)])
    a.revoke([0])
    rows, offset = file_contents(tmp_path / "a" / "0.sqlite")
    assert set(rows) == {"k1", "k2"} and RecordState.from_json(json.loads(rows["k1"])) == state(1)
    assert offset == 2  # the fence of the first restore at 0, then k1 and k2

    # Back in use, the file holds exactly what a restore from the changelog gives, never something else.
    a.assign([0])
    fresh = open_store(stores, cfg, tmp_path / "b", [0])
    assert a.get_many(0, ["k1", "k2", "k3"]) == fresh.get_many(0, ["k1", "k2", "k3"])
    assert a.get(0, "k1") == state(9) and a.get(0, "k3") is None


def test_a_refused_write_is_read_back_before_the_next_use(
    broker: str, stores: list[StateStore], tmp_path: Path
) -> None:
    cfg = _cfg(broker, **{"message.max.bytes": 4000})
    big = RecordState(fields={f"field{i}": FieldState(digest(i), i, i) for i in range(200)})
    a = open_store(stores, cfg, tmp_path / "a", [2])
    with pytest.raises(RetryableError):
        a.put([(2, "k1", state(1)), (2, "k2", big)])
    # What reached the changelog is what a restore gives, so the running store shows it too.
    assert a.get(2, "k1") == state(1)
    assert a.get(2, "k2") is None


@pytest.mark.parametrize("damage", ["not sqlite", "wrong schema"])
def test_a_corrupt_local_file_is_rebuilt_from_the_changelog(
    cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    a = open_store(stores, cfg, tmp_path, [0])
    items = [(0, f"k{i}", state(i)) for i in range(50)]
    a.put(items)
    a.close()
    path = tmp_path / "0.sqlite"
    if damage == "not sqlite":
        path.write_bytes(b"\x00garbage" * 1000)
    else:
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE states (k TEXT, v TEXT)")
        conn.close()

    with caplog.at_level(logging.WARNING, logger="dualwrite.state"):
        b = open_store(stores, cfg, tmp_path, [0])
    assert any(str(path) in r.getMessage() for r in caplog.records), caplog.text
    assert b.restored[0] == 50 + 1  # the whole partition, with a's fence
    assert b.get_many(0, [k for _, k, _ in items]) == {k: s for _, k, s in items}


def test_two_instances_hand_a_partition_over(cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path) -> None:
    a = open_store(stores, cfg, tmp_path / "a", [0, 1])
    a.put([(1, "k1", state(1)), (1, "k2", state(2)), (0, "other", state(3))])
    a.revoke([1])  # a rebalance moves partition 1 to instance b

    b = open_store(stores, cfg, tmp_path / "b", [1])
    assert b.get_many(1, ["k1", "k2"]) == {"k1": state(1), "k2": state(2)}
    b.put([(1, "k1", state(21, "Fabrikam")), (1, "k2", None), (1, "k3", state(23))])
    b.revoke([1])  # ... and back

    a.assign([1])
    assert a.restored[1] == 1 + 3  # only the tail: b's fence and b's three writes
    assert a.get_many(1, ["k1", "k2", "k3"]) == {"k1": state(21, "Fabrikam"), "k3": state(23)}
    assert a.get(0, "other") == state(3)  # the partition it kept is untouched


def test_a_file_out_of_sync_for_too_long_is_rebuilt(cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path) -> None:
    a = open_store(stores, cfg, tmp_path, [0])
    a.put([(0, "k1", state(1))])
    a.close()
    with sqlite3.connect(tmp_path / "0.sqlite") as conn:  # as if the pod had been down for two days
        conn.execute("UPDATE meta SET synced_at = ?", (time.time() - 2 * 24 * 3600,))
    conn.close()
    b = open_store(stores, cfg, tmp_path, [0])
    assert b.restored[0] == 2  # from the start (compaction may have dropped deletes since), not the tail
    assert b.get(0, "k1") == state(1)


def test_misuse_fails_clearly(cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path) -> None:
    a = open_store(stores, cfg, tmp_path, [0])
    with pytest.raises(DualWriteError, match="not assigned"):
        a.get(1, "k")
    with pytest.raises(DualWriteError, match="not assigned"):
        a.put([(1, "k", state(1))])
    with pytest.raises(ConfigError, match="3 partitions"):
        a.assign([7])
    with pytest.raises(ConfigError, match="in use"):
        open_store(stores, cfg, tmp_path, [0])  # a second store on the same directory
    missing = KafkaConfig(bootstrap_servers=cfg.bootstrap_servers, topic_prefix=f"none{uuid.uuid4().hex[:6]}")
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(stores, missing, tmp_path / "m", [0])


# -- two stores on one partition: a consumer that lost its partition without knowing it yet --------------
# (a session that timed out during a broker freeze: the group gave the partition to another consumer while
# the first one was still in the middle of a batch)
def test_a_store_that_lost_its_partition_learns_it_at_its_next_put_and_writes_nothing_local(
    cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path
) -> None:
    a = open_store(stores, cfg, tmp_path / "a", [0])
    a.put([(0, "k1", state(1))])
    b = open_store(stores, cfg, tmp_path / "b", [0])  # the group gave partition 0 to b
    b.put([(0, "k2", state(2)), (0, "k1", state(3))])
    with pytest.raises(RetryableError, match="another consumer"):
        a.put([(0, "k3", state(4))])  # a's put follows b's writes: a is no longer the partition's only writer
    with pytest.raises(RetryableError, match="another consumer"):
        a.get(0, "k1")  # nor does it read states it may have missed, until the group assigns it again
    b.revoke([0])
    a.revoke([0])
    a.assign([0])  # the partition comes back to a: its file reads what b wrote
    assert a.get(0, "k2") == state(2) and a.get(0, "k1") == state(3)


def test_what_a_store_wrote_after_losing_its_partition_does_not_override_the_new_owner(
    cfg: KafkaConfig, stores: list[StateStore], tmp_path: Path
) -> None:
    a = open_store(stores, cfg, tmp_path / "a", [0])
    b = open_store(stores, cfg, tmp_path / "b", [0])
    b.put([(0, "k1", state(5))])
    with pytest.raises(RetryableError):
        a.put([(0, "k1", state(1)), (0, "k9", state(9))])  # in the changelog, after b's claim
    for directory in (tmp_path / "c", tmp_path / "b"):  # a fresh restore, and b's own file after a restart
        b.close()
        c = open_store(stores, cfg, directory, [0])
        assert c.get(0, "k1") == state(5) and c.get(0, "k9") is None
        b = c
    rows = sync_states_of(cfg, {"k1", "k9"})
    assert rows == {"k1": state(5)}  # reconcile's reading of the changelog agrees


def sync_states_of(cfg: KafkaConfig, keys: set[str]) -> dict[str, RecordState]:
    from dualwrite.state import read_states

    return read_states(cfg, keys)
