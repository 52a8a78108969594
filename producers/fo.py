"""F&O producer: receives F&O data events over HTTPS and publishes them; OData snapshot on first start.

Data events arrive as the JSON of a Dataverse RemoteExecutionContext. We answer 2xx only after the
broker acknowledged the change event, so F&O keeps retrying anything we could not publish. Events
that dualwrite itself caused (InitiatingUserId = the integration user) are dropped: no echo.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import schemas
from dualwrite import kafka, metrics, odata
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import Config
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import ConfigError, DualWriteError, PermanentError, RetryableError
from dualwrite.fo import FoClient
from dualwrite.order import dependency_order
from dualwrite.tablemap import TableMap
from producers.publish import Publisher

log = logging.getLogger("dualwrite.producer.fo")

_DATE = re.compile(r"^/Date\((-?\d+)\)/$")
_OPS = {"create": Op.CREATE, "update": Op.UPDATE, "delete": Op.DELETE}


class MalformedEvent(PermanentError):
    code = "malformed-event"


def parse_date(value: str) -> datetime | None:
    m = _DATE.match(value or "")
    return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC) if m else None


def _attributes(entity: dict[str, Any], key: str = "Attributes") -> dict[str, Any]:
    items = entity.get(key) or []
    if not isinstance(items, list):
        raise MalformedEvent(f"{key} is not a list")
    return {str(kv["key"]).lower(): kv.get("value") for kv in items if isinstance(kv, dict) and "key" in kv}


def _parameter(params: Any, name: str) -> Any:
    for kv in params or []:
        if isinstance(kv, dict) and kv.get("key") == name:
            return kv.get("value")
    return None


def fo_company(m: TableMap, row: dict[str, Any]) -> str:
    """The row's legal entity, lower case; '' for a global entity."""
    return str(row.get(m.fo.company_field) or "").lower() if m.fo.company_field else ""


def source_filter(m: TableMap, companies: list[str]) -> str | None:
    """OData filter for the map's rows: the enabled companies (unless global) and the map's source filter."""
    parts = [f"{name} eq {odata.literal(value)}" for name, value in m.fo.filter.items()]
    if m.fo.company_field is not None:
        parts.insert(0, "(" + " or ".join(f"{m.fo.company_field} eq {odata.literal(c)}" for c in companies) + ")")
    return " and ".join(parts) or None


def snapshot_event(
    publisher: Publisher, m: TableMap, raw: dict[str, Any], companies: list[str], correlation_id: str | None = None
) -> ChangeEvent | None:
    """A `snapshot` change event for one F&O row read over OData (None when not ours to sync)."""
    row = publisher.coerce(m.fo.entity_set, raw)
    company = fo_company(m, row)
    if (m.company_specific and company not in companies) or any(row.get(k) in (None, "") for k in m.fo.key):
        return None
    if m.fo.company_field is not None and m.fo.company_field not in m.fo.key:
        row[m.fo.company_field] = company
    return ChangeEvent(
        op=Op.SNAPSHOT,
        entity=m.fo.entity_set,
        company=company,
        key=record_key(company, [row[k] for k in m.fo.key]),
        source_time=datetime.now(UTC),
        source_version=raw.get("@odata.etag"),
        origin=Origin(Side.FO, correlation_id=correlation_id),
        after=row,
    )


