"""Stand-in of the Confluent Schema Registry REST API (AVRO schemas), kept in SQLite.

It answers the paths, JSON shapes and error codes of Confluent's registry so that confluent_kafka's
`SchemaRegistryClient`, `AvroSerializer` and `AvroDeserializer` work against it unchanged. Schema ids
are global, versions are per subject, deletes are soft first and permanent second, and compatibility
is checked with Apache Avro's reader/writer checker at the subject's (or the global) level.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import avro.schema
import pydantic
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.name import Names
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
BODY_TYPES = {
    MEDIA_TYPE,
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
}
LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
GLOBAL = ""  # the config row of the global level; a real subject is never empty
MAX_VERSION = 2**31 - 1

_DDL = """
CREATE TABLE IF NOT EXISTS schemas (
    id INTEGER PRIMARY KEY,
    schema_type TEXT NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    schema TEXT NOT NULL,
    refs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas(id),
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS config (subject TEXT PRIMARY KEY, compatibility TEXT NOT NULL);
"""


class Settings(pydantic.BaseModel):
    """Where the registry keeps its data and the global compatibility level it starts with."""

    db_path: str = ":memory:"
    default_compatibility: str = "BACKWARD"

    @pydantic.field_validator("default_compatibility")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return value.upper()


class RegistryError(Exception):
    """An error answer: HTTP status plus Confluent's `error_code` and `message`."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def _error(status: int, code: int, message: str) -> JSONResponse:
    return _json({"error_code": code, "message": message}, status)


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _invalid_schema(detail: str) -> RegistryError:
    return RegistryError(422, 42201, f"Invalid schema {detail}")


def _flag(query: QueryParams, name: str) -> bool:
    # confluent_kafka sends Python's `True`/`False` in some query strings, httpx `true`/`false` in others.
    return query.get(name, "false").strip().lower() == "true"


def _page(items: list[Any], query: QueryParams) -> list[Any]:
    try:
        offset, limit = int(query.get("offset", "0")), int(query.get("limit", "-1"))
    except ValueError:
        return items
    items = items[max(offset, 0) :]
    return items if limit < 0 else items[:limit]


def _version_id(text: str) -> int:
    """A path version as Confluent reads it: `latest` and -1 mean the latest (returned as -1)."""
    if text.strip().lower() == "latest":
        return -1
    try:
        version = int(text)
    except ValueError:
        version = 0
    if version == -1 or 1 <= version <= MAX_VERSION:
        return version
    raise RegistryError(
        422,
        42202,
        f"The specified version '{text}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def _body_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(400, 400, f"Unrecognized request body (not JSON): {exc}") from None
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise RegistryError(400, 400, "The request body must be a JSON object")
    return body


@dataclass(frozen=True)
class Candidate:
    """A schema from a request or the store, parsed; `identity` decides whether two are the same schema."""

    schema_type: str
    text: str
    identity: str
    refs: list[dict[str, Any]]
    parsed: avro.schema.Schema


class Store:
    """The registry's state in SQLite; one lock serialises requests so each is one transaction."""

    def __init__(self, settings: Settings) -> None:
        self.default_level = settings.default_compatibility
        self.lock = threading.RLock()
        self.db = sqlite3.connect(settings.db_path, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(_DDL)
        self._parsed: dict[int, avro.schema.Schema] = {}

    # ---- schemas -------------------------------------------------------------------------------------
    def candidate(self, body: dict[str, Any]) -> Candidate:
        text = body.get("schema")
        if not isinstance(text, str) or not text.strip():
            raise _invalid_schema('- the request has no "schema" string')
        schema_type = body.get("schemaType") or "AVRO"
        if not isinstance(schema_type, str) or schema_type.upper() != "AVRO":
            raise _invalid_schema(f"- schemaType {schema_type!r} is not supported; this registry serves AVRO only")
        refs = body.get("references") or []
        if not isinstance(refs, list) or not all(_is_ref(r) for r in refs):
            raise _invalid_schema('- "references" must be a list of {"name", "subject", "version"} objects')
        refs = [{"name": r["name"], "subject": r["subject"], "version": r["version"]} for r in refs]
        try:
            names = Names()
            self._load_refs(refs, names, set())
            data = json.loads(text)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unknown logical types are legal Avro; avro only warns
                parsed = avro.schema.make_avsc_object(data, names)
        except RegistryError:
            raise
        except Exception as exc:  # avro and json raise many types for a bad schema; all mean 42201
            raise _invalid_schema(f"{text}, details: {exc}") from None
        if refs:
            # Referenced types would be inlined by to_json(), so keep the text as sent, just compacted.
            shown = json.dumps(data, separators=(",", ":"))
            identity = json.dumps([data, refs], sort_keys=True, separators=(",", ":"))
        else:
            # Like Confluent's canonical string: the same schema whatever its whitespace or key order.
            shown = json.dumps(_readable(parsed.to_json()), separators=(",", ":"))
            identity = json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":"))
        return Candidate("AVRO", shown, "AVRO:" + identity, refs, parsed)

    def _load_refs(self, refs: list[dict[str, Any]], names: Names, seen: set[tuple[str, int]]) -> None:
        for ref in refs:
            row = self._row(ref["subject"], ref["version"], include_deleted=True)
            if row is None:
                raise _invalid_schema(
                    f"- reference {ref['name']!r} to subject {ref['subject']!r} version {ref['version']} not found"
                )
            key = (row["subject"], row["version"])
            if key in seen:
                continue
            seen.add(key)
            self._load_refs(json.loads(row["refs"]), names, seen)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                avro.schema.make_avsc_object(json.loads(row["schema"]), names)

    def parsed(self, row: sqlite3.Row) -> avro.schema.Schema:
        """The parsed form of a stored schema (cached: a stored schema never changes)."""
        schema_id = row["schema_id"]
        if schema_id not in self._parsed:
            body = {"schema": row["schema"], "references": json.loads(row["refs"])}
            self._parsed[schema_id] = self.candidate(body).parsed
        return self._parsed[schema_id]

    def schema_id_for(self, cand: Candidate) -> int:
        row = self.db.execute("SELECT id FROM schemas WHERE identity = ?", (cand.identity,)).fetchone()
        if row is not None:
            return int(row["id"])
        (next_id,) = self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM schemas").fetchone()
        self.db.execute(
            "INSERT INTO schemas (id, schema_type, identity, schema, refs) VALUES (?, ?, ?, ?, ?)",
            (next_id, cand.schema_type, cand.identity, cand.text, json.dumps(cand.refs)),
        )
        return int(next_id)

    def schema_by_id(self, schema_id: int) -> sqlite3.Row:
        # A schema is served while any version (soft-deleted too) still uses it, as Confluent does.
        row = self.db.execute(
            "SELECT s.* FROM schemas s WHERE s.id = ? AND EXISTS (SELECT 1 FROM versions v WHERE v.schema_id = s.id)",
            (schema_id,),
        ).fetchone()
        if row is None:
            raise RegistryError(404, 40403, f"Schema {schema_id} not found")
        return row

    # ---- versions ------------------------------------------------------------------------------------
    def rows(self, subject: str, include_deleted: bool = False) -> list[sqlite3.Row]:
        sql = (
            "SELECT v.subject, v.version, v.schema_id, v.deleted, "
            "s.schema, s.refs, s.identity, s.schema_type "
            "FROM versions v JOIN schemas s ON s.id = v.schema_id WHERE v.subject = ?"
        )
        if not include_deleted:
            sql += " AND v.deleted = 0"
        return list(self.db.execute(sql + " ORDER BY v.version", (subject,)))

    def _row(self, subject: str, version: int, include_deleted: bool = False) -> sqlite3.Row | None:
        rows = self.rows(subject, include_deleted)
        if version == -1:
            return rows[-1] if rows else None
        return next((r for r in rows if r["version"] == version), None)

    def version_row(self, subject: str, version_text: str, include_deleted: bool = False) -> sqlite3.Row:
        version = _version_id(version_text)
        row = self._row(subject, version, include_deleted)
        if row is None:
            if not self.rows(subject, include_deleted):
                raise _subject_not_found(subject)
            raise RegistryError(404, 40402, f"Version {version} not found.")
        return row

    def referenced_by(self, subject: str, version: int) -> list[int]:
        """Ids of live schemas that reference `subject` `version`."""
        ids = []
        query = "SELECT DISTINCT s.id, s.refs FROM schemas s JOIN versions v ON v.schema_id = s.id"
        for row in self.db.execute(query + " WHERE v.deleted = 0 AND s.refs != '[]' ORDER BY s.id"):
            if any(r["subject"] == subject and r["version"] == version for r in json.loads(row["refs"])):
                ids.append(int(row["id"]))
        return ids

    def check_unreferenced(self, subject: str, version: int) -> None:
        if self.referenced_by(subject, version):
            raise RegistryError(
                422,
                42206,
                "One or more references exist to the schema "
                f"{{magic=1,keytype=SCHEMA,subject={subject},version={version}}}.",
            )

    # ---- config ----------------------------------------------------------------------------------------
    def subject_level(self, subject: str) -> str | None:
        row = self.db.execute("SELECT compatibility FROM config WHERE subject = ?", (subject,)).fetchone()
        return None if row is None else str(row["compatibility"])

    def level(self, subject: str) -> str:
        return self.subject_level(subject) or self.subject_level(GLOBAL) or self.default_level

    def set_level(self, subject: str, level: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO config (subject, compatibility) VALUES (?, ?)", (subject, level))

    def drop_level(self, subject: str) -> None:
        self.db.execute("DELETE FROM config WHERE subject = ?", (subject,))


_TYPE_KEYS = ("type", "name", "namespace", "doc", "aliases", "fields", "symbols", "items", "values", "size")
_FIELD_KEYS = ("name", "type", "doc", "default", "order", "aliases")


def _readable(node: Any, keys: tuple[str, ...] = _TYPE_KEYS) -> Any:
    """Avro JSON with keys in the order Avro's own writers use (avro's to_json scrambles fields' keys)."""
    if isinstance(node, list):
        return [_readable(item, keys) for item in node]
    if not isinstance(node, dict):
        return node
    rank = {key: i for i, key in enumerate(keys)}
    out = {}
    for key in sorted(node, key=lambda k: rank.get(k, len(keys))):
        value = node[key]
        if key == "fields":
            out[key] = _readable(value, _FIELD_KEYS)
        elif key == "default":
            out[key] = value  # a default is data, not schema
        else:
            out[key] = _readable(value, _TYPE_KEYS)
    return out


def _is_ref(ref: Any) -> bool:
    return (
        isinstance(ref, dict)
        and isinstance(ref.get("name"), str)
        and isinstance(ref.get("subject"), str)
        and isinstance(ref.get("version"), int)
    )


def _describe(reader: avro.schema.Schema, writer: avro.schema.Schema, reader_is: str, writer_is: str) -> list[str]:
    """Confluent-style messages for what stops `reader` from reading data written with `writer`."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = sorted({kind.name.upper() for kind in result.incompatibilities})
    locations = ", ".join(sorted(result.locations))
    info = "; ".join(sorted(result.messages))
    if kinds == ["READER_FIELD_MISSING_DEFAULT_VALUE"]:
        description = (
            f"The field '{info}' at path '{locations}' in the {reader_is} schema has no default value "
            f"and is missing in the {writer_is} schema"
        )
    else:
        description = f"The {reader_is} schema cannot read data written with the {writer_is} schema at '{locations}'"
    return [f"{{errorType:'{', '.join(kinds)}', description:'{description}', additionalInfo:'{info}'}}"]


def incompatibilities(
    level: str, new: avro.schema.Schema, olds: list[tuple[int, str, avro.schema.Schema]]
) -> list[str]:
    """Every reason `new` breaks `level` against `olds` (newest first); empty when compatible."""
    if level == "NONE" or not olds:
        return []
    targets = olds if level.endswith("_TRANSITIVE") else olds[:1]
    base = level.removesuffix("_TRANSITIVE")
    messages: list[str] = []
    for version, text, old in targets:
        problems = []
        if base in ("BACKWARD", "FULL"):
            problems += _describe(new, old, "new", "old")
        if base in ("FORWARD", "FULL"):
            problems += _describe(old, new, "old", "new")
        if problems:
            messages += [*problems, f"{{oldSchemaVersion: {version}}}", f"{{oldSchema: '{text}'}}"]
            messages.append(f"{{compatibility: '{level}'}}")
    return messages


def _version_body(row: sqlite3.Row) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": row["subject"],
        "version": row["version"],
        "id": row["schema_id"],
        "schema": row["schema"],
    }
    if row["schema_type"] != "AVRO":
        body["schemaType"] = row["schema_type"]
    refs = json.loads(row["refs"])
    if refs:
        body["references"] = refs
    return body


def _level_from(body: dict[str, Any]) -> str:
    level = body.get("compatibility") or body.get("compatibilityLevel")
    if isinstance(level, str) and level.upper() in LEVELS:
        return level.upper()
    raise RegistryError(
        422,
        42203,
        "Invalid compatibility level. Valid values are none, backward, forward, full, "
        "backward_transitive, forward_transitive, and full_transitive",
    )


@dataclass
class Call:
    """One request as the handlers see it: decoded path parameters, query and raw body."""

    params: dict[str, str]
    query: QueryParams
    raw: bytes

    def body(self) -> dict[str, Any]:
        return _body_object(self.raw)


Handler = Callable[[Store, Call], Response | Any]


def _schema_id(call: Call) -> int:
    try:
        return int(call.params["id"])
    except ValueError:
        raise RegistryError(404, 404, "HTTP 404 Not Found") from None


# ---- handlers: each returns a JSON-able value or a Response, or raises RegistryError ------------------
def root(store: Store, call: Call) -> Any:
    return {}


def schema_types(store: Store, call: Call) -> Any:
    return ["AVRO"]


def get_schema(store: Store, call: Call) -> Any:
    row = store.schema_by_id(_schema_id(call))
    body: dict[str, Any] = {"schema": row["schema"]}
    if row["schema_type"] != "AVRO":
        body["schemaType"] = row["schema_type"]
    refs = json.loads(row["refs"])
    if refs:
        body["references"] = refs
    return body


def get_schema_text(store: Store, call: Call) -> Any:
    return Response(store.schema_by_id(_schema_id(call))["schema"], media_type=MEDIA_TYPE)


def _schema_uses(store: Store, call: Call) -> list[sqlite3.Row]:
    schema_id = _schema_id(call)
    store.schema_by_id(schema_id)
    sql = "SELECT subject, version FROM versions WHERE schema_id = ?"
    if not _flag(call.query, "deleted"):
        sql += " AND deleted = 0"
    rows = list(store.db.execute(sql + " ORDER BY subject, version", (schema_id,)))
    if "subject" in call.query:
        rows = [r for r in rows if r["subject"] == call.query["subject"]]
    return rows


def schema_versions(store: Store, call: Call) -> Any:
    return _page([{"subject": r["subject"], "version": r["version"]} for r in _schema_uses(store, call)], call.query)


def schema_subjects(store: Store, call: Call) -> Any:
    return _page(sorted({r["subject"] for r in _schema_uses(store, call)}), call.query)


def list_subjects(store: Store, call: Call) -> Any:
    rows = store.db.execute("SELECT subject, MIN(deleted) AS all_deleted FROM versions GROUP BY subject")
    if _flag(call.query, "deleted_only"):
        subjects = [r["subject"] for r in rows if r["all_deleted"]]
    elif _flag(call.query, "deleted"):
        subjects = [r["subject"] for r in rows]
    else:
        subjects = [r["subject"] for r in rows if not r["all_deleted"]]
    prefix = call.query.get("subjectPrefix", "")
    return _page(sorted(s for s in subjects if s.startswith(prefix)), call.query)


def list_versions(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    rows = store.rows(subject, include_deleted=True)
    if _flag(call.query, "deleted_only"):
        rows = [r for r in rows if r["deleted"]]
    elif not _flag(call.query, "deleted"):
        rows = [r for r in rows if not r["deleted"]]
    if not rows:
        raise _subject_not_found(subject)
    return _page([r["version"] for r in rows], call.query)


def get_version(store: Store, call: Call) -> Any:
    row = store.version_row(call.params["subject"], call.params["version"], _flag(call.query, "deleted"))
    return _version_body(row)


def get_version_text(store: Store, call: Call) -> Any:
    row = store.version_row(call.params["subject"], call.params["version"], _flag(call.query, "deleted"))
    return Response(row["schema"], media_type=MEDIA_TYPE)


def referenced_by(store: Store, call: Call) -> Any:
    row = store.version_row(call.params["subject"], call.params["version"])
    return _page(store.referenced_by(row["subject"], row["version"]), call.query)


def register(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    cand = store.candidate(call.body())
    live = store.rows(subject)
    for row in reversed(live):
        if row["identity"] == cand.identity:
            return {"id": row["schema_id"]}
    level = store.level(subject)
    olds = [(r["version"], r["schema"], store.parsed(r)) for r in reversed(live)]
    problems = incompatibilities(level, cand.parsed, olds)
    if problems:
        raise RegistryError(
            409,
            409,
            f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
            f"details: [{', '.join(problems)}]",
        )
    schema_id = store.schema_id_for(cand)
    every = store.rows(subject, include_deleted=True)
    version = (every[-1]["version"] + 1) if every else 1
    # Confluent drops soft-deleted versions of the same schema when it is registered again.
    store.db.execute("DELETE FROM versions WHERE subject = ? AND schema_id = ? AND deleted = 1", (subject, schema_id))
    store.db.execute(
        "INSERT INTO versions (subject, version, schema_id, deleted) VALUES (?, ?, ?, 0)",
        (subject, version, schema_id),
    )
    return {"id": schema_id}


def lookup(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    cand = store.candidate(call.body())
    rows = store.rows(subject, _flag(call.query, "deleted"))
    match = next((r for r in reversed(rows) if r["identity"] == cand.identity), None)
    if match is None:
        if not rows:
            raise _subject_not_found(subject)
        raise RegistryError(404, 40403, "Schema not found")
    return _version_body(match)


def delete_subject(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    rows = store.rows(subject, include_deleted=True)
    if not rows:
        raise _subject_not_found(subject)
    live = [r for r in rows if not r["deleted"]]
    for row in live:
        store.check_unreferenced(subject, row["version"])
    if _flag(call.query, "permanent"):
        if live:
            raise RegistryError(
                404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted"
            )
        store.db.execute("DELETE FROM versions WHERE subject = ?", (subject,))
        store.drop_level(subject)
        return [r["version"] for r in rows]
    if not live:
        raise RegistryError(
            404, 40404, f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
        )
    store.db.execute("UPDATE versions SET deleted = 1 WHERE subject = ?", (subject,))
    store.drop_level(subject)  # a soft-deleted subject loses its subject-level config, as in Confluent
    return [r["version"] for r in live]


def delete_version(store: Store, call: Call) -> Any:
    subject, permanent = call.params["subject"], _flag(call.query, "permanent")
    row = store.version_row(subject, call.params["version"], include_deleted=permanent)
    version = row["version"]
    if permanent:
        if not row["deleted"]:
            raise RegistryError(
                404,
                40407,
                f"Subject '{subject}' Version {version} was not deleted first before being permanently deleted",
            )
        store.db.execute("DELETE FROM versions WHERE subject = ? AND version = ?", (subject, version))
        return version
    store.check_unreferenced(subject, version)
    store.db.execute("UPDATE versions SET deleted = 1 WHERE subject = ? AND version = ?", (subject, version))
    return version


def _check_compatibility(store: Store, call: Call, olds: list[sqlite3.Row]) -> Any:
    cand = store.candidate(call.body())
    level = store.level(call.params["subject"])
    problems = incompatibilities(level, cand.parsed, [(r["version"], r["schema"], store.parsed(r)) for r in olds])
    body: dict[str, Any] = {"is_compatible": not problems}
    if _flag(call.query, "verbose"):
        body["messages"] = problems
    return body


def compatibility_version(store: Store, call: Call) -> Any:
    # Against one named version only that version is checked; the level still gives the direction.
    row = store.version_row(call.params["subject"], call.params["version"])
    return _check_compatibility(store, call, [row])


def compatibility_all(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    rows = store.rows(subject)
    return _check_compatibility(store, call, list(reversed(rows)))


def get_global_config(store: Store, call: Call) -> Any:
    return {"compatibilityLevel": store.level(GLOBAL)}


def put_global_config(store: Store, call: Call) -> Any:
    level = _level_from(call.body())
    store.set_level(GLOBAL, level)
    return {"compatibility": level}


def delete_global_config(store: Store, call: Call) -> Any:
    previous = store.level(GLOBAL)
    store.drop_level(GLOBAL)
    return {"compatibilityLevel": previous}


def get_subject_config(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    level = store.subject_level(subject)
    if level is None and _flag(call.query, "defaultToGlobal"):
        level = store.level(GLOBAL)
    if level is None:
        raise RegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
    return {"compatibilityLevel": level}


def put_subject_config(store: Store, call: Call) -> Any:
    level = _level_from(call.body())
    store.set_level(call.params["subject"], level)
    return {"compatibility": level}


def delete_subject_config(store: Store, call: Call) -> Any:
    subject = call.params["subject"]
    previous = store.subject_level(subject)
    if previous is None:
        raise _subject_not_found(subject)
    store.drop_level(subject)
    return {"compatibilityLevel": previous}


def get_global_mode(store: Store, call: Call) -> Any:
    return {"mode": "READWRITE"}


def get_subject_mode(store: Store, call: Call) -> Any:
    if _flag(call.query, "defaultToGlobal"):
        return {"mode": "READWRITE"}
    subject = call.params["subject"]
    raise RegistryError(404, 40409, f"Subject '{subject}' does not have subject-level mode configured")


ROUTES: list[tuple[str, tuple[str, ...], Handler]] = [
    ("GET", (), root),
    ("GET", ("schemas", "types"), schema_types),
    ("GET", ("schemas", "ids", "{id}"), get_schema),
    ("GET", ("schemas", "ids", "{id}", "schema"), get_schema_text),
    ("GET", ("schemas", "ids", "{id}", "versions"), schema_versions),
    ("GET", ("schemas", "ids", "{id}", "subjects"), schema_subjects),
    ("GET", ("subjects",), list_subjects),
    ("POST", ("subjects", "{subject}"), lookup),
    ("DELETE", ("subjects", "{subject}"), delete_subject),
    ("GET", ("subjects", "{subject}", "versions"), list_versions),
    ("POST", ("subjects", "{subject}", "versions"), register),
    ("GET", ("subjects", "{subject}", "versions", "{version}"), get_version),
    ("DELETE", ("subjects", "{subject}", "versions", "{version}"), delete_version),
    ("GET", ("subjects", "{subject}", "versions", "{version}", "schema"), get_version_text),
    ("GET", ("subjects", "{subject}", "versions", "{version}", "referencedby"), referenced_by),
    ("POST", ("compatibility", "subjects", "{subject}", "versions", "{version}"), compatibility_version),
    ("POST", ("compatibility", "subjects", "{subject}", "versions"), compatibility_all),
    ("GET", ("config",), get_global_config),
    ("PUT", ("config",), put_global_config),
    ("DELETE", ("config",), delete_global_config),
    ("GET", ("config", "{subject}"), get_subject_config),
    ("PUT", ("config", "{subject}"), put_subject_config),
    ("DELETE", ("config", "{subject}"), delete_subject_config),
    ("GET", ("mode",), get_global_mode),
    ("GET", ("mode", "{subject}"), get_subject_mode),
]


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def _segments(request: Request) -> list[str]:
    # Split the raw path before decoding, so a subject holding an encoded "/" stays one segment.
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0].strip("/")
    return [unquote(part) for part in path.split("/")] if path else []


def create_app(settings: Settings) -> Starlette:
    """The registry's ASGI app over the SQLite file (or memory) that `settings` names."""
    store = Store(settings)

    async def dispatch(request: Request) -> Response:
        segments = _segments(request)
        found = [(m, h, p) for m, pattern, h in ROUTES if (p := _match(pattern, segments)) is not None]
        if not found:
            return _error(404, 404, "HTTP 404 Not Found")
        method = "GET" if request.method == "HEAD" else request.method  # as Jersey does; uvicorn drops the body
        chosen = next(((h, p) for m, h, p in found if m == method), None)
        if chosen is None:
            return _error(405, 405, "HTTP 405 Method Not Allowed")
        handler, params = chosen
        raw = b""
        if request.method in ("POST", "PUT"):
            media = request.headers.get("content-type", MEDIA_TYPE).split(";", 1)[0].strip().lower()
            if media not in BODY_TYPES:
                return _error(415, 415, "HTTP 415 Unsupported Media Type")
            raw = await request.body()
        try:
            with store.lock, store.db:
                result = handler(store, Call(params, request.query_params, raw))
        except RegistryError as exc:
            return _error(exc.status, exc.code, exc.message)
        except Exception as exc:  # a faithful registry answers JSON even when it fails
            return _error(500, 50001, f"Error in the backend data store: {type(exc).__name__}: {exc}")
        return result if isinstance(result, Response) else _json(result)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", dispatch, methods=methods)])
    app.state.store = store
    return app
