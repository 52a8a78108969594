"""Stand-in of the Dataverse Web API under /api/data/v9.2/: upsert, binds, change tracking, throttling."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.catalogue import Entity, Field, load_catalogue
from standins import csdl, seed
from standins.definitions import EntityDefinitions
from standins.odata import (
    Column,
    ODataError,
    ODataRequest,
    ODataResponse,
    QueryError,
    Stats,
    etag,
    etag_matches,
    execute_batch,
    filter_to_sql,
    json_response,
    orderby_to_sql,
    parse_count,
    parse_key,
    parse_prefer,
    parse_select,
    read_request,
    render_batch,
    split_resource_path,
    to_starlette,
)
from standins.store import (
    SYSTEM_USER,
    DuplicateKeyError,
    FieldError,
    Row,
    Store,
    Tombstone,
    column,
    normalise,
    to_json,
)
from standins.token import DEFAULT_SIGNING_KEY, identity_from_header

log = logging.getLogger(__name__)
BASE_PATH = "/api/data/v9.2/"
MAX_PAGE_SIZE = 5000
# The built-in accounts table, for tests and benchmarks that use a Store directly.
ACCOUNTS = load_catalogue().entity("dataverse", "accounts")
# The bulk operation messages, bound to an entity set's collection (docs: "Use bulk operation messages").
BULK_ACTIONS = {
    "Microsoft.Dynamics.CRM.CreateMultiple": "create",
    "Microsoft.Dynamics.CRM.UpdateMultiple": "update",
    "Microsoft.Dynamics.CRM.UpsertMultiple": "upsert",
}


class Settings(pydantic.BaseModel):
    """Configuration of the Dataverse stand-in."""

    db_path: str = ":memory:"
    seed: bool = False
    signing_key: str = DEFAULT_SIGNING_KEY
    organization_id: str = "3f2b8c1e-9d4a-4e6b-b7c8-2a1d0e9f8c01"
    business_unit_id: str = "7a6e5d4c-3b2a-4c1d-9e8f-0a1b2c3d4e01"
    delta_token_ttl_s: float = 7 * 24 * 3600
    max_requests: int = 6000
    window_s: float = 300
    max_concurrent: int = 52
    # Combined execution time per user and window: each request is charged its own handling time plus
    # `operation_cost_ms` per operation it carries (1 for a plain request, one per `$batch` part and per
    # record of a bulk message), so a bench can make execution time the limit that binds first.
    max_execution_ms: float = 1_200_000
    operation_cost_ms: float = 0.0
    dop_hint: int = 4  # the `x-ms-dop-hint` every answer carries: the degree of parallelism Dataverse suggests
    latency_s: float = 0.0
    catalogue_dir: str | None = None  # the entity catalogue; None: the built-in schemas/entities


INVALID_ARG = "0x80040203"  # Dataverse's InvalidArgument


def error_body(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ODataResponse:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


class DataverseError(ODataError):
    """An error with a Dataverse error code."""


def not_found(entity: Entity, ids: str) -> DataverseError:
    return DataverseError(404, f"{entity.logical_name} With Ids = {ids} Does Not Exist", "0x80040217")


def duplicate() -> DataverseError:
    return DataverseError(412, "A record with matching key values already exists.", "0x80040237")


_SYSTEM_COLUMNS = (
    Column("createdon", '"__created_on"', "datetime"),
    Column("modifiedon", '"__modified_on"', "datetime"),
    Column("_createdby_value", '"__created_by"', "guid"),
    Column("_modifiedby_value", '"__modified_by"', "guid"),
    Column("versionnumber", '"__version"', "int"),
)
_COOKIE = re.compile(r'(\w+)="([^"]*)"')
# ExpiredVersionStamp: what Dataverse answers for a change-tracking version (delta token) it no longer keeps or
# cannot accurately track from (docs: "Query schema definitions", Manage expired cache; the SDK's
# RetrieveEntityChanges fails with the same ErrorCode, -2147204270).
EXPIRED_TOKEN_CODE = "0x80044352"
EXPIRED_TOKEN_MESSAGE = "Version stamp associated with the client has expired. Please perform a full sync."
_TOKEN_TIME = "%m/%d/%Y %H:%M:%S"


def attribute(f: Field) -> str:
    """The name a column has in responses and queries: a lookup reads as `_<name>_value`."""
    return f"_{f.name}_value" if f.type == "lookup" else f.name


class ServiceProtection:
    """Per-user sliding-window limits as Dataverse enforces them: requests, combined execution time and
    concurrent requests, each answered 429 with its documented error code and a `Retry-After`."""

    def __init__(
        self, max_requests: int, window_s: float, max_concurrent: int, max_execution_ms: float = 1_200_000
    ) -> None:
        self.max_requests = max_requests
        self.window_s = window_s
        self.max_concurrent = max_concurrent
        self.max_execution_ms = max_execution_ms
        self.history: dict[str, deque[float]] = defaultdict(deque)
        self.active: dict[str, int] = defaultdict(int)
        self.executed: dict[str, deque[tuple[float, float]]] = defaultdict(deque)  # (finished at, ms charged)
        self.executed_ms: dict[str, float] = defaultdict(float)  # the sum of those within the window

    def admit(self, user: str) -> ODataResponse | None:
        """None when the request may run (release() it afterwards), else the 429 to answer."""
        now = time.monotonic()
        history = self.history[user]
        while history and history[0] <= now - self.window_s:
            history.popleft()
        if len(history) >= self.max_requests:
            retry = max(1, math.ceil(history[0] + self.window_s - now))
            return error_body(
                429,
                "0x80072322",
                f"Number of requests exceeded the limit of {self.max_requests} "
                f"over time window of {self.window_s:g} seconds.",
                {"Retry-After": str(retry)},
            )
        executed = self.executed[user]
        while executed and executed[0][0] <= now - self.window_s:
            self.executed_ms[user] -= executed.popleft()[1]
        if self.executed_ms[user] >= self.max_execution_ms:
            return error_body(
                429,
                "0x80072321",
                f"Combined execution time of incoming requests exceeded limit of {self.max_execution_ms:,.0f} "
                f"milliseconds over time window of {self.window_s:g} seconds. Decrease number of concurrent "
                "requests or reduce the duration of requests and try again later.",
                {"Retry-After": str(self._execution_retry_s(user, now))},
            )
        if self.active[user] >= self.max_concurrent:
            return error_body(
                429,
                "0x80072326",
                f"Number of concurrent requests exceeded the limit of {self.max_concurrent}.",
                {"Retry-After": "1"},
            )
        history.append(now)
        self.active[user] += 1
        return None

    def _execution_retry_s(self, user: str, now: float) -> int:
        """Seconds until enough of the charged time has left the window to be under the limit again."""
        total = self.executed_ms[user]
        for at, ms in self.executed[user]:
            total -= ms
            if total < self.max_execution_ms:
                return max(1, math.ceil(at + self.window_s - now))
        return 1

    def release(self, user: str, execution_ms: float = 0.0) -> None:
        """The request is done; `execution_ms` is charged to the user's combined execution time."""
        self.active[user] -= 1
        if execution_ms > 0:
            self.executed[user].append((time.monotonic(), execution_ms))
            self.executed_ms[user] += execution_ms


