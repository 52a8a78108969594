"""Typed configuration: one YAML file plus `DUALWRITE__SECTION__FIELD` environment overrides.

Validated once at start-up; an error names the field. One `Config` object is passed down; no other
module reads the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator

from dualwrite.errors import ConfigError

ENV_PREFIX = "DUALWRITE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OAuth(_Section):
    """OAuth2 client credentials (Microsoft Entra ID: token_url is .../<tenant>/oauth2/v2.0/token)."""

    token_url: AnyHttpUrl
    client_id: str
    client_secret: str = Field(repr=False)
    scope: str | None = Field(default=None, description="Defaults to '<service url>/.default'.")


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "dualwrite"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    client: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Extra librdkafka settings (security.protocol, sasl.*, ssl.*)."
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{hp!r} is not host:port")
        return v


class RegistryConfig(_Section):
    url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8081")
    basic_auth_user_info: str | None = Field(default=None, repr=False)
    compatibility: str = "BACKWARD"


class FoConfig(_Section):
    url: AnyHttpUrl = Field(description="Environment URL, e.g. https://contoso.operations.dynamics.com")
    auth: OAuth
    integration_user_id: str | None = Field(
        default=None, description="User id that dualwrite writes as; its data events are dropped (no echo)."
    )
    timeout_s: float = 30.0


class DataverseConfig(_Section):
    url: AnyHttpUrl = Field(description="Organization URL, e.g. https://contoso.crm.dynamics.com")
    auth: OAuth
    integration_user_id: str | None = Field(
        default=None, description="Defaults to WhoAmI of the configured client; its changes are not echoed."
    )
    timeout_s: float = 30.0
    max_batch: int = Field(default=200, ge=1, le=1000)


class FoProducerConfig(_Section):
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8480, ge=0, le=65535)
    path: str = "/events"
    shared_secret: str | None = Field(
        default=None, repr=False, description="Required as ?code=... on the data-event endpoint URL when set."
    )
    snapshot_on_start: bool = True


class DataverseProducerConfig(_Section):
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="One $batch change-tracking probe of every table per interval, plus one read per changed "
        "table; it shares the app user's Dataverse budget (6,000 requests per 5 minutes) with the consumer's writes.",
    )
    page_size: int = Field(default=5000, ge=1, le=5000)


class RetryConfig(_Section):
    initial_backoff_s: float = Field(default=0.2, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, description="Transient failures before the DLQ.")
    missing_reference_timeout_s: float = Field(
        default=300.0, ge=0, description="How long a missing lookup is retried before the DLQ."
    )


class ConsumerConfig(_Section):
    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(
        default=0.01, gt=0, description="consume() waits this long unless a full batch arrives first."
    )
    session_timeout_ms: int = Field(default=6000, ge=1000)
    fetch_wait_max_ms: int = Field(
        default=20, ge=1, description="How long the broker may hold an empty fetch; bounds the idle latency."
    )
    retry: RetryConfig = RetryConfig()


class OpsConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9400, ge=0, le=65535, description="/metrics, /healthz, /readyz")


class Config(_Section):
    kafka: KafkaConfig = KafkaConfig()
    schema_registry: RegistryConfig = RegistryConfig()
    fo: FoConfig
    dataverse: DataverseConfig
    companies: list[str] = Field(default_factory=lambda: ["usmf", "demf"], min_length=1)
    maps: list[str] | None = Field(default=None, description="Enabled maps; all maps in maps_dir when unset.")
    maps_dir: Path | None = None
    fo_producer: FoProducerConfig = FoProducerConfig()
    dataverse_producer: DataverseProducerConfig = DataverseProducerConfig()
    consumer: ConsumerConfig = ConsumerConfig()
    ops: OpsConfig = OpsConfig()

    @field_validator("companies")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [c.lower() for c in v]


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {part} is not a section")
        # Strings stay strings (a secret like '0123' or '@x' must not be reinterpreted); pydantic
        # converts numbers and booleans itself. Lists and mappings may be given as JSON.
        node[path[-1]] = json.loads(value) if value[:1] in ("[", "{") else value
    return raw


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {first['msg']}{more}") from None


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Read `path` (YAML), apply environment overrides, validate. Raises ConfigError naming the field."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config file must be a YAML mapping")
        raw = loaded or {}
    raw = _apply_env(raw, dict(os.environ if environ is None else environ))
    return parse_config(raw, str(path) if path else "environment")
