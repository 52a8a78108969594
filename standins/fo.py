"""Stand-in of Dynamics 365 Finance & Operations: OData under /data/ and data events to webhook endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.catalogue import Entity, Field, load_catalogue
from standins import csdl, seed
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
    format_key,
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
from standins.store import SYSTEM_USER, DuplicateKeyError, FieldError, Row, Store, column, normalise, to_json
from standins.token import DEFAULT_SIGNING_KEY, identity_from_header

log = logging.getLogger(__name__)
BASE_PATH = "/data/"
WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
ODATA_EXCEPTION = "Microsoft.OData.ODataException"
XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"

COMPANY_SET = "LegalEntities"  # the legal entities a company field refers to

# The root table's system fields, exposed on every entity here. Standard F&O entities often do not
# expose them; an entity extension adds them (the maps name them as fo.modified_on / fo.modified_by).
SYSTEM_FIELDS = {
    "ModifiedDateTime": Column("ModifiedDateTime", '"__modified_on"', "datetime"),
    "ModifiedBy": Column("ModifiedBy", '"__modified_by"', "string"),
}


class Settings(pydantic.BaseModel):
    """Configuration of the F&O stand-in."""

    db_path: str = ":memory:"
    seed: bool = False
    default_company: str = "usmf"
    page_size: int = 10000
    event_endpoints: list[str] = []
    event_timeout_s: float = 5.0
    # Events in flight per endpoint (F&O's business-events batch runs several tasks); one record's events
    # always go one after the other, in order. 1: one event at a time.
    event_concurrency: int = pydantic.Field(default=1, ge=1, le=64)
    signing_key: str = DEFAULT_SIGNING_KEY
    organization_id: str = "5c1a7d7e-6a53-4a7c-8d6f-3f0e0c6b1a01"
    organization_name: str = "contoso-fo"
    latency_s: float = 0.0
    catalogue_dir: str | None = None  # the entity catalogue; None: the built-in schemas/entities


# -- data events ----------------------------------------------------------------------------------
def dotnet_date(ms: int) -> str:
    """A .NET JSON date; `event_json` writes its slashes escaped (`\\/Date(ms)\\/`)."""
    return f"/Date({ms})/"


def event_json(payload: dict[str, Any]) -> str:
    """The payload as .NET's DataContractJsonSerializer writes it: dates as `"\\/Date(ms)\\/"`."""
    return json.dumps(payload, ensure_ascii=False).replace('"/Date(', '"\\/Date(').replace(')/"', ')\\/"')


def _attributes(entity: Entity, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for f in entity.fields:
        value = values.get(f.name)
        if f.type == "datetime":
            if value is None:
                continue  # F&O leaves NULL dates out of data events
            value = dotnet_date(int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000))
        else:
            value = to_json(f, value)
        out.append({"key": f"mserp_{f.name.lower()}", "value": value})
    return out


def _entity_image(entity: Entity, row: Row) -> dict[str, Any]:
    return {
        "__type": f"Entity:{XRM}",
        "LogicalName": entity.event_name,
        "Id": row.id,
        "RowVersion": str(row.version),
        "Attributes": _attributes(entity, row.values),
        "EntityState": None,
        "KeyAttributes": [],
        "FormattedValues": [],
        "RelatedEntities": [],
    }


