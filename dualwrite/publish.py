"""Publishing change events: serialize per topic, produce idempotently, wait for the broker's ack."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import KafkaError, Message
from fastavro.validation import validate

import schemas
from dualwrite import kafka, metrics, registry
from dualwrite.config import Config
from dualwrite.envelope import ChangeEvent
from dualwrite.errors import CoercionError, RetryableError
from dualwrite.mapping import passes_filter
from dualwrite.tablemap import TableMap


class Publisher:
    """One idempotent producer for a side; `publish` returns after every event is acknowledged."""

    def __init__(
        self,
        cfg: Config,
        side: str,
        maps: dict[str, TableMap],
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        self.side = side
        self.headers = headers
        self.max_offsets: dict[tuple[str, int], int] = {}  # highest acknowledged offset per partition
        self.producer = kafka.producer(cfg.kafka)
        reg = registry.client(cfg.schema_registry)
        # Usually one map per entity set; maps that share one (CustomersV3 -> accounts and contacts)
        # each have their own topic, and a row goes to the maps whose source filter it passes.
        self.routes: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.serializers: dict[str, registry.EventSerializer] = {}
        self.rows: dict[str, RowSchema] = {}
        for m in maps.values():
            entity_set = m.fo.entity_set if side == "fo" else m.dataverse.entity_set
            source_filter = m.fo.filter if side == "fo" else m.dataverse.filter
            topic = kafka.map_topics(cfg.kafka.topic_prefix, m)[side]
            self.routes.setdefault(entity_set, []).append((topic, source_filter))
            self.serializers[entity_set] = registry.EventSerializer(reg, side, entity_set, cfg.schemas_dir)
            self.rows[entity_set] = RowSchema(side, entity_set, cfg.schemas_dir)
        self._poller = threading.Thread(target=self._poll_forever, daemon=True, name=f"{side}-producer-poll")
        self._stopping = threading.Event()
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(0.05)

    def coerce(self, entity_set: str, row: dict[str, Any]) -> dict[str, Any]:
        """The row typed as the schema says; CoercionError naming the field when a value cannot be written.

        Checked here, one row at a time, so that a bad value is dead-lettered on its own instead of
        failing the serialization of a whole batch.
        """
        serializer = self.serializers[entity_set]
        try:
            typed = serializer.coerce_row(row)
        except (ValueError, TypeError, ArithmeticError):
            typed = None
        if typed is None or not self.rows[entity_set].valid(typed):
            name, value, why = self.rows[entity_set].first_bad(serializer, row)
            raise CoercionError(f"{entity_set}.{name}: the schema cannot take {value!r:.80} ({why})")
        return typed

    def topics_for(self, event: ChangeEvent) -> list[str]:
        """The topics an event goes to: its map's, or, for a shared entity set, those whose filter it passes.

        A delete carries no row, so it goes to every map of the entity set (deleting a missing row is a no-op).
        """
        routes = self.routes[event.entity]
        if len(routes) == 1 or event.after is None:
            return [t for t, _ in routes]
        passing = [t for t, flt in routes if passes_filter(flt, event.after)]
        return passing or [routes[0][0]]  # the consumer counts it as filtered

    def _produce(self, event: ChangeEvent, on_delivery: Any, topics: list[str] | None = None) -> int:
        topics = self.topics_for(event) if topics is None else topics
        for topic in topics:
            value = self.serializers[event.entity](topic, event.to_avro())
            self.producer.produce(
                # Case-blind like both services: a record's key from either side lands in the same
                # partition number, where the consumer keeps its sync state.
                topic, key=event.key.lower().encode(), value=value, on_delivery=on_delivery, headers=self.headers
            )
        return len(topics)

    def publish(self, events: list[ChangeEvent], timeout_s: float = 30.0) -> None:
        """Produce and block until all are acknowledged; RetryableError if any is not."""
        if not events:
            return
        failures: list[str] = []
        done = threading.Semaphore(0)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                tp = (msg.topic() or "", msg.partition() or 0)
                self.max_offsets[tp] = max(self.max_offsets.get(tp, -1), msg.offset() or 0)
            done.release()

        sent = sum(self._produce(e, delivered) for e in events)
        for _ in range(sent):
            if not done.acquire(timeout=timeout_s):
                raise RetryableError("broker did not acknowledge the change events in time")
        if failures:
            metrics.SOURCE_ERRORS.labels(self.side, "publish").inc(len(failures))
            raise RetryableError(f"broker refused {len(failures)} change event(s): {failures[0]}")
        for e in events:
            metrics.PRODUCED.labels(self.side, e.entity, "published").inc()

    async def publish_async(self, events: list[ChangeEvent], timeout_s: float = 30.0) -> None:
        """`publish` for an asyncio handler: awaits the broker's acks without blocking the loop."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for e in events:
            # One future per topic the event goes to; delivery reports come on the poll thread, one at a time.
            topics = self.topics_for(e)
            mine = [loop.create_future() for _ in topics]
            futures.extend(mine)
            pending = iter(mine)

            def delivered(err: KafkaError | None, msg: Message, pending: Any = pending) -> None:
                fut = next(pending)

                def settle() -> None:
                    if fut.done():
                        return
                    if err is not None:
                        fut.set_exception(RetryableError(f"broker refused the change event: {err}"))
                    else:
                        fut.set_result(None)

                loop.call_soon_threadsafe(settle)

            self._produce(e, delivered, topics)
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except TimeoutError:
            raise RetryableError("broker did not acknowledge the change events in time") from None
        for e in events:
            metrics.PRODUCED.labels(self.side, e.entity, "published").inc()

    def close(self) -> None:
        self._stopping.set()
        self._poller.join(timeout=2)
        self.producer.flush(10)


class RowSchema:
    """The row record of one entity's change-event schema, to check values before they reach a batch."""

    def __init__(self, side: str, entity_set: str, schemas_dir: Path | None) -> None:
        after = next(f for f in schemas.load(side, entity_set, schemas_dir)["fields"] if f["name"] == "after")
        row = next(t for t in after["type"] if isinstance(t, dict))
        self.schema = fastavro.parse_schema(row)
        self.fields = {f["name"]: fastavro.parse_schema(f["type"]) for f in row["fields"]}

    def valid(self, typed: dict[str, Any]) -> bool:
        return _fits(typed, self.schema)

    def first_bad(self, serializer: registry.EventSerializer, row: dict[str, Any]) -> tuple[str, Any, str]:
        """(field, source value, why) of the first field that cannot be coerced or written."""
        for name, schema in self.fields.items():
            try:
                typed = serializer.coerce_row({name: row.get(name)})[name]
            except (ValueError, TypeError, ArithmeticError) as exc:
                return name, row.get(name), f"{type(exc).__name__}: {exc}"
            if not _fits(typed, schema):
                return name, row.get(name), f"not a valid {_type_name(schema)}"
        return "?", None, "the row does not fit its schema"


def _fits(value: Any, schema: Any) -> bool:
    try:
        return bool(validate(value, schema, raise_errors=False))
    except (ValueError, TypeError, ArithmeticError):  # fastavro raises these preparing logical types (decimals)
        return False


def _type_name(schema: Any) -> str:
    types = schema if isinstance(schema, list) else [schema]
    named = [t.get("logicalType") or t.get("type") if isinstance(t, dict) else t for t in types if t != "null"]
    return "/".join(str(t) for t in named) or "value"
