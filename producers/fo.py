"""F&O producer: receives F&O data events over HTTPS and publishes them; OData snapshot on first start;
OData catch-up of what no data event brought (set-based writes, events F&O gave up on).

Data events arrive as the JSON of a Dataverse RemoteExecutionContext, one object or an array. We
answer 2xx only after the broker acknowledged every change event and every dead letter, so F&O keeps
retrying anything we could not publish. Events that dualwrite itself caused (InitiatingUserId = the
integration user) are dropped: no echo. An event we cannot translate goes to `<prefix>.fo.events.dlq`
on its own, so one bad event neither stalls F&O's ordered delivery nor takes its neighbours with it.
A request without the shared secret, or a body too large, not JSON or nested too deep, is refused whole
with a 4xx before any of it reaches Kafka.

Catch-up: every `fo_producer.catchup_interval_s`, each map whose entity exposes a modified date-time
(`fo.modified_on`) is read for rows changed since the last window's end (less an overlap), and the rows
whose version was not published lately are published as updates; the window's end is checkpointed only
after the broker acknowledged them. Deletes leave no row to read: `dualwrite reconcile` finds those.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import KafkaException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import schemas
from dualwrite import dlq, kafka, metrics, status
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import Config, FoProducerConfig
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import CoercionError, ConfigError, DualWriteError, PermanentError, RetryableError
from dualwrite.fo import FoClient
from dualwrite.mapping import passes_filter
from dualwrite.observe import version_of
from dualwrite.order import dependency_order
from dualwrite.publish import Publisher
from dualwrite.rows import fo_company, parse_time, snapshot_event, source_filter
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.producer.fo")

_DATE = re.compile(r"^/Date\((-?\d+)\)/$")
_OPS = {"create": Op.CREATE, "update": Op.UPDATE, "delete": Op.DELETE}
DIRECTION = "fo->dataverse"


class MalformedEvent(PermanentError):
    code = "malformed-event"


class EventTooLarge(PermanentError):
    """A change event too large for one Kafka record: the broker would refuse it, and F&O would retry forever."""

    code = "too-large"


class RejectedBody(PermanentError):
    """A posted body refused whole with a 4xx (too large, not JSON, nested too deep): nothing goes to Kafka."""

    code = "rejected-body"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def events_topic(cfg: Config) -> str:
    """The topic name data events are dead-lettered under (`<prefix>.fo.events`, DLQ `<prefix>.fo.events.dlq`)."""
    return f"{cfg.kafka.topic_prefix}.fo.events"


def parse_date(value: str) -> datetime | None:
    """A .NET JSON date (`/Date(ms)/`); None when it is not one or out of range."""
    m = _DATE.match(value or "")
    if not m:
        return None
    try:
        return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _attributes(entity: dict[str, Any], key: str = "Attributes") -> dict[str, Any]:
    items = entity.get(key) or []
    if not isinstance(items, list):
        raise MalformedEvent(f"{key} is not a list")
    return {str(kv["key"]).lower(): kv.get("value") for kv in items if isinstance(kv, dict) and "key" in kv}


def _parameter(payload: dict[str, Any], collection: str, name: str) -> Any:
    params = payload.get(collection) or []
    if not isinstance(params, list):
        raise MalformedEvent(f"{collection} is not a list of key/value pairs")
    for kv in params:
        if isinstance(kv, dict) and kv.get("key") == name:
            return kv.get("value")
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class EventTranslator:
    """Turns one data-event payload into a ChangeEvent (or None when it is not ours to sync)."""

    def __init__(
        self,
        maps: dict[str, TableMap],
        companies: list[str],
        integration_user_id: str | None,
        schemas_dir: Path | None = None,
    ) -> None:
        # Maps sharing an event entity share its entity set; the publisher splits them by filter.
        self.by_event_entity: dict[str, TableMap] = {}
        self.maps_of: dict[str, list[TableMap]] = {}
        for m in maps.values():
            first = self.by_event_entity.setdefault(m.fo.event_entity.lower(), m)
            if first.fo.entity_set != m.fo.entity_set:
                raise ConfigError(
                    f"maps {first.name} and {m.name} use event entity {m.fo.event_entity} for different sets"
                )
            self.maps_of.setdefault(m.fo.event_entity.lower(), []).append(m)
        self.fields = {m.name: schemas.record_fields("fo", m.fo.entity_set, schemas_dir) for m in maps.values()}
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

    def map_name(self, payload: Any, row: dict[str, Any] | None = None) -> str:
        """The map(s) of a payload's entity, comma-separated ('' when unknown); given the row, those it passes."""
        if not isinstance(payload, dict):
            return ""
        maps = self.maps_of.get(str(payload.get("PrimaryEntityName", "")).lower(), [])
        if row is not None and len(maps) > 1:
            maps = [m for m in maps if passes_filter(m.fo.filter, row)] or maps
        return ",".join(sorted(m.name for m in maps))

    def translate(self, payload: Any) -> tuple[str, ChangeEvent | None]:
        """(outcome, event): outcome is published or filtered; MalformedEvent when it cannot be read."""
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
        # dualwrite's own writes are published too, flagged: the consumer learns F&O's version of its
        # write from them, and its sync state (not this filter) keeps them from travelling back.
        by_dualwrite = bool(user and user == self.integration_user_id)
        target = _parameter(payload, "InputParameters", "Target")
        if not isinstance(target, dict):
            raise MalformedEvent("InputParameters has no Target")
        op = _OPS[message]
        version = target.get("RowVersion")
        if op is Op.DELETE:
            pre = _parameter(payload, "PreEntityImages", "PreImage") or {}
            attrs = {**_attributes(pre), **_attributes(target, "KeyAttributes")} if isinstance(pre, dict) else {}
            attrs = attrs or _attributes(target, "KeyAttributes")
            version = pre.get("RowVersion") if isinstance(pre, dict) else None  # the version that was deleted
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
            source_version=_text(version) if version not in (None, "") else None,
            origin=Origin(Side.FO, by_dualwrite, user, _text(payload.get("CorrelationId"))),
            after=None if op is Op.DELETE else row,
            source_id=_text(target.get("Id") or payload.get("PrimaryEntityId")),
        )
        return "published", event


