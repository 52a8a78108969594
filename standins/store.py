"""SQLite storage shared by the stand-ins: tables of catalogue entities, row versions, tombstones."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.catalogue import Entity, Field

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SYSTEM_USER = "00000000-0000-0000-0000-00000000aaaa"
EntityDef = Entity  # the stand-ins' name for a catalogue entity


def column(entity: Entity, name: str) -> str:
    """The quoted SQL column of a declared field (a guid primary key is the row id)."""
    f = entity.by_name[name.lower()]
    return '"__id"' if f.name == entity.guid_key else f'"{f.name}"'


@dataclass
class Row:
    id: str
    version: int
    created_on: str
    modified_on: str
    created_by: str
    modified_by: str
    values: dict[str, Any]
    rowid: int = 0


@dataclass
class Tombstone:
    id: str
    version: int
    key: dict[str, Any]


class FieldError(Exception):
    """A value a declared field refuses: kind is unknown, type, value, required or too_long."""

    def __init__(self, kind: str, field_name: str, value: Any = None, detail: str = "") -> None:
        super().__init__(f"{kind}: {field_name} {value!r} {detail}".strip())
        self.kind = kind
        self.field = field_name
        self.value = value
        self.detail = detail


class DuplicateKeyError(Exception):
    """An insert or update would break the uniqueness of the key or an alternate key."""


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_guid(text: Any) -> bool:
    return isinstance(text, str) and bool(_GUID.match(text))


def parse_datetime(text: str) -> str:
    """An ISO 8601 timestamp (or date) as the stored UTC form `YYYY-MM-DDTHH:MM:SSZ`."""
    value = datetime.fromisoformat(text.replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalise(f: Field, value: Any) -> Any:
    """A JSON value as stored for field `f`; raises FieldError on a wrong type or a refused value."""
    if value is None:
        return None
    t = f.type
    if t in ("string", "enum"):
        if not isinstance(value, str):
            raise FieldError("type", f.name, value, "Edm.String")
        if t == "enum":
            for allowed in f.values:
                if allowed.lower() == value.lower():
                    return allowed
            raise FieldError("value", f.name, value)
        if f.max_length is not None and len(value) > f.max_length:
            raise FieldError("too_long", f.name, value, str(f.max_length))
        return value
    if t in ("int", "choice"):
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise FieldError("type", f.name, value, "Edm.Int32")
        if t == "choice" and f.values and int(value) not in f.values:  # no values: not known, any accepted
            raise FieldError("value", f.name, value)
        return int(value)
    if t == "decimal":
        if isinstance(value, bool):
            raise FieldError("type", f.name, value, "Edm.Decimal")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # IEEE754Compatible clients send decimals as strings
            try:
                return float(Decimal(value))
            except InvalidOperation:
                pass
        raise FieldError("type", f.name, value, "Edm.Decimal")
    if t == "bool":
        if not isinstance(value, bool):
            raise FieldError("type", f.name, value, "Edm.Boolean")
        return int(value)
    if t == "datetime":
        if not isinstance(value, str):
            raise FieldError("type", f.name, value, "Edm.DateTimeOffset")
        try:
            return parse_datetime(value)
        except ValueError:
            raise FieldError("type", f.name, value, "Edm.DateTimeOffset") from None
    # guid and lookup: a GUID string
    if not is_guid(value):
        raise FieldError("type", f.name, value, "Edm.Guid")
    return value.lower()


def to_json(f: Field, stored: Any) -> Any:
    """A stored value as it appears in a JSON response."""
    if stored is None:
        return None
    if f.type == "bool":
        return bool(stored)
    if f.type == "decimal":
        return float(stored)
    return stored


_SQL_TYPES = {"int": "INTEGER", "choice": "INTEGER", "bool": "INTEGER", "decimal": "REAL"}
_SYSTEM = '"__rowid", "__id", "__version", "__created_on", "__modified_on", "__created_by", "__modified_by"'


class Store:
    """Entity tables in one SQLite database; every write bumps a global row version."""

    def __init__(self, path: str, entities: tuple[Entity, ...] | list[Entity]) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        self._depth = 0
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS __meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self.conn.execute("INSERT OR IGNORE INTO __meta VALUES ('version', 0)")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS __tombstones (entity TEXT NOT NULL, id TEXT NOT NULL COLLATE NOCASE,"
            " version INTEGER NOT NULL, deleted_on TEXT, deleted_by TEXT, key TEXT)"
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS __tombstones_v ON __tombstones (entity, version)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS __tombstones_id ON __tombstones (entity, id)")
        self.entities: dict[str, Entity] = {}
        for entity in entities:
            self.declare(entity)

    # -- schema ---------------------------------------------------------------------------------
    def declare(self, entity: Entity) -> None:
        """Create the table and indexes of an entity set (idempotent)."""
        cols = [
            '"__rowid" INTEGER PRIMARY KEY',
            '"__id" TEXT NOT NULL UNIQUE COLLATE NOCASE',
            '"__version" INTEGER NOT NULL',
            '"__created_on" TEXT',
            '"__modified_on" TEXT',
            '"__created_by" TEXT',
            '"__modified_by" TEXT',
        ]
        for f in entity.fields:
            if f.name == entity.guid_key:
                continue
            sql_type = _SQL_TYPES.get(f.type, "TEXT")
            collate = " COLLATE NOCASE" if sql_type == "TEXT" else ""  # both services compare text case-insensitively
            cols.append(f'"{f.name}" {sql_type}{collate}')
        table = f'"{entity.name}"'
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)})")
        self.conn.execute(f'CREATE INDEX IF NOT EXISTS "{entity.name}__v" ON {table} ("__version")')
        for i, key in enumerate((entity.key, *entity.alternate_keys)):
            if key == (entity.guid_key,):
                continue
            columns = ", ".join(column(entity, n) for n in key)
            self.conn.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS "{entity.name}__k{i}" ON {table} ({columns})')
        self.entities[entity.name.lower()] = entity

    def entity(self, name: str) -> Entity | None:
        return self.entities.get(name.lower())

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """All-or-nothing block; nests. An exception rolls back to the savepoint and propagates."""
        with self.lock:
            self._depth += 1
            name = f"sp{self._depth}"
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            else:
                self.conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        """Run SQL on the store's connection (for a stand-in's own tables, e.g. an outbox)."""
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def current_version(self) -> int:
        return int(self.execute("SELECT value FROM __meta WHERE name = 'version'")[0][0])

    def _next_version(self) -> int:
        return int(
            self.conn.execute("UPDATE __meta SET value = value + 1 WHERE name = 'version' RETURNING value").fetchone()[
                0
            ]
        )

    # -- reads ----------------------------------------------------------------------------------
    def _row(self, entity: Entity, r: sqlite3.Row) -> Row:
        values = {}
        for f in entity.fields:
            values[f.name] = r["__id"] if f.name == entity.guid_key else r[f.name]
        return Row(
            r["__id"],
            r["__version"],
            r["__created_on"],
            r["__modified_on"],
            r["__created_by"],
            r["__modified_by"],
            values,
            r["__rowid"],
        )

    def get(self, entity: Entity, key: dict[str, Any]) -> Row | None:
        """The row whose key or alternate key has these (stored) values."""
        names = sorted(key)
        where = " AND ".join(
            f"{column(entity, n)} IS NULL" if key[n] is None else f"{column(entity, n)} = ?" for n in names
        )
        params = [key[n] for n in names if key[n] is not None]
        rows = self.select(entity, where, params, limit=1)
        return rows[0] if rows else None

    def get_by_id(self, entity: Entity, row_id: str) -> Row | None:
        rows = self.select(entity, '"__id" = ?', [row_id], limit=1)
        return rows[0] if rows else None

    def select(
        self,
        entity: Entity,
        where: str = "",
        params: list[Any] | tuple[Any, ...] = (),
        order_by: str = "",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Row]:
        sql = f'SELECT * FROM "{entity.name}"'
        if where:
            sql += f" WHERE {where}"
        sql += f' ORDER BY {order_by + ", " if order_by else ""}"__rowid"'
        if limit is not None or offset:
            sql += f" LIMIT {-1 if limit is None else int(limit)} OFFSET {int(offset)}"
        return [self._row(entity, r) for r in self.execute(sql, list(params))]

    def count(self, entity: Entity, where: str = "", params: list[Any] | tuple[Any, ...] = ()) -> int:
        sql = f'SELECT COUNT(*) FROM "{entity.name}"' + (f" WHERE {where}" if where else "")
        return int(self.execute(sql, list(params))[0][0])

    def changes(self, entity: Entity, after: int, upto: int, limit: int) -> list[Row | Tombstone]:
        """Rows and tombstones with a version in (after, upto], by version, at most `limit`."""
        rows: list[Row | Tombstone] = list(
            self.select(
                entity, '"__version" > ? AND "__version" <= ?', [after, upto], order_by='"__version"', limit=limit
            )
        )
        for t in self.execute(
            "SELECT id, version, key FROM __tombstones WHERE entity = ? AND version > ? AND version <= ?"
            " ORDER BY version LIMIT ?",
            [entity.name, after, upto, limit],
        ):
            rows.append(Tombstone(t["id"], t["version"], json.loads(t["key"] or "{}")))
        rows.sort(key=lambda r: r.version)
        return rows[:limit]

    # -- writes ---------------------------------------------------------------------------------
    def prepare_insert(self, entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and check required fields; raises FieldError('required', ...)."""
        out = dict(values)
        for f in entity.fields:
            if out.get(f.name) is None and f.default is not None and f.name not in values:
                out[f.name] = normalise(f, f.default)
            if f.required and out.get(f.name) in (None, "") and f.name != entity.guid_key:
                raise FieldError("required", f.name)
        return out

    def insert(
        self, entity: Entity, values: dict[str, Any], user: str, row_id: str | None = None, now: str | None = None
    ) -> Row:
        """Insert normalised values (defaults are applied here too); returns the stored row."""
        values = self.prepare_insert(entity, values)
        pk = entity.guid_key
        row_id = (row_id or (values.get(pk) if pk else None) or str(uuid.uuid4())).lower()
        now = now or utc_now()
        names = [f.name for f in entity.fields if f.name != pk]
        with self.savepoint():
            version = self._next_version()
            cols = ", ".join(f'"{n}"' for n in names)
            marks = ", ".join("?" for _ in names)
            try:
                cur = self.conn.execute(
                    f'INSERT INTO "{entity.name}" ("__id", "__version", "__created_on", "__modified_on",'
                    f' "__created_by", "__modified_by"{", " + cols if cols else ""})'
                    f" VALUES (?, ?, ?, ?, ?, ?{', ' + marks if marks else ''})",
                    [row_id, version, now, now, user, user, *(values.get(n) for n in names)],
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(str(exc)) from None
            # a re-created id must not also look deleted to change tracking
            self.conn.execute("DELETE FROM __tombstones WHERE entity = ? AND id = ?", [entity.name, row_id])
        stored = {f.name: row_id if f.name == pk else values.get(f.name) for f in entity.fields}
        return Row(row_id, version, now, now, user, user, stored, cur.lastrowid or 0)

    def insert_many(self, entity: Entity, rows: list[dict[str, Any]], user: str, now: str | None = None) -> int:
        """Bulk insert (seeding, benchmarks): one version per row, all or nothing; returns the row count."""
        pk = entity.guid_key
        names = [f.name for f in entity.fields if f.name != pk]
        now = now or utc_now()
        prepared = [self.prepare_insert(entity, values) for values in rows]
        with self.savepoint():
            first = self.current_version() + 1
            self.conn.execute("UPDATE __meta SET value = value + ? WHERE name = 'version'", [len(prepared)])
            params = []
            for i, values in enumerate(prepared):
                row_id = str((values.get(pk) if pk else None) or uuid.uuid4()).lower()
                params.append([row_id, first + i, now, now, user, user, *(values.get(n) for n in names)])
            cols = "".join(f', "{n}"' for n in names)
            marks = ", ?" * len(names)
            try:
                self.conn.executemany(
                    f'INSERT INTO "{entity.name}" ("__id", "__version", "__created_on", "__modified_on",'
                    f' "__created_by", "__modified_by"{cols}) VALUES (?, ?, ?, ?, ?, ?{marks})',
                    params,
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(str(exc)) from None
            self.conn.executemany(
                "DELETE FROM __tombstones WHERE entity = ? AND id = ?", [[entity.name, p[0]] for p in params]
            )
        return len(prepared)

    def update(self, entity: Entity, row: Row, changes: dict[str, Any], user: str) -> Row:
        """Apply normalised changes to a row; bumps its version even when nothing changed."""
        pk = entity.guid_key
        names = [n for n in changes if n != pk]
        for n in names:
            f = entity.field(n)
            if f is not None and f.required and changes[n] in (None, ""):
                raise FieldError("required", n)
        with self.savepoint():
            version = self._next_version()
            sets = "".join(f', "{n}" = ?' for n in names)
            try:
                self.conn.execute(
                    f'UPDATE "{entity.name}" SET "__version" = ?, "__modified_on" = ?, "__modified_by" = ?{sets}'
                    ' WHERE "__rowid" = ?',
                    [version, utc_now(), user, *(changes[n] for n in names), row.rowid],
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(str(exc)) from None
        after = self.get_by_id(entity, row.id)
        assert after is not None
        return after

    def delete(self, entity: Entity, row: Row, user: str) -> int:
        """Delete a row, leaving a tombstone with the version at deletion; returns that version."""
        with self.savepoint():
            version = self._next_version()
            self.conn.execute(f'DELETE FROM "{entity.name}" WHERE "__rowid" = ?', [row.rowid])
            key = {n: row.values[n] for n in entity.key}
            self.conn.execute(
                "INSERT INTO __tombstones VALUES (?, ?, ?, ?, ?, ?)",
                [entity.name, row.id, version, utc_now(), user, json.dumps(key)],
            )
        return version

    def close(self) -> None:
        with self.lock:
            self.conn.close()