def build_event(
    message: str,
    entity: Entity,
    row: Row,
    before: Row | None,
    user_id: str,
    organization_id: str,
    organization_name: str,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A data event as F&O sends it: the JSON of a Dataverse RemoteExecutionContext."""
    if message == "Delete":
        target: dict[str, Any] = {
            "__type": f"EntityReference:{XRM}",
            "Id": row.id,
            "KeyAttributes": [{"key": f"mserp_{n.lower()}", "value": row.values[n]} for n in entity.key],
            "LogicalName": entity.event_name,
            "Name": None,
        }
    else:
        target = _entity_image(entity, row)
    pre = [{"key": "PreImage", "value": _entity_image(entity, before)}] if before is not None else []
    return {
        "BusinessUnitId": organization_id,
        "CorrelationId": str(uuid.uuid4()),
        "Depth": 1,
        "InitiatingUserAzureActiveDirectoryObjectId": user_id,
        "InitiatingUserId": user_id,
        "InputParameters": [{"key": "Target", "value": target}],
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": message,
        "Mode": 1,
        "OperationCreatedOn": dotnet_date(int(time.time() * 1000) if now_ms is None else now_ms),
        "OperationId": str(uuid.uuid4()),
        "OrganizationId": organization_id,
        "OrganizationName": organization_name,
        "OutputParameters": [],
        "OwningExtension": None,
        "ParentContext": None,
        "PostEntityImages": [],
        "PreEntityImages": pre,
        "PrimaryEntityId": row.id,
        "PrimaryEntityName": entity.event_name,
        "RequestId": str(uuid.uuid4()),
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserAzureActiveDirectoryObjectId": user_id,
        "UserId": user_id,
    }


class Outbox:
    """Data events in SQLite (so they survive a restart), with a delivery cursor per endpoint."""

    def __init__(self, store: Store, endpoints: list[str]) -> None:
        self.store = store
        store.execute(
            "CREATE TABLE IF NOT EXISTS fo_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL,"
            " message TEXT, entity TEXT, payload TEXT, record TEXT)"
        )
        if "record" not in {r["name"] for r in store.execute("PRAGMA table_info(fo_outbox)")}:
            store.execute("ALTER TABLE fo_outbox ADD COLUMN record TEXT")  # (a store from before)
        store.execute(
            "CREATE TABLE IF NOT EXISTS fo_delivery (endpoint TEXT PRIMARY KEY, delivered_seq INTEGER,"
            " attempts INTEGER DEFAULT 0, last_error TEXT)"
        )
        head = self.store.execute("SELECT COALESCE(MAX(seq), 0) FROM fo_outbox")[0][0]
        for url in endpoints:  # a newly configured endpoint gets events from now on
            store.execute("INSERT OR IGNORE INTO fo_delivery (endpoint, delivered_seq) VALUES (?, ?)", [url, head])
        self.endpoints = list(endpoints)

    def append(self, payload: dict[str, Any], record: str = "") -> None:
        """`record` names the row the event is of: its events are delivered in order."""
        self.store.execute(
            "INSERT INTO fo_outbox (created_at, message, entity, payload, record) VALUES (?, ?, ?, ?, ?)",
            [time.time(), payload["MessageName"], payload["PrimaryEntityName"], event_json(payload), record],
        )

    def window(self, endpoint: str, limit: int) -> list[tuple[int, str, str]]:
        """The next undelivered events of an endpoint: (seq, record, payload), in order."""
        rows = self.store.execute(
            "SELECT seq, record, payload FROM fo_outbox WHERE seq > (SELECT delivered_seq FROM fo_delivery WHERE"
            " endpoint = ?) ORDER BY seq LIMIT ?",
            [endpoint, limit],
        )
        return [(r[0], r[1] or "", r[2]) for r in rows]

    def head(self, endpoint: str) -> tuple[int, str] | None:
        rows = self.store.execute(
            "SELECT seq, payload FROM fo_outbox WHERE seq > (SELECT delivered_seq FROM fo_delivery WHERE"
            " endpoint = ?) ORDER BY seq LIMIT 1",
            [endpoint],
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def delivered(self, endpoint: str, seq: int) -> None:
        self.store.execute(
            "UPDATE fo_delivery SET delivered_seq = ?, attempts = 0, last_error = NULL WHERE endpoint = ?",
            [seq, endpoint],
        )

    def failed(self, endpoint: str, error: str) -> None:
        self.store.execute(
            "UPDATE fo_delivery SET attempts = attempts + 1, last_error = ? WHERE endpoint = ?", [error, endpoint]
        )

    def listing(self, after: int, limit: int) -> dict[str, Any]:
        cursors = {r["endpoint"]: dict(r) for r in self.store.execute("SELECT * FROM fo_delivery")}
        cursors = {k: v for k, v in cursors.items() if k in self.endpoints}
        events = []
        for r in self.store.execute(
            "SELECT seq, created_at, message, entity, payload FROM fo_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            [after, limit],
        ):
            events.append(
                {
                    "seq": r["seq"],
                    "created_at": r["created_at"],
                    "message": r["message"],
                    "entity": r["entity"],
                    "delivered": {url: r["seq"] <= c["delivered_seq"] for url, c in cursors.items()},
                    "payload": json.loads(r["payload"]),
                }
            )
        return {"events": events, "endpoints": cursors}


class EventDelivery:
    """One task per endpoint POSTs the outbox in order, retrying the head with capped exponential backoff."""

    FIRST_BACKOFF_S = 0.05
    MAX_BACKOFF_S = 5.0

    def __init__(self, outbox: Outbox, timeout_s: float, concurrency: int = 1) -> None:
        self.outbox = outbox
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakeups: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = httpx.AsyncClient(timeout=self.timeout_s)
        for url in self.outbox.endpoints:
            self.wakeups[url] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._run(url), name=f"fo-events-{url}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.client is not None:
            await self.client.aclose()

    def wake(self) -> None:
        if self.loop is None:
            return
        try:
            same_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            same_loop = False
        for event in self.wakeups.values():
            if same_loop:
                event.set()
            else:
                self.loop.call_soon_threadsafe(event.set)

    async def _run(self, url: str) -> None:
        if self.concurrency > 1:
            await self._run_lanes(url)
            return
        assert self.client is not None
        wakeup = self.wakeups[url]
        backoff = self.FIRST_BACKOFF_S
        while True:
            head = self.outbox.head(url)
            if head is None:
                wakeup.clear()
                if (head := self.outbox.head(url)) is None:
                    await wakeup.wait()
                    continue
            seq, payload = head
            error = await self._post(url, payload)
            if error is None:
                self.outbox.delivered(url, seq)
                backoff = self.FIRST_BACKOFF_S
                continue
            self.outbox.failed(url, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.MAX_BACKOFF_S)

    async def _run_lanes(self, url: str) -> None:
        """`concurrency` lanes, a record's events always in the same lane and in order; a window of events is
        delivered whole before the cursor moves past it (a restart may deliver some again, never skip one)."""
        wakeup = self.wakeups[url]
        while True:
            window = self.outbox.window(url, self.concurrency * 16)
            if not window:
                wakeup.clear()
                if not (window := self.outbox.window(url, self.concurrency * 16)):
                    await wakeup.wait()
                    continue
            lanes: dict[int, list[tuple[int, str]]] = {}
            for seq, record, payload in window:
                lanes.setdefault(zlib.crc32(record.encode()) % self.concurrency, []).append((seq, payload))
            await asyncio.gather(*(self._lane(url, events) for events in lanes.values()))
            self.outbox.delivered(url, window[-1][0])

    async def _post(self, url: str, payload: str) -> str | None:
        """POST one event; None when the endpoint accepted it, else why not."""
        assert self.client is not None
        try:
            resp = await self.client.post(url, content=payload.encode(), headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"

    async def _lane(self, url: str, events: list[tuple[int, str]]) -> None:
        for _, payload in events:
            backoff = self.FIRST_BACKOFF_S
            while True:
                error = await self._post(url, payload)
                if error is None:
                    break
                self.outbox.failed(url, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)


# -- the OData service --------------------------------------------------------------------------------
def error_body(
    status: int, message: str, inner_type: str = ODATA_EXCEPTION, headers: dict[str, str] | None = None
) -> ODataResponse:
    """F&O's error shape: a generic top-level message, the useful one in innererror."""
    return json_response(
        status,
        {
            "error": {
                "code": "",
                "message": "An error has occurred.",
                "innererror": {"message": message, "type": inner_type, "stacktrace": ""},
            }
        },
        headers,
    )


def empty_value(f: Field) -> Any:
    """X++ fields are never NULL: F&O answers "" / 0 / the first enum value where nothing was set."""
    if f.type in ("int", "choice"):
        return 0
    if f.type == "decimal":
        return 0.0
    if f.type == "enum":
        return f.default if f.default is not None else f.values[0]
    if f.type == "string":
        return ""
    return None


class WriteError(ODataError):
    """A write F&O's business logic refuses (answered 400 with AxODataWriteException)."""

    def __init__(self, entity: Entity, infolog: str) -> None:
        super().__init__(
            400,
            f"Write failed for table row of type '{entity.logical_name}'. Infolog: Error: {infolog}",
            WRITE_EXCEPTION,
        )


class FinOps:
    """The request handling of the F&O OData endpoint, independent of HTTP (so $batch reuses it)."""

    def __init__(self, settings: Settings, store: Store, outbox: Outbox, stats: Stats) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.stats = stats
        self.on_event: list[Any] = []

    # entry point ---------------------------------------------------------------------------
    def handle(self, req: ODataRequest) -> ODataResponse:
        try:
            return self.route(req)
        except FieldError as exc:
            return self.field_error(req, exc)
        except ODataError as exc:
            return error_body(exc.status, exc.message, exc.code or ODATA_EXCEPTION, exc.headers)
        except Exception:  # a stand-in bug must still answer in the service's shape
            log.exception("F&O stand-in failed on %s %s", req.method, req.path)
            return error_body(500, "An unexpected error occurred in the F&O stand-in.")

    def route(self, req: ODataRequest) -> ODataResponse:
        path = req.path.strip("/")
        if path == "":
            return self.service_document(req)
        if path == "$metadata":
            if req.method != "GET":
                raise ODataError(405, f"The requested resource does not support http method '{req.method}'.")
            return csdl.xml_response(csdl.fo_metadata(list(self.store.entities.values())))
        if path == "$batch":
            if req.method != "POST":
                raise ODataError(405, f"The requested resource does not support http method '{req.method}'.")
            return self.batch(req)
        name, key_text, rest = split_resource_path(path)
        entity = self.store.entity(name)
        if entity is None or entity.name != name or rest:  # OData names are case-sensitive
            raise ODataError(
                404, f"No HTTP resource was found that matches the request URI '{req.service_root}{path}'."
            )
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
                return self.update(req, entity, key)
            if req.method == "DELETE":
                return self.delete(req, entity, key)
        raise ODataError(405, f"The requested resource does not support http method '{req.method}'.")

    def service_document(self, req: ODataRequest) -> ODataResponse:
        sets = [{"name": e.name, "kind": "EntitySet", "url": e.name} for e in self.store.entities.values()]
        return json_response(200, {"@odata.context": f"{req.service_root}$metadata", "value": sets})

    def field_error(self, req: ODataRequest, exc: FieldError) -> ODataResponse:
        name = req.path.split("(")[0].strip("/")
        entity = self.store.entity(name)
        type_name = f"Microsoft.Dynamics.DataEntities.{entity.type_name if entity else name}"
        if exc.kind == "unknown":
            msg = (
                f"The property '{exc.field}' does not exist on type '{type_name}'. "
                "Make sure to only use property names that are defined by the type."
            )
            return error_body(400, msg)
        if exc.kind == "type":
            return error_body(
                400,
                f"Cannot convert the literal '{exc.value}' to the expected type "
                f"'{exc.detail}' of property '{exc.field}'.",
            )
        if exc.kind == "value":
            f = entity.field(exc.field) if entity else None
            allowed = ", ".join(str(v) for v in f.values) if f else ""
            return error_body(
                400, f"The value '{exc.value}' is not valid for enum property '{exc.field}' (allowed: {allowed})."
            )
        table = entity.logical_name if entity else name
        prefix = f"Write failed for table row of type '{table}'. Infolog: Error: "
        if exc.kind == "too_long":
            return error_body(
                400,
                prefix + f"The value of field '{exc.field}' is {len(str(exc.value))} characters"
                f" long; the maximum length is {exc.detail}.",
                WRITE_EXCEPTION,
            )
        return error_body(400, prefix + f"Field '{exc.field}' must be filled in.", WRITE_EXCEPTION)

    # helpers -------------------------------------------------------------------------------
    def resolver(self, entity: Entity) -> Any:
        def resolve(name: str) -> Column:
            if name in SYSTEM_FIELDS:
                return SYSTEM_FIELDS[name]
            f = entity.field(name)
            if f is None or f.name != name:
                raise QueryError(
                    f"Could not find a property named '{name}' on type "
                    f"'Microsoft.Dynamics.DataEntities.{entity.type_name}'."
                )
            return Column(f.name, column(entity, f.name), f.type, f.values)

        return resolve

    def key_values(self, entity: Entity, key_text: str) -> dict[str, Any]:
        parsed = parse_key(key_text)
        if None in parsed:
            if len(entity.key) != 1:
                raise QueryError(
                    f"The number of keys specified in the URI does not match number of key "
                    f"properties for the resource '{entity.type_name}'."
                )
            parsed = {entity.key[0]: parsed[None]}
        out: dict[str, Any] = {}
        for name, lit in parsed.items():
            f = entity.field(name or "")
            if f is None or f.name != name or f.name not in entity.key:
                raise QueryError(f"'{name}' is not a key property of '{entity.type_name}'.")
            try:
                out[f.name] = normalise(f, lit.value)
            except FieldError:
                raise QueryError(f"The key value {lit.value!r} is not valid for '{f.name}'.") from None
        if set(out) != set(entity.key):
            raise QueryError(
                f"The number of keys specified in the URI does not match number of key properties "
                f"for the resource '{entity.type_name}'."
            )
        return out

    def entity_url(self, req: ODataRequest, entity: Entity, row: Row) -> str:
        parts = [(n, row.values[n], entity.field(n).type) for n in entity.key]  # type: ignore[union-attr]
        return f"{req.service_root}{entity.name}{format_key(parts)}"

    def render(self, entity: Entity, row: Row, select: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": etag(row.version)}
        for f in entity.fields:
            if select is None or f.name in select:
                out[f.name] = to_json(f, row.values[f.name])
        if select is None or "ModifiedDateTime" in select:
            out["ModifiedDateTime"] = row.modified_on
        if select is None or "ModifiedBy" in select:
            out["ModifiedBy"] = row.modified_by
        return out

    def select_of(self, req: ODataRequest, entity: Entity) -> list[str] | None:
        if "$select" not in req.query or req.query["$select"].strip() in ("", "*"):
            return None
        resolve = self.resolver(entity)
        return [resolve(n).name for n in parse_select(req.query["$select"])]

    def context(self, req: ODataRequest, entity: Entity, select: list[str] | None, single: bool) -> str:
        sel = f"({','.join(select)})" if select else ""
        return f"{req.service_root}$metadata#{entity.name}{sel}{'/$entity' if single else ''}"

    def cross_company(self, req: ODataRequest) -> bool:
        return req.query.get("cross-company", "").lower() == "true"

    def read_body(self, entity: Entity, body: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata.") or "@" in name:
                continue  # annotations such as @odata.etag / @odata.type are not data
            f = entity.field(name)
            if f is None or f.name != name:
                raise FieldError("unknown", name)
            values[f.name] = normalise(f, value)
            if values[f.name] is None:
                values[f.name] = empty_value(f)
        return values

    def check_references(self, entity: Entity, values: dict[str, Any]) -> None:
        company = values.get(entity.company_field) if entity.company_field else None
        companies = self.store.entity(COMPANY_SET) if entity.company_field else None
        if companies is not None and self.store.get(companies, {companies.key[0]: company}) is None:
            raise WriteError(entity, f"Company '{company}' does not exist.")
        for f in entity.fields:
            target = self.store.entity(f.target) if f.target else None
            if target is None or values.get(f.name) in (None, ""):
                continue  # a target outside this catalogue is not checked
            key = {target.key[-1]: values[f.name]}
            if target.company_field:
                key[target.company_field] = company
            if self.store.get(target, key) is None:
                raise WriteError(entity, f"{f.label or f.name} '{values[f.name]}' does not exist.")

    def emit(self, message: str, entity: Entity, row: Row, before: Row | None, req: ODataRequest) -> None:
        if entity.event_name is None:
            return
        # (by key, not row id: a row deleted and made anew keeps its events in order)
        of = row.values if row is not None else before.values if before is not None else {}
        names = [entity.company_field, *entity.key] if entity.company_field else list(entity.key)
        record = "|".join([entity.name, *(str(of.get(n, "")).lower() for n in names)])
        self.outbox.append(
            build_event(
                message,
                entity,
                row,
                before,
                req.caller.object_id,
                self.settings.organization_id,
                self.settings.organization_name,
            ),
            record,
        )
        for callback in self.on_event:
            callback()

    def preconditions(self, req: ODataRequest, row: Row | None) -> None:
        if_match, if_none = req.headers.get("if-match"), req.headers.get("if-none-match")
        if if_match is not None and (row is None or not etag_matches(if_match, row.version)):
            if row is None:
                raise ODataError(404, "Resource not found for the segment.")
            raise ODataError(
                412, "The ETag value in the request header does not match with the current ETag value of the object."
            )
        if if_none is not None and row is not None and etag_matches(if_none, row.version) and req.method != "GET":
            raise ODataError(412, "The ETag value in the If-None-Match header matches the current ETag value.")

    def find(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> Row:
        row = self.store.get(entity, key)
        if row is None:
            raise ODataError(404, f"Resource not found for the segment '{entity.name}'.")
        return row

    # reads ---------------------------------------------------------------------------------
    def read_set(self, req: ODataRequest, entity: Entity) -> ODataResponse:
        allowed = {"$filter", "$select", "$top", "$skip", "$orderby", "$count", "$format", "$skiptoken"}
        for name in req.query:
            if name.startswith("$") and name not in allowed:
                raise QueryError(f"The query parameter '{name}' is not supported.")
        resolve = self.resolver(entity)
        where, params = [], []
        if entity.company_field and not self.cross_company(req):
            where.append(f"{column(entity, entity.company_field)} = ?")
            params.append(self.settings.default_company)
        if req.query.get("$filter", "").strip():
            sql, filter_params = filter_to_sql(req.query["$filter"], resolve, wildcards=True)
            where.append(sql)
            params.extend(filter_params)
        order = orderby_to_sql(req.query["$orderby"], resolve) if req.query.get("$orderby") else ""
        select = self.select_of(req, entity)
        top = parse_count("$top", req.query["$top"]) if "$top" in req.query else None
        skip = parse_count("$skip", req.query["$skip"]) if "$skip" in req.query else 0
        page = self.settings.page_size
        want = page if top is None else min(top, page)
        where_sql = " AND ".join(where)
        rows = self.store.select(entity, where_sql, params, order, limit=want + 1, offset=skip)
        body: dict[str, Any] = {"@odata.context": self.context(req, entity, select, False)}
        if req.query.get("$count", "").lower() == "true":
            body["@odata.count"] = self.store.count(entity, where_sql, params)
        body["value"] = [self.render(entity, r, select) for r in rows[:want]]
        more = len(rows) > want and (top is None or top > page)
        if more:
            body["@odata.nextLink"] = req.url(skip=str(skip + page), top=None if top is None else str(top - page))
        return json_response(200, body)

    def read_one(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        for name in req.query:
            if name.startswith("$") and name not in ("$select", "$format"):
                raise QueryError(f"The query parameter '{name}' is not supported on a single entity.")
        select = self.select_of(req, entity)
        row = self.find(req, entity, key)
        if_none = req.headers.get("if-none-match")
        if if_none and etag_matches(if_none, row.version):
            return ODataResponse(304, {"ETag": etag(row.version)})
        body = {"@odata.context": self.context(req, entity, select, True), **self.render(entity, row, select)}
        return json_response(200, body, {"ETag": etag(row.version)})

    # writes --------------------------------------------------------------------------------
    def create(self, req: ODataRequest, entity: Entity) -> ODataResponse:
        values = self.read_body(entity, req.json())
        if entity.company_field:
            values[entity.company_field] = (values.get(entity.company_field) or self.settings.default_company).lower()
        values = self.store.prepare_insert(entity, values)
        for f in entity.fields:
            if values.get(f.name) is None:
                values[f.name] = empty_value(f)
        self.check_references(entity, values)
        key = {n: values[n] for n in entity.key}
        if self.store.get(entity, key) is not None:
            shown = ", ".join(str(v) for v in key.values())
            raise WriteError(
                entity,
                f"Cannot create a record in {entity.type_name} ({entity.logical_name}). "
                f"{shown}. The record already exists.",
            )
        with self.store.savepoint():
            try:
                row = self.store.insert(entity, values, req.caller.object_id)
            except DuplicateKeyError:
                raise WriteError(entity, "The record already exists.") from None
            self.emit("Create", entity, row, None, req)
        url = self.entity_url(req, entity, row)
        headers = {"Location": url, "OData-EntityId": url, "ETag": etag(row.version)}
        if parse_prefer(req.headers).get("return") == "minimal":
            return ODataResponse(204, {**headers, "Preference-Applied": "return=minimal", "OData-Version": "4.0"})
        body = {"@odata.context": self.context(req, entity, None, True), **self.render(entity, row, None)}
        return json_response(201, body, headers)

    def update(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        row = self.store.get(entity, key)
        self.preconditions(req, row)
        row = self.find(req, entity, key)  # F&O has no upsert: PATCH on a missing key is 404
        changes = self.read_body(entity, req.json())
        for name in entity.key:
            if name in changes and str(changes[name]).lower() != str(row.values[name]).lower():
                raise WriteError(entity, f"The key field '{name}' cannot be changed.")
            changes.pop(name, None)
        merged = {**row.values, **changes}
        self.check_references(entity, merged)
        with self.store.savepoint():
            after = self.store.update(entity, row, changes, req.caller.object_id)
            self.emit("Update", entity, after, row, req)
        headers = {"ETag": etag(after.version), "OData-EntityId": self.entity_url(req, entity, after)}
        if parse_prefer(req.headers).get("return") == "representation":
            body = {"@odata.context": self.context(req, entity, None, True), **self.render(entity, after, None)}
            return json_response(200, body, {**headers, "Preference-Applied": "return=representation"})
        return ODataResponse(204, {**headers, "OData-Version": "4.0"})

    def delete(self, req: ODataRequest, entity: Entity, key: dict[str, Any]) -> ODataResponse:
        row = self.store.get(entity, key)
        self.preconditions(req, row)
        row = self.find(req, entity, key)
        with self.store.savepoint():
            version = self.store.delete(entity, row, req.caller.object_id)
            gone = Row(
                row.id,
                version,
                row.created_on,
                row.modified_on,
                row.created_by,
                req.caller.object_id,
                row.values,
                row.rowid,
            )
            self.emit("Delete", entity, gone, row, req)
        return ODataResponse(204, {"OData-Version": "4.0"})

    # stand-in only: writes that raise no data event ---------------------------------------------
    def set_based(self, body: dict[str, Any]) -> dict[str, Any]:
        """An `update_recordset` / `insert_recordset`: rows change (version, ModifiedDateTime) and no event is raised.

        Body: `entity_set`, then `changes` for the rows a `filter` (OData) or `keys` (a list of key objects) selects,
        and/or `insert` (a list of rows); `user` is recorded as ModifiedBy."""
        entity = self._standin_entity(body)
        user = str(body.get("user") or "set-based-job")
        updated, inserted = 0, 0
        with self.store.savepoint():
            changes = self.read_body(entity, dict(body.get("changes") or {}))
            if set(changes) & set(entity.key):
                raise QueryError("set-based changes cannot change key fields")
            for row in self._selected(entity, body) if changes else []:
                self.check_references(entity, {**row.values, **changes})
                self.store.update(entity, row, changes, user)
                updated += 1
            for values in body.get("insert") or []:
                self._insert_quietly(entity, dict(values), user)
                inserted += 1
        return {"updated": updated, "inserted": inserted}

    def raw_write(self, body: dict[str, Any]) -> dict[str, Any]:
        """Drift written straight into the database: `op` update (the default: `values` of the row at `key`; the
        version moves, ModifiedDateTime and ModifiedBy stay), insert (`values`) or delete (`key`); no data event."""
        entity = self._standin_entity(body)
        op = body.get("op", "update")
        if op == "insert":
            return {"version": self._insert_quietly(entity, dict(body.get("values") or {}), SYSTEM_USER).version}
        key = self.read_body(entity, dict(body.get("key") or {}))
        row = self.store.get(entity, key)
        if row is None:
            raise ODataError(404, f"Resource not found for the segment '{entity.name}'.")
        if op == "delete":
            return {"version": self.store.delete(entity, row, row.modified_by)}
        if op != "update":
            raise QueryError(f"op {op!r}: update, insert or delete")
        changes = self.read_body(entity, dict(body.get("values") or {}))
        with self.store.savepoint():
            after = self.store.update(entity, row, changes, row.modified_by)
            self.store.execute(
                f'UPDATE "{entity.name}" SET "__modified_on" = ? WHERE "__rowid" = ?', [row.modified_on, row.rowid]
            )
        return {"version": after.version}

    def _standin_entity(self, body: dict[str, Any]) -> Entity:
        entity = self.store.entity(str(body.get("entity_set", "")))
        if entity is None or entity.name != body.get("entity_set"):
            raise QueryError(f"unknown entity set {body.get('entity_set')!r}")
        return entity

    def _selected(self, entity: Entity, body: dict[str, Any]) -> list[Row]:
        if "keys" in body:
            rows = [self.store.get(entity, self.read_body(entity, dict(k))) for k in body["keys"]]
            return [r for r in rows if r is not None]
        where, params = filter_to_sql(str(body.get("filter") or ""), self.resolver(entity), wildcards=True)
        return self.store.select(entity, where, params)

    def _insert_quietly(self, entity: Entity, body: dict[str, Any], user: str) -> Row:
        values = self.read_body(entity, body)
        if entity.company_field:
            values[entity.company_field] = (values.get(entity.company_field) or self.settings.default_company).lower()
        values = self.store.prepare_insert(entity, values)
        for f in entity.fields:
            if values.get(f.name) is None:
                values[f.name] = empty_value(f)
        self.check_references(entity, values)
        try:
            return self.store.insert(entity, values, user)
        except DuplicateKeyError:
            raise WriteError(entity, "The record already exists.") from None

    # $batch --------------------------------------------------------------------------------
    def batch(self, req: ODataRequest) -> ODataResponse:
        responses, _ = execute_batch(
            req,
            BASE_PATH,
            self.handle,
            lambda status, message: error_body(status, message),
            self.store.savepoint,
            stop_on_error=False,
        )
        content_type, body = render_batch(responses)
        return ODataResponse(200, {"Content-Type": content_type, "OData-Version": "4.0"}, body)


def create_app(settings: Settings) -> Starlette:
    """The F&O stand-in as an ASGI app (data-event delivery runs in its lifespan)."""
    catalogue = load_catalogue(Path(settings.catalogue_dir) if settings.catalogue_dir else None)
    store = Store(settings.db_path, catalogue.entities("fo"))
    if settings.seed:
        seed.seed_fo(store, empty_value)
    outbox = Outbox(store, settings.event_endpoints)
    stats = Stats()
    service = FinOps(settings, store, outbox, stats)
    delivery = EventDelivery(outbox, settings.event_timeout_s, settings.event_concurrency)
    service.on_event.append(delivery.wake)

    async def api(request: Request) -> Response:
        stats.requests += 1
        identity = identity_from_header(request.headers.get("authorization"), settings.signing_key)
        if identity is None:
            resp = error_body(
                401,
                "Authentication failed: a valid bearer token is required.",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            return to_starlette(resp)
        stats.by_caller[identity.client_id] += 1
        if settings.latency_s:
            await asyncio.sleep(settings.latency_s)
        req = await read_request(request, BASE_PATH, identity)
        return to_starlette(service.handle(req))

    async def api_root(request: Request) -> Response:
        return await api(request)

    async def stats_endpoint(request: Request) -> Response:
        return JSONResponse(stats.as_json())

    async def events_endpoint(request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return JSONResponse({"error": "after and limit must be integers"}, status_code=400)
        return JSONResponse(outbox.listing(after, limit))

    async def standin_write(request: Request) -> Response:
        """The stand-in-only writes that raise no data event (tests cause drift with them)."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise QueryError("a JSON object")
            write = service.set_based if request.url.path.endswith("/set-based") else service.raw_write
            return JSONResponse(write(body))
        except FieldError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ODataError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except ValueError as exc:
            return JSONResponse({"error": f"not JSON: {exc}"}, status_code=400)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await delivery.start()
        try:
            yield
        finally:
            await delivery.stop()

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app = Starlette(
        routes=[
            Route("/_standin/stats", stats_endpoint, methods=["GET"]),
            Route("/_standin/events", events_endpoint, methods=["GET"]),
            Route("/_standin/set-based", standin_write, methods=["POST"]),
            Route("/_standin/raw-write", standin_write, methods=["POST"]),
            Route("/data", api_root, methods=methods),
            Route("/data/{path:path}", api, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.service = service
    return app