class EventTranslator:
    """Turns one data-event payload into a ChangeEvent (or None when it is not ours to sync)."""

    def __init__(self, maps: dict[str, TableMap], companies: list[str], integration_user_id: str | None) -> None:
        # Maps sharing an event entity share its entity set; the publisher splits them by filter.
        self.by_event_entity: dict[str, TableMap] = {}
        for m in maps.values():
            first = self.by_event_entity.setdefault(m.fo.event_entity.lower(), m)
            if first.fo.entity_set != m.fo.entity_set:
                raise ConfigError(
                    f"maps {first.name} and {m.name} use event entity {m.fo.event_entity} for different sets"
                )
        self.fields = {m.name: schemas.record_fields("fo", m.fo.entity_set) for m in maps.values()}
        self.companies = set(companies)
        self.integration_user_id = (integration_user_id or "").lower() or None

    def _row(self, m: TableMap, attrs: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name in self.fields[m.name]:
            for candidate in (f"mserp_{name.lower()}", name.lower()):
                if candidate in attrs:
                    value = attrs[candidate]
                    if isinstance(value, str) and (d := parse_date(value)) is not None:
                        value = d.isoformat()
                    row[name] = value
                    break
        return row

    def translate(self, payload: dict[str, Any]) -> tuple[str, ChangeEvent | None]:
        """(outcome, event): outcome is published, echo_dropped or filtered."""
        if not isinstance(payload, dict):
            raise MalformedEvent("a data event is a JSON object")
        message = str(payload.get("MessageName", "")).lower()
        if message not in _OPS:
            raise MalformedEvent(f"MessageName {payload.get('MessageName')!r} is not Create, Update or Delete")
        entity = str(payload.get("PrimaryEntityName", "")).lower()
        m = self.by_event_entity.get(entity)
        if m is None:
            return "filtered", None
        user = str(payload.get("InitiatingUserId") or "").lower() or None
        if user and user == self.integration_user_id:
            return "echo_dropped", None
        target = _parameter(payload.get("InputParameters"), "Target")
        if not isinstance(target, dict):
            raise MalformedEvent("InputParameters has no Target")
        op = _OPS[message]
        if op is Op.DELETE:
            pre = _parameter(payload.get("PreEntityImages"), "PreImage") or {}
            attrs = {**_attributes(pre), **_attributes(target, "KeyAttributes")} if isinstance(pre, dict) else {}
            attrs = attrs or _attributes(target, "KeyAttributes")
        else:
            attrs = _attributes(target)
        row = self._row(m, attrs)
        company = fo_company(m, row)
        if m.company_specific:
            if not company:
                raise MalformedEvent(f"event for {m.fo.entity_set} has no {m.fo.company_field}")
            if company not in self.companies:
                return "filtered", None
        missing = [k for k in m.fo.key if row.get(k) in (None, "")]
        if missing:
            raise MalformedEvent(f"event for {m.fo.entity_set} lacks key field(s) {', '.join(missing)}")
        when = parse_date(str(payload.get("OperationCreatedOn") or "")) or datetime.now(UTC)
        event = ChangeEvent(
            op=op,
            entity=m.fo.entity_set,
            company=company,
            key=record_key(company, [row[k] for k in m.fo.key]),
            source_time=when,
            source_version=str(target.get("RowVersion")) if target.get("RowVersion") else None,
            origin=Origin(Side.FO, False, user, payload.get("CorrelationId")),
            after=None if op is Op.DELETE else row,
        )
        return "published", event


class FoProducer:
    """The data-event receiver (an ASGI app) plus the one-time OData snapshot."""

    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.cfg = cfg
        self.maps = maps
        self.publisher = Publisher(cfg, "fo", maps)
        self.translator = EventTranslator(maps, cfg.companies, cfg.fo.integration_user_id)
        self.dlq_producer = kafka.producer(cfg.kafka, linger_ms=0)
        self.dlq_topic = kafka.dlq_topic(f"{cfg.kafka.topic_prefix}.fo.events")
        self.checkpoints = CheckpointStore(cfg.kafka)
        self.ready = threading.Event()
        self.app = Starlette(routes=[Route(cfg.fo_producer.path, self.receive, methods=["POST"])])

    # -- snapshot ------------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Publish every existing row of each map once (op=snapshot), in dependency order."""
        self.checkpoints.load()
        client = FoClient(self.cfg.fo)
        try:
            for name in dependency_order(self.maps):
                m = self.maps[name]
                mark = f"fo|snapshot|{m.name}"
                if self.checkpoints.get(mark) == "done":
                    continue
                flt = source_filter(m, self.cfg.companies)
                batch: list[ChangeEvent] = []
                count = 0
                for row in client.query(m.fo.entity_set, flt):
                    event = snapshot_event(self.publisher, m, row, self.cfg.companies)
                    if event is None:
                        continue
                    batch.append(event)
                    if len(batch) >= 1000:
                        self.publisher.publish(batch)
                        count += len(batch)
                        batch = []
                self.publisher.publish(batch)
                count += len(batch)
                self.checkpoints.put_many({mark: "done"})
                log.info("snapshot of %s: %d rows published", m.fo.entity_set, count)
        finally:
            client.close()

    # -- live events -----------------------------------------------------------------------------
    async def receive(self, request: Request) -> JSONResponse:
        secret = self.cfg.fo_producer.shared_secret
        if secret and request.query_params.get("code") != secret:
            return JSONResponse({"error": "missing or wrong ?code= on the data-event endpoint URL"}, 401)
        if not self.ready.is_set():
            # The snapshot is still being published; F&O retries, and ordering stays right.
            return JSONResponse({"error": "snapshot in progress; retry later"}, 503, headers={"Retry-After": "1"})
        body = await request.body()
        try:
            payload = json.loads(body)
            payloads = payload if isinstance(payload, list) else [payload]
            translated = [self.translator.translate(p) for p in payloads]
        except (ValueError, MalformedEvent) as exc:
            reason = str(exc) if isinstance(exc, MalformedEvent) else f"body is not JSON: {exc}"
            return await self._dead_letter(body, reason)
        events = []
        for (outcome, event), p in zip(translated, payloads, strict=True):
            if event is None:
                metrics.PRODUCED.labels("fo", str(p.get("PrimaryEntityName", "?")), outcome).inc()
            else:
                events.append(self._typed(event))
        try:
            await self.publisher.publish_async(events)
        except RetryableError as exc:
            return JSONResponse({"error": f"not published, retry: {exc}"}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"published": len(events)}, 200)

    def _typed(self, event: ChangeEvent) -> ChangeEvent:
        if event.after is None:
            return event
        return ChangeEvent(
            op=event.op,
            entity=event.entity,
            company=event.company,
            key=event.key,
            source_time=event.source_time,
            origin=event.origin,
            after=self.publisher.coerce(event.entity, event.after),
            source_version=event.source_version,
            event_id=event.event_id,
        )

    async def _dead_letter(self, body: bytes, reason: str) -> JSONResponse:
        log.warning("data event dead-lettered: %s", reason)
        self.dlq_producer.produce(
            self.dlq_topic,
            value=body,
            headers=[
                ("dualwrite.error.class", b"MalformedEvent"),
                ("dualwrite.error.message", reason.encode()),
                ("dualwrite.map", b""),
                ("dualwrite.direction", b"fo->dataverse"),
            ],
        )
        if self.dlq_producer.flush(10):
            return JSONResponse({"error": f"malformed ({reason}) and could not be dead-lettered"}, 503)
        metrics.SOURCE_ERRORS.labels("fo", "malformed").inc()
        return JSONResponse({"status": "dead-lettered", "reason": reason}, 202)

    def start_background(self) -> threading.Thread:
        """Run the snapshot (when configured) and then open the receiver."""

        def run() -> None:
            while True:
                try:
                    if self.cfg.fo_producer.snapshot_on_start:
                        self.snapshot()
                    break
                except DualWriteError as exc:
                    log.warning("snapshot failed, retrying in 2 s: %s", exc)
                    threading.Event().wait(2)
            self.ready.set()

        t = threading.Thread(target=run, daemon=True, name="fo-snapshot")
        t.start()
        return t

    def close(self) -> None:
        self.publisher.close()
        self.dlq_producer.flush(10)
        self.checkpoints.close()