class Dataverse:
    """The request handling of the Web API, independent of HTTP (so $batch reuses it)."""

    def __init__(self, settings: Settings, store: Store, stats: Stats) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats
        self.definitions = EntityDefinitions(list(store.entities.values()))
        self.tokens_expired_at = 0.0  # delta tokens issued at or before this time are refused (stand-in switch)
        self.operations = 0  # of the request being handled: its own, its $batch parts', its bulk records'
        # Row versions written by /_standin/raw-write: change tracking does not show them (drift it never saw).
        store.execute(
            "CREATE TABLE IF NOT EXISTS __untracked (entity TEXT NOT NULL, id TEXT NOT NULL COLLATE NOCASE,"
            " version INTEGER NOT NULL)"
        )

    # entry point ---------------------------------------------------------------------------
    def handle(self, req: ODataRequest) -> ODataResponse:
        try:
            return self.route(req)
        except FieldError as exc:
            return self.field_error(req, exc)
        except QueryError as exc:
            return error_body(400, "0x80060888", exc.message)
        except ODataError as exc:
            return error_body(exc.status, exc.code, exc.message, exc.headers)
        except Exception:  # a stand-in bug must still answer in the service's shape
            log.exception("Dataverse stand-in failed on %s %s", req.method, req.path)
            return error_body(500, "0x80040216", "An unexpected error occurred in the Dataverse stand-in.")

    def entity(self, name: str) -> Entity:
        entity = self.store.entity(name)
        if entity is None or entity.name != name:  # entity set names are case-sensitive
            raise DataverseError(404, f"Resource not found for the segment '{name}'.", "0x8006088a")
        return entity

    def route(self, req: ODataRequest) -> ODataResponse:
        path = req.path.strip("/")
        if path != "$batch":  # (a $batch's parts each come through here)
            self.operations += 1
        if path == "":
            sets = [{"name": e.name, "kind": "EntitySet", "url": e.name} for e in self.store.entities.values()]
            return json_response(200, {"@odata.context": f"{req.service_root}$metadata", "value": sets})
        if path in ("WhoAmI", "WhoAmI()"):
            if req.method != "GET":
                raise DataverseError(405, "The WhoAmI function is called with GET.", "0x80060888")
            return json_response(
                200,
                {
                    "@odata.context": f"{req.service_root}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": self.settings.business_unit_id,
                    "UserId": req.caller.object_id,
                    "OrganizationId": self.settings.organization_id,
                },
            )
        if path == "$batch":
            if req.method != "POST":
                raise DataverseError(405, "A $batch request is a POST.", "0x80060888")
            return self.batch(req)
        if path == "$metadata":
            if req.method != "GET":
                raise DataverseError(405, "$metadata is read with GET.", "0x80060888")
            return csdl.xml_response(csdl.dataverse_metadata(list(self.store.entities.values())))
        name, key_text, rest = split_resource_path(path)
        if name == "EntityDefinitions":
            return self.definitions.handle(req, key_text, rest)
        entity = self.entity(name)
        if rest and key_text is None and rest in BULK_ACTIONS:
            if req.method != "POST":
                raise DataverseError(405, f"The action '{rest}' is invoked with POST.", "0x80060888")
            return self.bulk(req, entity, BULK_ACTIONS[rest])
        if rest:
            raise DataverseError(404, f"Resource not found for the segment '{rest}'.", "0x8006088a")
        if req.method in Stats.WRITES:
            self.stats.count_write(req.caller.client_id, req.method)
        if key_text is None:
            if req.method == "GET":
                return self.read_set(req, entity)
            if req.method == "POST":
                return self.create(req, entity)
        else:
            key = self.key_values(entity, key_text)
            if req.method == "GET":
                return self.read_one(req, entity, key)
            if req.method in ("PATCH", "PUT"):
                return self.upsert(req, entity, key)
            if req.method == "DELETE":
                return self.delete(req, entity, key)
        raise DataverseError(405, f"The HTTP method '{req.method}' is not allowed on this resource.", "0x80060888")

    def field_error(self, req: ODataRequest, exc: FieldError) -> ODataResponse:
        name = req.path.strip("/").split("(")[0].split("/")[0]
        entity = self.store.entity(name)
        logical = entity.logical_name if entity else name
        if exc.kind == "unknown":
            return error_body(
                400,
                "0x80048d19",
                f"Invalid property '{exc.field}' was found in entity 'Microsoft.Dynamics.CRM.{logical}'.",
            )
        if exc.kind == "type":
            return error_body(
                400,
                "0x80048d19",
                f"Cannot convert the literal '{exc.value}' to the expected type "
                f"'{exc.detail}' of property '{exc.field}'.",
            )
        if exc.kind == "value":
            f = entity.field(exc.field) if entity else None
            accepted = ",".join(str(v) for v in f.values) if f else ""
            return error_body(
                400,
                "0x80044331",
                f"A validation error occurred. The value {exc.value} of "
                f"'{exc.field}' on record of type '{logical}' is outside the valid range. "
                f"Accepted Values: {accepted}",
            )
        if exc.kind == "too_long":
            return error_body(
                400,
                "0x80044331",
                f"A validation error occurred. The length of the '{exc.field}' "
                f"attribute of the '{logical}' entity exceeded the maximum allowed length of "
                f"'{exc.detail}'.",
            )
        return error_body(
            400,
            "0x80044331",
            f"A validation error occurred. A value for '{exc.field}' on record of type '{logical}' is required.",
        )

    # helpers -------------------------------------------------------------------------------
    def columns(self, entity: Entity) -> dict[str, Column]:
        out = {attribute(f): Column(attribute(f), column(entity, f.name), f.type, f.values) for f in entity.fields}
        out.update({c.name: c for c in _SYSTEM_COLUMNS})
        return out

    def resolver(self, entity: Entity) -> Any:
        columns = self.columns(entity)

        def resolve(name: str) -> Column:
            if name not in columns:
                raise QueryError(
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity.logical_name}'."
                )
            return columns[name]

        return resolve

    def key_values(self, entity: Entity, key_text: str) -> dict[str, Any]:
        """The stored values of a key segment: the primary key or one alternate key."""
        parsed = parse_key(key_text)
        if None in parsed:
            lit = parsed[None]
            if lit.kind != "guid":
                raise QueryError(f"The key value '{lit.value}' is not a valid Guid for '{entity.key[0]}'.")
            return {entity.key[0]: lit.value}
        values: dict[str, Any] = {}
        for name, lit in parsed.items():
            f = entity.field(name or "")
            if f is None or f.name != name:
                raise QueryError(f"Invalid key: '{name}' is not an attribute of '{entity.logical_name}'.")
            try:
                values[f.name] = normalise(f, lit.value)
            except FieldError:
                raise QueryError(f"The key value {lit.value!r} is not valid for '{f.name}'.") from None
        if not any(set(values) == set(k) for k in (entity.key, *entity.alternate_keys)):
            raise QueryError(
                f"The key '{key_text}' matches neither the primary key nor an alternate key of '{entity.logical_name}'."
            )
        return values

    def describe_key(self, entity: Entity, key: dict[str, Any]) -> str:
        guid_key = entity.guid_key
        if guid_key is not None and list(key) == [guid_key]:
            return str(key[guid_key])
        return ",".join(f"{k}:{v}" for k, v in key.items())

    def lookup_row(self, entity: Entity, key: dict[str, Any]) -> Row | None:
        if list(key) == [entity.guid_key]:
            return self.store.get_by_id(entity, key[entity.key[0]])
        return self.store.get(entity, key)

    def find(self, entity: Entity, key: dict[str, Any]) -> Row:
        row = self.lookup_row(entity, key)
        if row is None:
            raise not_found(entity, self.describe_key(entity, key))
        return row

    def resolve_bind(self, req: ODataRequest, entity: Entity, f: Field, value: Any) -> str | None:
        """The row id a `<navprop>@odata.bind` names (a pk or alternate-key URL, relative or absolute)."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise FieldError("type", f"{f.name}@odata.bind", value, "an entity URL")
        path = unquote(urlsplit(value).path)
        if path.startswith(BASE_PATH):
            path = path[len(BASE_PATH) :]
        name, key_text, rest = split_resource_path(path)
        target = self.store.entity(name)
        if target is None or key_text is None or rest or target.name != f.target:
            raise DataverseError(
                400, f"The URL '{value}' in '{f.name}@odata.bind' does not name a row of '{f.target}'.", "0x80048d19"
            )
        key = self.key_values(target, key_text)
        return self.find(target, key).id

    def read_body(self, req: ODataRequest, entity: Entity) -> dict[str, Any]:
        return self.read_values(req, entity, req.json())

    def read_values(self, req: ODataRequest, entity: Entity, data: dict[str, Any]) -> dict[str, Any]:
        """The stored values of a record's JSON: its columns and `<navprop>@odata.bind` lookups."""
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name.endswith("@odata.bind"):
                f = entity.field(name[: -len("@odata.bind")])
                if f is None or f.type != "lookup" or f.name != name[: -len("@odata.bind")]:
                    raise FieldError("unknown", name)
                values[f.name] = self.resolve_bind(req, entity, f, value)
                continue
            if name.startswith("@") or "@" in name:
                continue  # annotations (@odata.type, ...@OData.Community.Display.V1.FormattedValue) are not data
            f = entity.field(name)
            if f is None or f.name != name or f.type == "lookup":
                raise FieldError("unknown", name)
            values[f.name] = normalise(f, value)
        return values

    def entity_url(self, req: ODataRequest, entity: Entity, row: Row) -> str:
        return f"{req.service_root}{entity.name}({row.id})"

    def render(self, entity: Entity, row: Row, select: list[str] | None, annotate: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": etag(row.version)}
        for f in entity.fields:
            name = attribute(f)
            if select is not None and name not in select and f.name != entity.guid_key:
                continue
            out[name] = to_json(f, row.values[f.name])
            if annotate and f.type == "lookup" and out[name] is not None:
                target = self.store.entity(f.target or "")
                out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = target.logical_name if target else f.target
        system = {
            "createdon": row.created_on,
            "modifiedon": row.modified_on,
            "_createdby_value": row.created_by,
            "_modifiedby_value": row.modified_by,
            "versionnumber": row.version,
        }
        for name, value in system.items():
            if select is None or name in select:
                out[name] = value
        return out

    def select_of(self, req: ODataRequest, entity: Entity) -> list[str] | None:
        text = req.query.get("$select", "").strip()
        if not text:
            return None
        resolve = self.resolver(entity)
        return [resolve(n).name for n in parse_select(text)]

    def context(self, req: ODataRequest, entity: Entity, select: list[str] | None, suffix: str = "") -> str:
        sel = f"({','.join(select)})" if select else ""
        return f"{req.service_root}$metadata#{entity.name}{sel}{suffix}"

    def annotate(self, req: ODataRequest) -> bool:
        wanted = parse_prefer(req.headers).get("odata.include-annotations", "")
        return wanted == "*" or "lookuplogicalname" in wanted

    def preconditions(self, req: ODataRequest, row: Row | None) -> None:
        if_match, if_none = req.headers.get("if-match"), req.headers.get("if-none-match")
        if if_match is not None:
            if row is None:
                raise DataverseError(
                    404, "The record was not found: If-Match requires an existing record.", "0x80040217"
                )
            if not etag_matches(if_match, row.version):
                raise DataverseError(
                    412,
                    "The version of the existing record doesn't match the RowVersion property provided.",
                    "0x80060882",
                )
        if if_none is not None and row is not None and etag_matches(if_none, row.version):
            raise duplicate()

    def page_size(self, req: ODataRequest) -> tuple[int, str | None]:
        wanted = parse_prefer(req.headers).get("odata.maxpagesize")
        if wanted is None:
            return MAX_PAGE_SIZE, None
        if not wanted.isdigit() or int(wanted) < 1:
            raise QueryError(f"Invalid odata.maxpagesize preference '{wanted}'.")
        size = min(int(wanted), MAX_PAGE_SIZE)
        return size, f"odata.maxpagesize={size}"

    @staticmethod
    def cookie(**values: Any) -> str:
        attrs = " ".join(f'{k}="{v}"' for k, v in values.items())
        return f"<cookie {attrs} />"

    @staticmethod
    def read_cookie(text: str) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in _COOKIE.findall(text) if k != "istracking"}
        except ValueError:
            raise QueryError(f"The $skiptoken '{text}' is not valid.") from None

    # reads ---------------------------------------------------------------------------------
    def read_set(self, req: ODataRequest, entity: Entity) -> ODataResponse:
        for name in req.query:
            if name == "$skip":
                raise QueryError("The query parameter $skip is not supported.")
            if name == "$expand":
                raise QueryError("$expand is not supported by this stand-in; read related rows by their key.")
            if name.startswith("$") and name not in (
                "$select",
                "$filter",
                "$orderby",
                "$top",
                "$count",
                "$skiptoken",
                "$deltatoken",
            ):
                raise QueryError(f"The query parameter {name} is not supported.")
        prefer = parse_prefer(req.headers)
        if "odata.track-changes" in prefer or "$deltatoken" in req.query:
            return self.track_changes(req, entity)
        resolve = self.resolver(entity)
        select = self.select_of(req, entity)
        where, params = "", list[Any]()
        if req.query.get("$filter", "").strip():
            where, params = filter_to_sql(req.query["$filter"], resolve)
        order = orderby_to_sql(req.query["$orderby"], resolve) if req.query.get("$orderby") else ""
        page, applied = self.page_size(req)
        top = parse_count("$top", req.query["$top"]) if "$top" in req.query else None
        cookie = self.read_cookie(req.query.get("$skiptoken", ""))
        page_no = cookie.get("pagenumber", 1)
        clauses, all_params = [where] if where else [], list(params)
        offset = 0
        if order:
            offset = cookie.get("offset", 0)
        elif "lastrowid" in cookie:  # keyset paging by insertion order stays stable while rows are added
            clauses.append('"__rowid" > ?')
            all_params.append(cookie["lastrowid"])
        limit = page if top is None else min(top, page)
        rows = self.store.select(entity, " AND ".join(clauses), all_params, order, limit=limit + 1, offset=offset)
        body: dict[str, Any] = {"@odata.context": self.context(req, entity, select)}
        if req.query.get("$count", "").lower() == "true":
            body["@odata.count"] = self.store.count(entity, where, params)
        annotate = self.annotate(req)
        body["value"] = [self.render(entity, r, select, annotate) for r in rows[:limit]]
        if len(rows) > limit and top is None:  # $top turns paging off
            token = self.cookie(
                pagenumber=page_no + 1, lastrowid=rows[limit - 1].rowid, offset=offset + limit, istracking="False"
            )
            body["@odata.nextLink"] = req.url(skiptoken=token)
        return json_response(200, body, {"Preference-Applied": applied} if applied else None)

    def read_one(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        for name in req.query:
            if name.startswith("$") and name != "$select":
                raise QueryError(f"The query parameter {name} is not supported on a single record.")
        select = self.select_of(req, entity)
        row = self.find(entity, key)
        if_none = req.headers.get("if-none-match")
        if if_none and etag_matches(if_none, row.version):
            return ODataResponse(304, {"ETag": etag(row.version)})
        body = {
            "@odata.context": self.context(req, entity, select, "/$entity"),
            **self.render(entity, row, select, self.annotate(req)),
        }
        return json_response(200, body, {"ETag": etag(row.version)})

    def delta_token(self, version: int, issued: float) -> str:
        return f"{version}!{datetime.fromtimestamp(issued, UTC).strftime(_TOKEN_TIME)}"

    def read_delta_token(self, token: str) -> tuple[int, float]:
        version, _, stamp = token.partition("!")
        try:
            issued = datetime.strptime(stamp, _TOKEN_TIME).replace(tzinfo=UTC).timestamp()
            return int(version), issued
        except ValueError:
            raise QueryError(f"The $deltatoken '{token}' is not a valid change tracking token.") from None

    def track_changes(self, req: ODataRequest, entity: Entity) -> ODataResponse:
        refused = [n for n in ("$filter", "$orderby", "$expand", "$top") if n in req.query]
        if refused:
            raise QueryError(
                f"The query option(s) {', '.join(refused)} cannot be used together with change "
                "tracking (Prefer: odata.track-changes)."
            )
        select = self.select_of(req, entity)
        page, applied = self.page_size(req)
        cookie = self.read_cookie(req.query.get("$skiptoken", ""))
        applied_list = ["odata.track-changes", *([applied] if applied else [])]
        headers = {"Preference-Applied": ",".join(applied_list)}
        body: dict[str, Any] = {}
        if "$deltatoken" in req.query:
            since, issued = self.read_delta_token(req.query["$deltatoken"])
            if time.time() - issued > self.settings.delta_token_ttl_s or issued <= self.tokens_expired_at:
                raise DataverseError(400, EXPIRED_TOKEN_MESSAGE, EXPIRED_TOKEN_CODE)
            upto = cookie.get("snapshot", self.store.current_version())
            after = cookie.get("lastversion", since)
            changes = self.store.changes(entity, after, upto, page + 1)
            body["@odata.context"] = self.context(req, entity, select, "/$delta")
            deleted_ctx = f"{req.service_root}$metadata#{entity.name}/$deletedEntity"
            hidden = self.untracked(entity, after, upto)
            body["value"] = [
                {"@odata.context": deleted_ctx, "id": c.id, "reason": "deleted"}
                if isinstance(c, Tombstone)
                else self.render(entity, c, select)
                for c in changes[:page]
                if (c.id.lower(), c.version) not in hidden
            ]
            if len(changes) > page:
                token = self.cookie(
                    pagenumber=cookie.get("pagenumber", 1) + 1,
                    lastversion=changes[page - 1].version,
                    snapshot=upto,
                    istracking="True",
                )
                body["@odata.nextLink"] = req.url(skiptoken=token)
            else:
                body["@odata.deltaLink"] = req.url(deltatoken=self.delta_token(upto, time.time()), skiptoken=None)
            return json_response(200, body, headers)
        snapshot = cookie.get("snapshot", self.store.current_version())
        issued = float(cookie.get("issued", int(time.time())))
        clauses, params = [], []
        if "lastrowid" in cookie:
            clauses.append('"__rowid" > ?')
            params.append(cookie["lastrowid"])
        rows = self.store.select(entity, " AND ".join(clauses), params, limit=page + 1)
        body["@odata.context"] = self.context(req, entity, select)
        body["value"] = [self.render(entity, r, select) for r in rows[:page]]
        if len(rows) > page:
            token = self.cookie(
                pagenumber=cookie.get("pagenumber", 1) + 1,
                lastrowid=rows[page - 1].rowid,
                snapshot=snapshot,
                issued=int(issued),
                istracking="True",
            )
            body["@odata.nextLink"] = req.url(skiptoken=token)
        else:
            body["@odata.deltaLink"] = req.url(deltatoken=self.delta_token(snapshot, issued), skiptoken=None)
        return json_response(200, body, headers)

    # stand-in only: delta tokens expired on demand, drift change tracking never shows -------------
    def expire_delta_tokens(self) -> dict[str, Any]:
        """Refuse every delta token issued until now, as Dataverse does when it cannot track from them any more."""
        self.tokens_expired_at = time.time()
        return {"expired_before": datetime.fromtimestamp(self.tokens_expired_at, UTC).isoformat()}

    def raw_write(self, body: dict[str, Any]) -> dict[str, Any]:
        """Drift written straight into the database: `op` update (the default: `values` of the row `id`; the
        version moves, modifiedon and modifiedby stay), insert (`values`; lookups as GUIDs) or delete (`id`).
        Change tracking never shows the write."""
        entity = self.entity(str(body.get("entity_set", "")))
        op = body.get("op", "update")
        values = {}
        for name, value in dict(body.get("values") or {}).items():
            f = entity.field(name)
            if f is None or f.name != name:
                raise FieldError("unknown", name)
            values[f.name] = normalise(f, value)
        if op == "insert":
            row = self.store.insert(entity, values, SYSTEM_USER)
            return self._untrack(entity, row.id, row.version)
        row = self.find(entity, {entity.key[0]: str(body.get("id", "")).lower()})
        if op == "delete":
            return self._untrack(entity, row.id, self.store.delete(entity, row, row.modified_by))
        if op != "update":
            raise QueryError(f"op {op!r}: update, insert or delete")
        with self.store.savepoint():
            after = self.store.update(entity, row, values, row.modified_by)
            self.store.execute(
                f'UPDATE "{entity.name}" SET "__modified_on" = ? WHERE "__rowid" = ?', [row.modified_on, row.rowid]
            )
        return self._untrack(entity, row.id, after.version)

    def _untrack(self, entity: Entity, row_id: str, version: int) -> dict[str, Any]:
        self.store.execute("INSERT INTO __untracked VALUES (?, ?, ?)", [entity.name, row_id, version])
        return {"id": row_id, "version": version}

    def untracked(self, entity: Entity, after: int, upto: int) -> set[tuple[str, int]]:
        """(row id, version) of the raw writes in a delta's version range."""
        found = self.store.execute(
            "SELECT id, version FROM __untracked WHERE entity = ? AND version > ? AND version <= ?",
            [entity.name, after, upto],
        )
        return {(str(r["id"]).lower(), int(r["version"])) for r in found}

    # writes --------------------------------------------------------------------------------
    def written(self, req: ODataRequest, entity: Entity, row: Row, created: bool) -> ODataResponse:
        url = self.entity_url(req, entity, row)
        headers = {"OData-EntityId": url, "OData-Version": "4.0", "ETag": etag(row.version)}
        if parse_prefer(req.headers).get("return") == "representation":
            select = self.select_of(req, entity)
            body = {
                "@odata.context": self.context(req, entity, select, "/$entity"),
                **self.render(entity, row, select, self.annotate(req)),
            }
            return json_response(
                201 if created else 200, body, {**headers, "Preference-Applied": "return=representation"}
            )
        return ODataResponse(204, headers)

    def insert(self, req: ODataRequest, entity: Entity, values: dict[str, Any]) -> Row:
        pk = entity.guid_key
        if pk and values.get(pk) and self.store.get_by_id(entity, values[pk]) is not None:
            raise duplicate()
        try:
            return self.store.insert(entity, values, req.caller.object_id)
        except DuplicateKeyError:
            raise duplicate() from None

    def create(self, req: ODataRequest, entity: Entity) -> ODataResponse:
        values = self.read_body(req, entity)
        row = self.insert(req, entity, values)
        return self.written(req, entity, row, created=True)

    def upsert(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        row = self.lookup_row(entity, key)
        self.preconditions(req, row)
        values = self.read_body(req, entity)
        if row is None:
            self.check_key_lookups(entity, key)
            created = self.insert(req, entity, {**values, **key})  # the key in the URL wins over the body
            return self.written(req, entity, created, created=True)
        values.pop(entity.guid_key or "", None)
        try:
            after = self.store.update(entity, row, values, req.caller.object_id)
        except DuplicateKeyError:
            raise duplicate() from None
        return self.written(req, entity, after, created=False)

    def delete(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        row = self.lookup_row(entity, key)
        self.preconditions(req, row)
        row = self.find(entity, key)
        self.store.delete(entity, row, req.caller.object_id)
        return ODataResponse(204, {"OData-Version": "4.0"})

    # bulk operation messages -----------------------------------------------------------------
    def bulk(self, req: ODataRequest, entity: Entity, action: str) -> ODataResponse:
        """CreateMultiple / UpdateMultiple / UpsertMultiple: the records of `Targets` in one transaction;
        the first failing record fails the call and nothing of it is kept (standard tables)."""
        targets = req.json().get("Targets")
        if not isinstance(targets, list) or not targets:
            raise DataverseError(400, "The parameter 'Targets' must be a non-empty collection of records.", INVALID_ARG)
        method = "POST" if action == "create" else "PATCH"
        self.operations += len(targets) - 1  # (the request itself counted one)
        for _ in targets:  # one request, a write per record (as inside a $batch)
            self.stats.count_write(req.caller.client_id, method)
        odata_type = f"Microsoft.Dynamics.CRM.{entity.logical_name}"
        ids: list[str] = []
        seen: set[str] = set()
        with self.store.savepoint():
            for i, target in enumerate(targets):
                if not isinstance(target, dict):
                    raise DataverseError(400, f"Targets[{i}] is not a record.", INVALID_ARG)
                if target.get("@odata.type") != odata_type:
                    raise DataverseError(
                        400,
                        f'Targets[{i}]: every record needs the annotation "@odata.type": "{odata_type}" '
                        f"(got {target.get('@odata.type')!r}).",
                        INVALID_ARG,
                    )
                row = self.bulk_one(req, entity, action, target)
                if action != "create" and row.id in seen:
                    raise DataverseError(
                        400, f"Targets[{i}]: the record {row.id} appears more than once in Targets.", INVALID_ARG
                    )
                seen.add(row.id)
                ids.append(row.id)
        if action == "create":
            context = f"{req.service_root}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
            return json_response(200, {"@odata.context": context, "Ids": ids})
        return ODataResponse(204, {"OData-Version": "4.0"})

    def bulk_one(self, req: ODataRequest, entity: Entity, action: str, target: dict[str, Any]) -> Row:
        """One record of a bulk message: named by `@odata.id` (a key URL) or by its primary key in the body."""
        values = self.read_values(req, entity, target)
        key: dict[str, Any] = {}
        ref = target.get("@odata.id")
        if ref is not None:
            if action == "create":
                raise DataverseError(400, "CreateMultiple records are not named by '@odata.id'.", INVALID_ARG)
            key = self.reference_key(entity, ref)
        elif entity.guid_key and values.get(entity.guid_key):
            key = {entity.guid_key: values[entity.guid_key]}
        if action == "create":
            return self.insert(req, entity, values)
        if not key:
            raise DataverseError(
                400,
                f"A record of UpdateMultiple or UpsertMultiple names its row by '@odata.id' or '{entity.guid_key}'.",
                INVALID_ARG,
            )
        row = self.lookup_row(entity, key)
        if row is None:
            if action == "update":
                raise not_found(entity, self.describe_key(entity, key))
            self.check_key_lookups(entity, key)
            return self.insert(req, entity, {**values, **key})
        values.pop(entity.guid_key or "", None)
        try:
            return self.store.update(entity, row, values, req.caller.object_id)
        except DuplicateKeyError:
            raise duplicate() from None

    def reference_key(self, entity: Entity, ref: Any) -> dict[str, Any]:
        """The key of an `@odata.id` (`accounts(<guid>)` or an alternate-key URL, relative or absolute)."""
        if not isinstance(ref, str):
            raise DataverseError(400, f"'@odata.id' must be a URL, not {ref!r}.", INVALID_ARG)
        path = unquote(urlsplit(ref).path)
        if path.startswith(BASE_PATH):
            path = path[len(BASE_PATH) :]
        name, key_text, rest = split_resource_path(path)
        if name != entity.name or key_text is None or rest:
            raise DataverseError(400, f"'@odata.id' {ref!r} does not name a row of '{entity.name}'.", INVALID_ARG)
        return self.key_values(entity, key_text)

    def check_key_lookups(self, entity: Entity, key: dict[str, Any]) -> None:
        """A lookup in an alternate key must name an existing row before a row is created with it."""
        for name, value in key.items():
            f = entity.field(name)
            target = self.store.entity(f.target or "") if f is not None and f.type == "lookup" else None
            if target is not None and value is not None:
                self.find(target, {target.key[0]: value})

    # $batch --------------------------------------------------------------------------------
    def batch(self, req: ODataRequest) -> ODataResponse:
        continue_on_error = "odata.continue-on-error" in parse_prefer(req.headers)

        def error(status: int, message: str) -> ODataResponse:
            return error_body(status, "0x8006088a" if status == 404 else "0x80060888", message)

        responses, failed = execute_batch(
            req, BASE_PATH, self.handle, error, self.store.savepoint, stop_on_error=not continue_on_error
        )
        content_type, body = render_batch(responses)
        headers = {"Content-Type": content_type, "OData-Version": "4.0"}
        if continue_on_error:
            headers["Preference-Applied"] = "odata.continue-on-error"
        return ODataResponse(400 if failed and not continue_on_error else 200, headers, body)


def create_app(settings: Settings) -> Starlette:
    """The Dataverse stand-in as an ASGI app."""
    catalogue = load_catalogue(Path(settings.catalogue_dir) if settings.catalogue_dir else None)
    store = Store(settings.db_path, catalogue.entities("dataverse"))
    if settings.seed:
        seed.seed_dataverse(store)
    stats = Stats()
    service = Dataverse(settings, store, stats)
    protection = ServiceProtection(
        settings.max_requests, settings.window_s, settings.max_concurrent, settings.max_execution_ms
    )
    dop_hint = {"x-ms-dop-hint": str(settings.dop_hint)}

    async def api(request: Request) -> Response:
        stats.requests += 1
        identity = identity_from_header(request.headers.get("authorization"), settings.signing_key)
        if identity is None:
            return to_starlette(
                error_body(
                    401,
                    "",
                    "Authentication failed: a valid bearer token is required.",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            )
        stats.by_caller[identity.client_id] += 1
        denied = protection.admit(identity.object_id)
        if denied is not None:
            stats.throttled[identity.client_id] += 1
            denied.headers.update(dop_hint)
            return to_starlette(denied)
        execution_ms = 0.0
        try:
            if settings.latency_s:
                await asyncio.sleep(settings.latency_s)
            req = await read_request(request, BASE_PATH, identity)
            started = time.perf_counter()
            service.operations = 0  # (handle() runs to its end without awaiting: no other request counts here)
            answer = service.handle(req)
            execution_ms = (time.perf_counter() - started) * 1000 + settings.operation_cost_ms * service.operations
            answer.headers.update(dop_hint)
            return to_starlette(answer)
        finally:
            protection.release(identity.object_id, execution_ms)
            stats.executed_ms[identity.client_id] += execution_ms

    async def stats_endpoint(request: Request) -> Response:
        return JSONResponse(stats.as_json())

    async def expire_endpoint(request: Request) -> Response:
        return JSONResponse(service.expire_delta_tokens())

    async def raw_write_endpoint(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise QueryError("a JSON object")
            return JSONResponse(service.raw_write(body))
        except FieldError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except DuplicateKeyError as exc:
            return JSONResponse({"error": f"duplicate key: {exc}"}, status_code=412)
        except ODataError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except ValueError as exc:
            return JSONResponse({"error": f"not JSON: {exc}"}, status_code=400)

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app = Starlette(
        routes=[
            Route("/_standin/stats", stats_endpoint, methods=["GET"]),
            Route("/_standin/expire-delta-tokens", expire_endpoint, methods=["POST"]),
            Route("/_standin/raw-write", raw_write_endpoint, methods=["POST"]),
            Route("/api/data/v9.2", api, methods=methods),
            Route("/api/data/v9.2/{path:path}", api, methods=methods),
        ]
    )
    app.state.store = store
    app.state.service = service
    return app
