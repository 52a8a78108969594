"""Schema registry: register the change-event schemas and build per-topic Avro serdes (Confluent wire format)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import ConfigCompatibilityLevel, ServerConfig
from confluent_kafka.serialization import MessageField, SerializationContext

import schemas
from dualwrite.config import RegistryConfig
from dualwrite.errors import ConfigError, DeserializationError
from dualwrite.kafka import map_topics
from dualwrite.tablemap import TableMap


def client(cfg: RegistryConfig) -> SchemaRegistryClient:
    conf: dict[str, Any] = {"url": str(cfg.url).rstrip("/")}
    if cfg.basic_auth_user_info:
        conf["basic.auth.user.info"] = cfg.basic_auth_user_info
    return SchemaRegistryClient(conf)


def check_reachable(cfg: RegistryConfig) -> None:
    url = str(cfg.url).rstrip("/") + "/subjects"
    try:
        httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        raise ConfigError(f"schema_registry.url: no schema registry answered at {cfg.url} ({exc})") from None


def register_all(
    cfg: RegistryConfig, prefix: str, maps: list[TableMap], schemas_dir: Path | None = None
) -> dict[str, int]:
    """Set each subject's compatibility and register its schema; returns subject -> schema id."""
    registry = client(cfg)
    ids: dict[str, int] = {}
    for m in maps:
        for side, source in map_topics(prefix, m).items():
            entity_set = m.fo.entity_set if side == "fo" else m.dataverse.entity_set
            subject = f"{source}-value"
            try:
                registry.set_config(subject_name=subject, config=_compat(cfg.compatibility))
                schema = Schema(schemas.schema_text(side, entity_set, schemas_dir), "AVRO")
                ids[subject] = registry.register_schema(subject, schema)
            except SchemaRegistryError as exc:
                raise ConfigError(f"schema registry refused {subject}: {exc.error_message}") from None
    return ids


def _compat(level: str) -> ServerConfig:
    try:
        return ServerConfig(compatibility=ConfigCompatibilityLevel(level.upper()))
    except ValueError:
        raise ConfigError(f"schema_registry.compatibility: unknown level {level!r}") from None


_SCALE = Decimal("0.000001")


def _avro_ready(value: Any) -> Any:
    # fastavro's decimal writer wants Decimal; JSON gives float or int.
    if isinstance(value, float | int | Decimal) and not isinstance(value, bool):
        return Decimal(str(value)).quantize(_SCALE)
    return value


class EventSerializer:
    """Serialize a change-event dict for one topic (schema registered beforehand, looked up by subject)."""

    def __init__(
        self, registry: SchemaRegistryClient, side: str, entity_set: str, schemas_dir: Path | None = None
    ) -> None:
        self._types = schemas.record_fields(side, entity_set, schemas_dir)
        self._ser = AvroSerializer(
            registry,
            schemas.schema_text(side, entity_set, schemas_dir),
            conf={"auto.register.schemas": False, "use.latest.version": False, "normalize.schemas": False},
        )

    def coerce_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Keep the schema's fields of a source row, typed as the schema says."""
        out: dict[str, Any] = {}
        for name, typ in self._types.items():
            v = row.get(name)
            if v is None or v == "" and typ != "string":
                out[name] = None
            elif typ == "decimal":
                out[name] = _avro_ready(v)
            elif typ == "long":
                out[name] = int(v)
            elif typ == "double":
                out[name] = float(v)
            elif typ == "boolean":
                out[name] = v if isinstance(v, bool) else str(v).lower() in ("true", "1", "yes")
            else:
                out[name] = str(v)
        return out

    def __call__(self, topic: str, value: dict[str, Any]) -> bytes:
        data = self._ser(value, SerializationContext(topic, MessageField.VALUE))
        assert data is not None
        return data


class EventDeserializer:
    """Decode Confluent-framed Avro bytes of any registered schema into a dict."""

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self._de = AvroDeserializer(registry)

    def __call__(self, topic: str, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise DeserializationError("empty value (not a Confluent-framed Avro record)")
        if data[0] != 0 or len(data) < 5:
            raise DeserializationError("value does not start with the Confluent wire-format magic byte 0")
        try:
            value = self._de(data, SerializationContext(topic, MessageField.VALUE))
        except SchemaRegistryError as exc:
            raise DeserializationError(f"schema id unknown to the registry: {exc.error_message}") from None
        except Exception as exc:  # fastavro raises many types for corrupt bytes; all mean a poison record
            raise DeserializationError(f"not valid Avro for its schema: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, dict):
            raise DeserializationError("value is not an Avro record")
        return value