# -- posted bodies ---------------------------------------------------------------------------------------
SECRET_HEADER = "X-Dualwrite-Secret"
MAX_DEPTH = 64  # a data event nests about 8 deep; json, repr and Avro all recurse, so far deeper is refused
RECORD_HEADROOM = 64 * 1024  # a dead letter's headers (the error message is cut at 2,000 characters) and framing
# A JSON string, or an unterminated one up to the end (so the scan never backtracks over the rest of the body).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_UNIFY = bytes.maketrans(b"{}", b"[]")
_STEP = tuple(1 if c == ord("[") else -1 if c == ord("]") else 0 for c in range(256))


def nests_deeper(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of a UTF-8 JSON body nest deeper than `limit`, found without recursing."""
    brackets = _STRING.sub(b"", body).translate(_UNIFY, _NOT_BRACKET)
    return any(depth > limit for depth in accumulate(map(_STEP.__getitem__, brackets)))


def parse_body(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON of a posted body; RejectedBody (400) when it is not UTF-8 JSON or nests deeper than `max_depth`."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RejectedBody(f"the body is not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    # Checked before parsing, since UTF-8 keeps every bracket and quote a byte of its own: the parser then
    # never recurses deep enough to raise RecursionError, nor does anything that walks what it returns.
    if nests_deeper(body, max_depth):
        raise RejectedBody(f"the body nests deeper than {max_depth} levels; a data event needs far fewer")
    try:
        return json.loads(text)
    except ValueError as exc:  # also an integer of more than 4,300 digits
        raise RejectedBody(f"the body is not JSON: {exc}") from None


def record_limit(cfg: Config) -> int:
    """The largest value one record of the receiver may carry: the producer's message.max.bytes less headroom."""
    configured = cfg.kafka.client.get("message.max.bytes", 1_000_000)
    return max(1024, int(configured) - RECORD_HEADROOM)


def _fit(event: ChangeEvent | None, limit: int | None) -> None:
    """EventTooLarge when the event's row would not fit in a record (its JSON is at least its Avro size)."""
    if event is None or event.after is None or limit is None:
        return
    size = len(json.dumps(event.after, default=str, ensure_ascii=False).encode())
    if size > limit:
        raise EventTooLarge(f"the {event.entity} row is {size} bytes; one Kafka record takes {limit}")


@dataclass(frozen=True)
class DeadEvent:
    """A posted event (or a whole body that is not JSON) that goes to the events DLQ on its own."""

    value: bytes
    error: PermanentError
    map_name: str
    index: int | None  # position in the posted array; None when the body was not an array

    @property
    def reason(self) -> str:
        return str(self.error) if self.index is None else f"event {self.index}: {self.error}"

    def record(self, cfg: Config) -> kafka.Record:
        """Its DLQ record; a value too large for one record is cut to fit, with headers saying so."""
        more = {} if self.index is None else {"event_index": str(self.index)}
        value, limit = self.value, record_limit(cfg)
        if len(value) > limit:
            # Whole, Kafka would refuse it and F&O would post it again forever; its start still shows what it was.
            more.update(value_truncated="true", value_bytes=str(len(value)))
            value = value[:limit]
        return dlq.source_letter(events_topic(cfg), value, self.error, self.map_name, DIRECTION, None, **more)


@dataclass
class Triage:
    """A posted body split into change events to publish, events that are not ours, and dead letters."""

    events: list[ChangeEvent] = field(default_factory=list)
    not_ours: list[tuple[str, str]] = field(default_factory=list)  # (entity, outcome: filtered or echo_dropped)
    dead: list[DeadEvent] = field(default_factory=list)


def triage(
    translator: EventTranslator, publisher: Publisher, body: bytes, record_bytes: int | None = None
) -> Triage:
    """Translate every event of a body on its own; a bad one becomes a DeadEvent and takes no other with it.

    A body that is not JSON is one DeadEvent; with `record_bytes`, so is each event too large for a record."""
    try:
        payload = parse_body(body)
    except RejectedBody as exc:
        return Triage(dead=[DeadEvent(body, MalformedEvent(str(exc)), "", None)])
    return triage_parsed(translator, publisher, payload, body, record_bytes)


def triage_parsed(
    translator: EventTranslator, publisher: Publisher, payload: Any, body: bytes, record_bytes: int | None = None
) -> Triage:
    """`triage` of a body already parsed into `payload`."""
    out = Triage()
    listed = isinstance(payload, list)
    for index, p in enumerate(payload if listed else [payload]):
        event: ChangeEvent | None = None
        try:
            outcome, event = _translate(translator, p)
            typed = _typed(publisher, event)
            _fit(typed, record_bytes)
        except PermanentError as exc:
            name = translator.map_name(p, event.after if event is not None else None)
            value = json.dumps(p).encode() if listed else body
            out.dead.append(DeadEvent(value, exc, name, index if listed else None))
            continue
        if typed is None:
            out.not_ours.append((str(p.get("PrimaryEntityName", "?")), outcome))
        else:
            out.events.append(typed)
    return out


def _translate(translator: EventTranslator, payload: Any) -> tuple[str, ChangeEvent | None]:
    try:
        return translator.translate(payload)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A shape the translator did not foresee must still end in the DLQ: a 500 would make F&O retry
        # this event forever and hold back every event behind it.
        raise MalformedEvent(f"unreadable data event ({type(exc).__name__}: {exc})") from None


def _typed(publisher: Publisher, event: ChangeEvent | None) -> ChangeEvent | None:
    """The event with its row typed as the schema says; CoercionError when a value does not fit."""
    if event is None or event.after is None:
        return event
    return replace(event, after=publisher.coerce(event.entity, event.after))


@dataclass
class EventReplay:
    """What replaying the F&O events DLQ did."""

    records: int = 0  # DLQ records whose events all translate now
    published: int = 0  # change events published to their map topics
    not_ours: int = 0  # events that translate to nothing to sync (another company, an echo)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (DLQ offset, reason) of the records left


def replay_dead_events(cfg: Config, maps: dict[str, TableMap], letters: list[dlq.DeadLetter]) -> EventReplay:
    """Translate each dead-lettered payload again, as a live post would be with the current maps, and publish
    the events to their map topics; a record with an event that is still malformed stays in the DLQ, reported."""
    translator = EventTranslator(maps, cfg.companies, cfg.fo.integration_user_id, cfg.schemas_dir)
    publisher = Publisher(cfg, "fo", maps)
    result = EventReplay()
    events: list[ChangeEvent] = []
    try:
        for letter in letters:
            t = triage(translator, publisher, letter.value or b"", record_limit(cfg))
            if t.dead:
                result.malformed.append((letter.offset, t.dead[0].reason))
                continue
            result.records += 1
            result.not_ours += len(t.not_ours)
            events.extend(t.events)
        publisher.publish(events)
        result.published = len(events)
    finally:
        publisher.close()
    return result


def check_receiver(settings: FoProducerConfig) -> None:
    """ConfigError unless the receiver has a secret, or was told it may run without one (local use)."""
    if not settings.shared_secret and not settings.allow_unauthenticated:
        raise ConfigError(
            "fo_producer.shared_secret: required, or anyone who reaches the receiver can write to Kafka; set "
            "DUALWRITE__FO_PRODUCER__SHARED_SECRET (fo_producer.allow_unauthenticated: true for local use only)"
        )


def authorized(settings: FoProducerConfig, request: Request) -> bool:
    """Whether the request carries a configured secret (header, Bearer token or ?code=), compared in constant time."""
    accepted = [s.encode() for s in (settings.shared_secret, settings.previous_shared_secret) if s]
    if not accepted:
        return settings.allow_unauthenticated  # check_receiver refused to start otherwise
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    presented = [request.headers.get(SECRET_HEADER), token.strip() if scheme.lower() == "bearer" else None]
    presented.append(request.query_params.get("code"))
    # Every comparison is made, so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(p.encode(), a) for p in presented if p for a in accepted]
    return any(matches)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, never buffering more than `limit` bytes: RejectedBody (413) when it says or turns out it is larger."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():  # chunked bodies declare no length: stop once past the limit
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise RejectedBody("the client went away before the body ended") from None
    return bytes(body)


def _too_large(limit: int) -> RejectedBody:
    return RejectedBody(f"the body is larger than {limit} bytes (fo_producer.max_body_bytes)", 413)


def _brief(text: str, limit: int = 500) -> str:
    """A reason short enough for a log line or an answer (an error can quote a posted value)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 as JSON, like every other answer of the receiver."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


class RecentVersions:
    """The (key, version) pairs published lately per entity set, a bounded number each: what catch-up need not
    publish again. Forgetting one only costs a duplicate, which the consumer's sync state skips as stale."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: dict[str, OrderedDict[tuple[str, int], None]] = {}
        self._lock = threading.Lock()

    def add(self, events: list[ChangeEvent]) -> None:
        with self._lock:
            for e in events:
                version = version_of(e.source_version)
                if version is None or self.size == 0:
                    continue
                seen = self._seen.setdefault(e.entity, OrderedDict())
                seen[(e.key.lower(), version)] = None
                seen.move_to_end((e.key.lower(), version))
                while len(seen) > self.size:
                    seen.popitem(last=False)

    def published(self, event: ChangeEvent) -> bool:
        version = version_of(event.source_version)
        with self._lock:
            return version is not None and (event.key.lower(), version) in self._seen.get(event.entity, {})


class FoProducer:
    """The data-event receiver (an ASGI app), the one-time OData snapshot and the OData catch-up."""

    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        check_receiver(cfg.fo_producer)
        self.cfg = cfg
        self.maps = maps
        self.publisher = Publisher(cfg, "fo", maps)
        self.translator = EventTranslator(maps, cfg.companies, cfg.fo.integration_user_id, cfg.schemas_dir)
        self.dlq_producer = kafka.producer(cfg.kafka, linger_ms=0)
        self.dlq_topic = kafka.dlq_topic(events_topic(cfg))
        self.checkpoints = CheckpointStore(cfg.kafka)
        self.ready = threading.Event()
        self.recent = RecentVersions(cfg.fo_producer.catchup_dedup_size)
        self.started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._catching_up = ""  # the entity set catch-up reads now (for its request count)
        # The fo-producer is a single replica: it serves the last reconcile report as gauges, once.
        self.reconcile_gauges = status.ReconcileGauges(cfg.kafka, cfg.reconcile.metrics_refresh_s)
        self.app = Starlette(
            routes=[Route(cfg.fo_producer.path, self.receive, methods=["POST"])],
            exception_handlers={HTTPException: _http_error},
        )

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
                dead: list[kafka.Record] = []
                count = 0
                for row in client.query(m.fo.entity_set, flt):
                    try:
                        event = snapshot_event(self.publisher, m, row, self.cfg.companies)
                    except CoercionError as exc:  # one row the schema cannot take must not hold up the snapshot
                        dead.append(self._dead_row(m, row, exc))
                        continue
                    if event is None:
                        continue
                    batch.append(event)
                    if len(batch) >= 1000:
                        self.publisher.publish(batch)
                        self.recent.add(batch)
                        count += len(batch)
                        batch = []
                self.publisher.publish(batch)
                self.recent.add(batch)
                count += len(batch)
                kafka.deliver(self.dlq_producer, dead)  # before the mark: a crash now replays, never skips
                self.checkpoints.put_many({mark: "done"})
                log.info("snapshot of %s: %d rows published, %d dead-lettered", m.fo.entity_set, count, len(dead))
        finally:
            client.close()

    # -- catch-up -------------------------------------------------------------------------------
    def catch_up(self, client: FoClient) -> int:
        """One catch-up round over every map with `fo.modified_on`; returns the rows published."""
        self.checkpoints.load()
        names = [n for n in dependency_order(self.maps) if self.maps[n].fo.modified_on]
        return sum(self._catch_up_map(client, self.maps[n]) for n in names)

    def _catch_up_map(self, client: FoClient, m: TableMap) -> int:
        """Publish the rows of one map changed since its last window (less the overlap) that no event brought."""
        fp = self.cfg.fo_producer
        mark = f"fo|catchup|{m.name}"
        end = datetime.now(UTC).replace(microsecond=0)
        overlap_s = fp.catchup_overlap_s if fp.catchup_overlap_s is not None else 2 * fp.catchup_interval_s
        overlap = timedelta(seconds=overlap_s)
        since = (parse_time(self.checkpoints.get(mark)) or self.started_at) - overlap
        flt = " and ".join(
            p for p in (f"{m.fo.modified_on} ge {since:%Y-%m-%dT%H:%M:%SZ}", source_filter(m, self.cfg.companies)) if p
        )
        select = sorted({*self.translator.fields[m.name], m.fo.modified_on or "", m.fo.modified_by or ""} - {""})
        batch: list[ChangeEvent] = []
        dead: list[kafka.Record] = []
        published = 0
        self._catching_up = m.fo.entity_set
        for row in client.query(m.fo.entity_set, flt, select):
            try:
                event = self._catch_up_event(m, row)
            except CoercionError as exc:
                dead.append(self._dead_row(m, row, exc))
                continue
            if event is not None:
                batch.append(event)
            if len(batch) >= 1000:
                published += self._publish_caught_up(m, batch)
                batch = []
        published += self._publish_caught_up(m, batch)
        kafka.deliver(self.dlq_producer, dead)
        self.checkpoints.put_many({mark: end.isoformat()})  # only now: every row of the window is acknowledged
        return published

    def _catch_up_event(self, m: TableMap, row: dict[str, Any]) -> ChangeEvent | None:
        """An update event of a row read by catch-up; None when not ours or published lately (counted)."""
        event = snapshot_event(self.publisher, m, row, self.cfg.companies, "catch-up")
        if event is None:
            return None
        if self.recent.published(event):
            metrics.CATCHUP_ROWS.labels(m.fo.entity_set, "duplicate").inc()
            return None
        user = str(row.get(m.fo.modified_by) or "") if m.fo.modified_by else ""
        by_dualwrite = bool(user) and user.lower() == (self.cfg.fo.integration_user_id or "").lower()
        origin = replace(event.origin, by_dualwrite=by_dualwrite, user_id=user or None)
        return replace(event, op=Op.UPDATE, origin=origin)

    def _publish_caught_up(self, m: TableMap, events: list[ChangeEvent]) -> int:
        self.publisher.publish(events)
        self.recent.add(events)
        metrics.CATCHUP_ROWS.labels(m.fo.entity_set, "published").inc(len(events))
        return len(events)

    def _catch_up_forever(self) -> None:
        """Catch-up rounds every interval until the producer closes; a failed round is retried the next time."""
        interval = self.cfg.fo_producer.catchup_interval_s
        client = FoClient(self.cfg.fo)
        client.http.event_hooks["request"].append(self._count_catch_up_request)
        try:
            while not self._stop.wait(interval):
                try:
                    n = self.catch_up(client)
                    if n:
                        log.info("catch-up published %d row(s) that no data event brought", n)
                except DualWriteError as exc:
                    log.warning("catch-up round failed, retried in %.0f s: %s", interval, exc)
        finally:
            client.close()

    def _count_catch_up_request(self, request: httpx.Request) -> None:
        metrics.CATCHUP_REQUESTS.labels(self._catching_up).inc()

    def _dead_row(self, m: TableMap, row: dict[str, Any], error: CoercionError) -> kafka.Record:
        log.warning("snapshot row of %s dead-lettered: %s", m.fo.entity_set, error)
        topic = kafka.map_topics(self.cfg.kafka.topic_prefix, m)["fo"]
        value = json.dumps(row, default=str).encode()
        return dlq.source_letter(topic, value, error, m.name, DIRECTION, None, entity=m.fo.entity_set)

    # -- live events -----------------------------------------------------------------------------
    async def receive(self, request: Request) -> JSONResponse:
        """Publish the good events, dead-letter each bad one; 200 with counts (202 when nothing was published
        and something was dead-lettered); 4xx for a body refused whole; 503, so that F&O retries, unless the
        broker acknowledged all of it."""
        if not authorized(self.cfg.fo_producer, request):
            metrics.SOURCE_ERRORS.labels("fo", "unauthorized").inc()
            return JSONResponse(
                {"error": f"unauthorized: send the shared secret in the {SECRET_HEADER} header (or as ?code=)"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="dualwrite"'},
            )
        if not self.ready.is_set():
            # The snapshot is still being published; F&O retries, and ordering stays right.
            return JSONResponse({"error": "snapshot in progress; retry later"}, 503, headers={"Retry-After": "1"})
        try:
            body = await read_body(request, self.cfg.fo_producer.max_body_bytes)
            # Parsing and translating up to max_body_bytes takes a while: not on the event loop.
            t = await asyncio.to_thread(self._triage, body)
        except RejectedBody as exc:
            metrics.SOURCE_ERRORS.labels("fo", "rejected").inc()
            return JSONResponse({"error": str(exc)}, exc.status)
        for entity, outcome in t.not_ours:
            metrics.PRODUCED.labels("fo", entity, outcome).inc()
        try:
            await self.publisher.publish_async(t.events)
            self.recent.add(t.events)
            # Waiting for the broker blocks, so not on the event loop.
            await asyncio.to_thread(self._dead_letter, t.dead)
        except (RetryableError, KafkaException, BufferError) as exc:  # the client's refusals too (queue full)
            log.warning("data events not published, F&O will retry: %s", exc)
            return JSONResponse({"error": f"not published, retry: {exc}"}, 503, headers={"Retry-After": "1"})
        counts: dict[str, Any] = {"published": len(t.events), "dead_lettered": len(t.dead)}
        if t.dead and not t.events:
            return JSONResponse({**counts, "status": "dead-lettered", "reason": _brief(t.dead[0].reason)}, 202)
        return JSONResponse(counts, 200)

    def _triage(self, body: bytes) -> Triage:
        """The posted body parsed and sorted; RejectedBody for a body refused whole."""
        payload = parse_body(body)
        if not isinstance(payload, dict | list):
            raise RejectedBody("a data-event body is a JSON object or an array of them")
        limit = self.cfg.fo_producer.max_events
        if isinstance(payload, list) and len(payload) > limit:
            raise RejectedBody(f"{len(payload)} events in one body; at most {limit} (fo_producer.max_events)", 413)
        return triage_parsed(self.translator, self.publisher, payload, body, record_limit(self.cfg))

    def _dead_letter(self, dead: list[DeadEvent]) -> None:
        """Send each dead event to the events DLQ; returns once the broker acknowledged every one."""
        if not dead:
            return
        # One line per body, however many events it held: a hostile array must not flood the log.
        first = dead[0]
        why = _brief(first.reason)
        log.warning("%d data event(s) dead-lettered; the first (map %s): %s", len(dead), first.map_name or "?", why)
        kafka.deliver(self.dlq_producer, [d.record(self.cfg) for d in dead], timeout_s=10)
        metrics.SOURCE_ERRORS.labels("fo", "malformed").inc(len(dead))

    def start_background(self) -> threading.Thread:
        """Run the snapshot (when configured) and then open the receiver and start the catch-up."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    if self.cfg.fo_producer.snapshot_on_start:
                        self.snapshot()
                    break
                except DualWriteError as exc:
                    log.warning("snapshot failed, retrying in 2 s: %s", exc)
                    self._stop.wait(2)
            self.ready.set()
            if self.cfg.fo_producer.catchup_interval_s > 0 and not self._stop.is_set():
                self._start(self._catch_up_forever, "fo-catchup")

        self.reconcile_gauges.start()
        return self._start(run, "fo-snapshot")

    def _start(self, work: Any, name: str) -> threading.Thread:
        t = threading.Thread(target=work, daemon=True, name=name)
        self._threads.append(t)
        t.start()
        return t

    def close(self) -> None:
        self._stop.set()
        self.reconcile_gauges.stop()
        for t in self._threads:
            t.join(timeout=15)
        self.publisher.close()
        self.dlq_producer.flush(10)
        self.checkpoints.close()
