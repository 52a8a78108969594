"""Per-record sync state, owned by the framework: a local SQLite file per partition, backed by a compacted
changelog topic, like a Kafka Streams state store.

A write reaches the local file only after the broker acknowledged it in the changelog, so a file never
holds what a restore would not give back. On assignment a partition's file reads the changelog's tail
after the offset it recorded, up to a fence record of its own (the broker's high watermark is not exact).

One writer per partition: the fence an assignment writes is a *claim*, and every state record carries the
offset of its writer's claim (header `e`). A consumer whose group session ended without it knowing yet (a
broker freeze) may still be in the middle of a batch while the group gave its partitions to another one.
Its next put finds offsets in the changelog between its own that it did not write; it reads them, and when
they hold another store's claim the partition is *lost*: nothing more is read or written on it until the
group assigns it again (its target writes wait behind the state puts that come first). What it wrote after
the other claim (at most that one put) is ignored by every restore: a record counts only while its claim is
the partition's latest.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError, DualWriteError, PartitionLostError, RetryableError
from dualwrite.merge import RecordState

log = logging.getLogger(__name__)

FENCE = "__fence__|"  # key prefix of the records a restore reads up to; never a state
CLAIM = b"claim"  # the value of a fence written on assignment (a read-back's fence has none)
_CLAIM_ROW = f"{FENCE}latest-claim"  # in a file's states table: the offset of the latest claim it read
EPOCH_HEADER = "e"  # a state record's header: the offset of its writer's claim
# Compaction drops a tombstone once it is older than the topic's delete.retention.ms (24 h by default): a file
# that did not follow the changelog for longer may have missed deletes, so it is rebuilt from the start.
TOMBSTONE_HORIZON_S = 12 * 3600
_KEYS_PER_QUERY = 500  # below SQLite's limit of variables per statement
_READ_BATCH = 10_000
_SCHEMA = {"states": [("key", 1), ("value", 0)], "meta": [("changelog_offset", 0), ("synced_at", 0)]}
_CREATE = """
CREATE TABLE states (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (changelog_offset INTEGER NOT NULL, synced_at REAL NOT NULL);
INSERT INTO meta VALUES (-1, 0);
"""


class _WrongSchema(sqlite3.DatabaseError):
    """An SQLite file that is not a state file."""


@dataclass
class _File:
    """One partition's open file and the highest changelog offset it includes (-1: none)."""

    path: Path
    conn: sqlite3.Connection
    offset: int
    synced_at: float

    def write(self, rows: dict[str, str | None], offset: int, synced_at: float) -> None:
        """Apply the last value per key (None deletes) and the offset, in one transaction.

        `synced_at`: the file holds every record written to the changelog partition before this time."""
        with self.conn:
            self.conn.executemany("DELETE FROM states WHERE key = ?", [(k,) for k, v in rows.items() if v is None])
            self.conn.executemany(
                "INSERT OR REPLACE INTO states VALUES (?, ?)", [(k, v) for k, v in rows.items() if v is not None]
            )
            self.conn.execute("UPDATE meta SET changelog_offset = ?, synced_at = ?", (offset, synced_at))
        self.offset, self.synced_at = offset, synced_at


def _connect(path: Path) -> _File:
    """Open or create a state file; sqlite3.DatabaseError when the file is not one."""
    # Exclusive: a second store on the same directory fails loudly instead of mixing two files' histories.
    conn = sqlite3.connect(path, timeout=1.0, check_same_thread=False)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        # The changelog is the durable copy; a commit lost with the machine is read back from it.
        conn.execute("PRAGMA synchronous = NORMAL")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            conn.executescript(_CREATE)
        found = {t: [(c[1], c[5]) for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables or _SCHEMA}
        meta = conn.execute("SELECT changelog_offset, synced_at FROM meta").fetchall() if found == _SCHEMA else []
        if len(meta) != 1:
            raise _WrongSchema(f"tables {sorted(found)} are not states(key, value) and meta(changelog_offset)")
        return _File(path, conn, int(meta[0][0]), float(meta[0][1]))
    except sqlite3.Error:
        conn.close()
        raise


def _delete(path: Path) -> None:
    for f in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        f.unlink(missing_ok=True)


def _encode(state: RecordState | None) -> str | None:
    return None if state is None else json.dumps(state.to_json(), separators=(",", ":"))


def _decode(text: str) -> RecordState:
    return RecordState.from_json(json.loads(text))


class _Changelog(kafka.DeliveryTracker):
    """A DeliveryTracker for records to explicit partitions that keeps each partition's highest acknowledged offset."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets: dict[int, int] = {}
        self.acked: dict[int, list[int]] = {}  # every acknowledged offset, per partition
        self.queued: set[int] = set()  # partitions a record was handed to the client for

    def produce_to(
        self,
        producer: Producer,
        topic: str,
        partition: int,
        key: str,
        value: str | bytes | None,
        epoch: int | None = None,
    ) -> None:
        """Queue one record; RetryableError when the client refuses it at once (too large, queue full)."""
        try:
            producer.produce(
                topic,
                key=key.encode(),
                value=value.encode() if isinstance(value, str) else value,
                partition=partition,
                headers=None if epoch is None else [(EPOCH_HEADER, str(epoch).encode())],
                on_delivery=self._report,
            )
        except KafkaException as exc:
            why = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
            raise RetryableError(f"{topic} [{partition}]: the Kafka client refused the record: {why}") from None
        except BufferError as exc:
            raise RetryableError(f"{topic} [{partition}]: the Kafka client's queue is full: {exc}") from None
        with self._reported:
            self.sent += 1
            self.queued.add(partition)

    def _report(self, error: KafkaError | None, msg: Message) -> None:
        with self._reported:  # a re-entrant lock: the base class takes it again
            partition, offset = msg.partition(), msg.offset()
            if error is None:
                if partition is None or offset is None or offset < 0:
                    # Without its offset a record has no place in the file's history: not counted as written.
                    self.errors.append(f"{msg.topic()}: acknowledged without an offset")
                    self._reported.notify_all()
                    return
                self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
                self.acked.setdefault(partition, []).append(offset)
            super()._report(error, msg)

    def contiguous_after(self, partition: int, offset: int) -> bool:
        """Whether this tracker's records of `partition` took exactly the offsets after `offset` (nobody
        else wrote to the partition in between)."""
        got = sorted(self.acked.get(partition, []))
        return got == list(range(offset + 1, offset + 1 + len(got)))


def epoch_of(msg: Message) -> int | None:
    """The claim offset a state record's writer had (None: a record from before claims were written)."""
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        if name == EPOCH_HEADER and isinstance(value, (bytes, str)):
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ClaimFilter:
    """Follows one changelog partition in offset order: which state records count (see the module doc)."""

    def __init__(self, latest_claim: int = -1) -> None:
        self.latest_claim = latest_claim

    def counts(self, msg: Message, key: str) -> bool:
        """False for fences; a claim moves the latest claim on. True for a state record that counts."""
        if key.startswith(FENCE):
            if msg.value() == CLAIM:
                self.latest_claim = max(self.latest_claim, msg.offset() or 0)
            return False
        epoch = epoch_of(msg)
        return epoch is None or epoch >= self.latest_claim


def read_states(cfg: KafkaConfig, wanted: set[str] | None = None) -> dict[str, RecordState]:
    """The states in the whole changelog topic as a restore from nothing gives them (`wanted`: only these keys)."""
    found: dict[str, RecordState] = {}
    filters: dict[int, ClaimFilter] = {}
    for msg in kafka.read_to_end(cfg, kafka.state_topic(cfg.topic_prefix), idle_s=0.5):
        key = (msg.key() or b"").decode("utf-8", "replace")
        if not filters.setdefault(msg.partition() or 0, ClaimFilter()).counts(msg, key):
            continue
        if wanted is not None and key not in wanted:
            continue
        value = msg.value()
        if value is None:
            found.pop(key, None)
        else:
            found[key] = _decode(value.decode())
    return found


class StateStore:
    """Record states of the partitions this consumer owns: one local SQLite file per partition under
    `directory`, backed by the compacted changelog topic `<prefix>.state` (one changelog partition per
    map-topic partition: a record's state lives in the partition number its change events have).

    Threads: `get_many` and `put` may run at once for distinct partitions (the consumer's write lanes, each
    owning whole partitions); all else comes from the one consumer thread, its rebalance callbacks included.
    Each directory belongs to one store at a time (its files are locked while assigned). After a failed put,
    the next call on its partitions first reads back what reached the changelog (RetryableError when it cannot).
    """

    def __init__(self, cfg: KafkaConfig, directory: Path, *, timeout_s: float = 30.0) -> None:
        self.cfg = cfg
        self.topic = kafka.state_topic(cfg.topic_prefix)
        self.directory = directory
        self.timeout_s = timeout_s
        # Records read from the changelog by the last restore of each partition (its own fence not counted).
        self.restored: dict[int, int] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._producer = kafka.producer(cfg)
        self._restoring = threading.RLock()  # see _restore
        self._reader: Consumer | None = None
        self._files: dict[int, _File] = {}
        self._behind: set[int] = set()  # a failed put may have reached the changelog: read it back before use
        self._epochs: dict[int, int] = {}  # partition -> the offset of this store's claim
        self._claims: dict[int, str] = {}  # partition -> the key of this store's claim
        self._lost: set[int] = set()  # partitions another store claimed since this one did

    # -- partitions ----------------------------------------------------------------------------------------
    def assign(self, partitions: Iterable[int]) -> None:
        """Open each partition's file and restore it from the changelog before it is used.

        RetryableError when the changelog cannot be read (nothing is assigned then: call again); ConfigError when
        the state topic or partition does not exist, or another store holds the directory."""
        again = self._lost & set(partitions)
        if again:
            self.revoke(again)  # lost, and given back by the group: claimed afresh
        wanted = sorted(set(partitions) - set(self._files))
        if not wanted:
            return
        self._check_topic(wanted)
        opened: list[int] = []
        try:
            for p in wanted:
                self._files[p] = self._open(p)
                opened.append(p)
            self._restore(wanted, claim=True)
        except DualWriteError:
            for p in opened:  # closed as they are: not in sync, so their sync time stays
                self._files.pop(p).conn.close()
            raise

    def revoke(self, partitions: Iterable[int]) -> None:
        """Close each partition's file; it stays on disk for a fast restore when the partition comes back."""
        for p in partitions:
            f = self._files.pop(p, None)
            self._behind.discard(p)
            self._lost.discard(p)
            self._epochs.pop(p, None)
            self._claims.pop(p, None)
            if f is None:
                continue
            try:
                # Up to date until now: what others write from here on is read back on the next assignment.
                with f.conn:
                    f.conn.execute("UPDATE meta SET synced_at = ?", (time.time(),))
            except sqlite3.Error as exc:
                log.warning("%s: cannot record the sync time (%s); the next assignment rebuilds it if old", f.path, exc)
            f.conn.close()

    def close(self) -> None:
        """Close every file and the Kafka clients."""
        self.revoke(list(self._files))
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._producer.flush(5)

    # -- states ----------------------------------------------------------------------------------------------
    def get(self, partition: int, key: str) -> RecordState | None:
        """The state of `key`, or None."""
        row = self._file(partition).conn.execute("SELECT value FROM states WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row[0])

    def get_many(self, partition: int, keys: Iterable[str]) -> dict[str, RecordState]:
        """The states of those `keys` that have one."""
        conn, wanted, found = self._file(partition).conn, list(dict.fromkeys(keys)), {}
        for i in range(0, len(wanted), _KEYS_PER_QUERY):
            chunk = wanted[i : i + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for key, value in conn.execute(f"SELECT key, value FROM states WHERE key IN ({marks})", chunk):
                found[key] = _decode(value)
        return found

    def put(self, items: Iterable[tuple[int, str, RecordState | None]]) -> None:
        """Write (None: delete) states: first to the changelog, and to the local files once the broker acknowledged
        every one. RetryableError, and no local change, otherwise."""
        rows: dict[int, dict[str, str | None]] = {}
        encoded = [(p, key, _encode(state)) for p, key, state in items]
        for p, key, value in encoded:
            if key.startswith(FENCE):
                raise DualWriteError(f"state key {key!r}: keys starting with {FENCE!r} are the store's own")
            self._file(p)  # assigned, and caught up, before anything is written
            rows.setdefault(p, {})[key] = value  # the last value per key, as compaction keeps it
        if not encoded:
            return
        tracker = _Changelog()
        try:
            for p, key, value in encoded:
                tracker.produce_to(self._producer, self.topic, p, key, value, self._epochs.get(p))
            tracker.wait(self._producer, self.timeout_s)
        except RetryableError:
            # Some of them may be in the changelog (or get there): read back before the next use, so the files
            # never differ from what a restore would give.
            self._behind.update(tracker.queued)
            raise
        for p, values in rows.items():
            f = self._files[p]
            if not tracker.contiguous_after(p, f.offset):
                # Someone else wrote to the partition since this file's offset: read it all back (this put
                # included), and find out whether it was another store's claim.
                log.warning(
                    "%s [%d]: records of another writer between this store's own; reading them back", self.topic, p
                )
                self._restore([p], claim=False)
                if p in self._lost:
                    raise PartitionLostError(self._lost_message(p))
                continue
            try:
                f.write(values, tracker.offsets[p], time.time())
            except sqlite3.Error as exc:
                self._behind.add(p)
                raise RetryableError(f"{f.path}: {exc}") from None

    # -- internals --------------------------------------------------------------------------------------------
    def _file(self, p: int) -> _File:
        """Partition `p`'s file, first caught up with the changelog when a failed put may have reached it."""
        if p not in self._files:
            raise DualWriteError(f"partition {p} of {self.topic} is not assigned to this state store")
        if p in self._lost:
            raise PartitionLostError(self._lost_message(p))
        if p in self._behind:
            self._restore([p], claim=False)
            self._behind.discard(p)
            if p in self._lost:
                raise PartitionLostError(self._lost_message(p))
        return self._files[p]

    def _lost_message(self, p: int) -> str:
        return (
            f"{self.topic} [{p}]: another consumer claimed this partition (this one's group session ended without "
            "it knowing): nothing is read or written on it until the group assigns it again"
        )

    def _path(self, p: int) -> Path:
        return self.directory / f"{p}.sqlite"

    def _open(self, p: int) -> _File:
        path = self._path(p)
        try:
            return _connect(path)
        except sqlite3.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", None)
            if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise ConfigError(
                    f"{path} is in use by another state store: give each consumer its own consumer.state_dir"
                ) from None
            if not isinstance(exc, _WrongSchema) and name not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise ConfigError(f"{path}: {exc}") from None
            log.warning("%s is not a state file (%s): deleted, restored from %s [%d]", path, exc, self.topic, p)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: {exc}") from None
        _delete(path)
        try:
            return _connect(path)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def _rebuild(self, p: int, why: str) -> None:
        """Start partition `p`'s file anew, to be restored from the whole changelog."""
        log.warning("%s %s: rebuilt from the whole of %s [%d]", self._path(p), why, self.topic, p)
        self._files[p].conn.close()
        _delete(self._path(p))
        self._files[p] = _connect(self._path(p))

    def _check_topic(self, partitions: list[int]) -> None:
        try:
            # All topics: asking for one by name may make a broker auto-create it, uncompacted.
            meta = self._producer.list_topics(timeout=10).topics.get(self.topic)
        except KafkaException as exc:
            raise RetryableError(f"{self.topic}: no metadata from the broker: {exc}") from None
        if meta is None or meta.error is not None:
            raise ConfigError(f"topic {self.topic} does not exist: create it (dualwrite's ensure_topics does)")
        missing = [p for p in partitions if p not in meta.partitions]
        if missing:
            raise ConfigError(
                f"topic {self.topic} has {len(meta.partitions)} partitions, none numbered {missing}: it needs as many "
                "as the map topics (kafka.partitions)"
            )

    def _fences(self, partitions: list[int], claim: bool) -> dict[int, int]:
        """Write a fence record to each partition: the offset each restore reads up to (exact, unlike watermarks).
        A claim (on assignment) is kept by compaction; a read-back's fence is a tombstone."""
        tracker = _Changelog()
        keys = {p: f"{FENCE}{uuid.uuid4().hex}" for p in partitions}
        for p in partitions:
            tracker.produce_to(self._producer, self.topic, p, keys[p], CLAIM if claim else None)
        tracker.wait(self._producer, self.timeout_s)
        if claim:
            for p in partitions:
                self._claims[p], self._epochs[p] = keys[p], tracker.offsets[p]
        return tracker.offsets

    def _restore(self, partitions: list[int], claim: bool) -> None:
        """Apply to each partition's file the changelog records after its offset, up to a fresh fence (a claim
        on assignment). A read-back that meets another store's claim marks the partition lost. One at a time:
        the consumer's write lanes (each with partitions of its own) share the store's reader."""
        with self._restoring:
            self._restore_now(partitions, claim)

    def _restore_now(self, partitions: list[int], claim: bool) -> None:
        started = time.time()
        ends = self._fences(partitions, claim)
        try:
            self._read(partitions, ends, started)
        except KafkaException as exc:
            raise RetryableError(f"{self.topic}: restore failed: {exc}") from None
        except sqlite3.Error as exc:
            raise RetryableError(f"restoring {self.topic} into {self.directory}: {exc}") from None
        finally:
            if self._reader is not None:
                self._reader.unassign()

    def _read(self, partitions: list[int], ends: dict[int, int], started: float) -> None:
        starts: dict[int, int] = {}
        since: dict[int, float] = {}
        filters: dict[int, ClaimFilter] = {}
        for p in partitions:
            f = self._files[p]
            if f.offset >= ends[p]:
                self._rebuild(p, f"is ahead of the changelog (offset {f.offset}, its end is {ends[p]})")
            elif f.offset >= 0 and started - f.synced_at > TOMBSTONE_HORIZON_S:
                self._rebuild(p, f"was last in sync {(started - f.synced_at) / 3600:.0f} h ago")
            f = self._files[p]
            starts[p] = f.offset + 1 if f.offset >= 0 else OFFSET_BEGINNING
            # Until the fence is reached the file is only as recent as before (a fresh one: as this restore).
            since[p] = f.synced_at if f.offset >= 0 else started
            self.restored[p] = 0
            latest = f.conn.execute("SELECT value FROM states WHERE key = ?", (_CLAIM_ROW,)).fetchone()
            filters[p] = ClaimFilter(int(latest[0]) if latest else -1)
        reader = self._reader_consumer()
        reader.assign([TopicPartition(self.topic, p, starts[p]) for p in partitions])
        pending = set(partitions)
        last = time.monotonic()
        while pending:
            batch: dict[int, list[Message]] = {}
            for msg in reader.consume(_READ_BATCH, 0.2):
                error, part = msg.error(), msg.partition()
                if error is not None:
                    if error.fatal():
                        raise RetryableError(f"{self.topic}: restore failed: {error.str()}")
                    continue  # transient (reconnecting, end of partition): the timeout below bounds it
                if part is not None and part in pending:
                    batch.setdefault(part, []).append(msg)
            if not batch:
                if time.monotonic() - last > self.timeout_s:
                    raise RetryableError(
                        f"{self.topic}: restore of partition(s) {sorted(pending)} read nothing for "
                        f"{self.timeout_s:g} s before reaching its fence"
                    )
                continue
            last = time.monotonic()
            for p, msgs in batch.items():
                if self._apply(p, msgs, ends[p], since[p], started, filters[p]):
                    pending.discard(p)

    def _apply(self, p: int, msgs: list[Message], end: int, since: float, started: float, claims: ClaimFilter) -> bool:
        """Apply changelog records up to offset `end` (the fence) to partition `p`'s file; True once it is reached."""
        rows: dict[str, str | None] = {}
        last = -1
        before = claims.latest_claim
        for msg in msgs:
            offset = msg.offset() or 0
            if offset >= end:
                if offset == end:
                    claims.counts(msg, FENCE)  # this restore's own fence: a claim is the partition's latest
                last = end
                break
            last = offset
            self.restored[p] += 1
            raw_key, value = msg.key(), msg.value()
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key or "")
            if claims.counts(msg, key):
                rows[key] = None if value is None else value.decode()
            elif self._claimed_by_another(p, key, value, offset):
                self._lost.add(p)
        if claims.latest_claim != before:
            rows[_CLAIM_ROW] = str(claims.latest_claim)
        if last >= 0:
            # The fence was written after `started`: reaching it, the file holds everything written before then.
            self._files[p].write(rows, last, started if last >= end else since)
        return last >= end

    def _claimed_by_another(self, p: int, key: str, value: bytes | None, offset: int) -> bool:
        """Whether a changelog record is another store's claim of partition `p`, made after this store's."""
        mine = self._claims.get(p)
        return value == CLAIM and mine is not None and key != mine and offset > self._epochs.get(p, -1)

    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            # No group is joined (partitions are assigned by hand) and nothing is committed: the files hold the offsets.
            self._reader = kafka.consumer(self.cfg, f"{self.cfg.topic_prefix}.state.restore.{uuid.uuid4().hex}")
        return self._reader
