"""Typed configuration: one YAML file plus `DUALWRITE__SECTION__FIELD` environment overrides.

Validated once at start-up; an error names the field. One `Config` object is passed down; no other
module reads the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dualwrite.errors import ConfigError

ENV_PREFIX = "DUALWRITE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


AuthMethod = Literal["client-secret", "certificate", "workload-identity", "managed-identity"]


class OAuth(_Section):
    """How dualwrite gets tokens for F&O or Dataverse.

    Microsoft Entra ID (`tenant_id`): an azure-identity credential chosen by `method`, which caches and refreshes
    its tokens. `token_url` instead speaks the OAuth2 client-credentials grant to that endpoint directly (the local
    token stand-in: azure-identity talks only HTTPS to an Entra-shaped authority). Fields are checked in order, so
    a validator sees the ones declared above it.
    """

    method: AuthMethod = Field(
        default="client-secret",
        description="client-secret | certificate | workload-identity (AKS, no secret) | managed-identity.",
    )
    token_url: AnyHttpUrl | None = Field(
        default=None,
        description="A token endpoint spoken to directly with client credentials (the local stand-in); "
        "method client-secret only. Unset for Entra ID.",
    )
    tenant_id: str | None = Field(
        default=None,
        validate_default=True,
        description="Entra tenant id or domain. workload-identity: defaults to AZURE_TENANT_ID from the webhook.",
    )
    authority: str | None = Field(
        default=None, description="Entra host of a national cloud (e.g. login.microsoftonline.us); default global."
    )
    client_id: str | None = Field(
        default=None,
        validate_default=True,
        description="App registration's client id. workload-identity: defaults to the service account's "
        "azure.workload.identity/client-id; managed-identity: a user-assigned identity (unset: system-assigned).",
    )
    client_secret: str | None = Field(default=None, repr=False, validate_default=True)
    certificate_path: Path | None = Field(
        default=None, validate_default=True, description="PEM or PKCS12 file with the private key (certificate)."
    )
    certificate_password: str | None = Field(default=None, repr=False)
    token_file: Path | None = Field(
        default=None,
        description="workload-identity: the projected service account token; defaults to AZURE_FEDERATED_TOKEN_FILE.",
    )
    scope: str | None = Field(default=None, description="Defaults to '<service url>/.default'.")

    @field_validator("token_url")
    @classmethod
    def _token_url_needs_secret(cls, v: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        if v is not None and info.data.get("method", "client-secret") != "client-secret":
            raise ValueError("only with method client-secret (a plain OAuth2 token endpoint, such as the stand-in)")
        return v

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, v: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if v is None and method in ("client-secret", "certificate") and info.data.get("token_url") is None:
            raise ValueError(f"required with method {method} (the Entra tenant id or domain), or set token_url")
        return v

    @field_validator("client_id")
    @classmethod
    def _client(cls, v: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if v is None and method in ("client-secret", "certificate"):
            raise ValueError(f"required with method {method}")
        return v

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("method") == "client-secret":
            raise ValueError("required with method client-secret (from the environment, never the config file)")
        return v

    @field_validator("certificate_path")
    @classmethod
    def _certificate(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None and info.data.get("method") == "certificate":
            raise ValueError("required with method certificate")
        return v


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


BUDGETED = ("consumer", "dataverse-producer", "reconcile")


class BudgetConfig(_Section):
    """The application user's Dataverse request limit, and each component's share of it."""

    requests: int = Field(
        default=6000, ge=1, description="Requests the application user may make per window (Dataverse: 6,000)."
    )
    window_s: float = Field(default=300.0, gt=0, description="The sliding window of that limit (Dataverse: 300 s).")
    headroom: float = Field(
        default=0.9, gt=0, le=1, description="The fraction of the limit the components plan to use."
    )
    shares: dict[str, float] = Field(
        default={"consumer": 0.6, "dataverse-producer": 0.25, "reconcile": 0.15},
        description="Each component's share of the limit (summing to at most 1); when a component nears its "
        "share, its batches grow and its polls slow instead of the service answering 429. Components with "
        "their own application user each get the whole limit: give them share 1 in their own config.",
    )

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(BUDGETED))
        if unknown:
            raise ValueError(f"unknown component {', '.join(unknown)} (known: {', '.join(BUDGETED)})")
        bad = sorted(k for k, x in v.items() if not 0 < x <= 1)
        if bad:
            raise ValueError(f"the share of {', '.join(bad)} must be more than 0 and at most 1")
        if sum(v.values()) > 1 + 1e-9:
            raise ValueError(f"the shares sum to {sum(v.values()):g}; the components share one limit (at most 1)")
        return v


class DataverseConfig(_Section):
    url: AnyHttpUrl = Field(description="Organization URL, e.g. https://contoso.crm.dynamics.com")
    auth: OAuth
    more_users: dict[str, OAuth] = Field(
        default_factory=dict,
        description="Further application users, by a name of your choosing (secrets from the environment: "
        "DUALWRITE__DATAVERSE__MORE_USERS__<NAME>__CLIENT_SECRET). Dataverse limits each user on its own; every "
        "component spreads its requests over `auth` and these, each user within its own budget, so n users "
        "allow about n times the requests. Each must be an application user of the environment with the same "
        "security role as `auth`'s.",
    )
    budget: BudgetConfig = BudgetConfig()
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
        default=None,
        repr=False,
        description="Every data event must carry it: header X-Dualwrite-Secret, Authorization: Bearer <it>, or "
        "?code=<it> on the URL (F&O's HTTPS endpoint can only do this one). The receiver refuses to start "
        "without it unless allow_unauthenticated.",
    )
    previous_shared_secret: str | None = Field(
        default=None, repr=False, description="Accepted as well while rotating; unset it once F&O sends the new one."
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Accept data events without any secret: local use only, never in production."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Larger bodies are answered 413 unread. Each event of a body becomes its own Kafka record, and "
        "a dead letter larger than the producer's message.max.bytes (kafka.client, librdkafka's default 1000000; "
        "the broker's message.max.bytes must not be lower) is kept truncated, with headers saying so.",
    )
    max_events: int = Field(
        default=10_000, ge=1, description="Events in one posted array; more are answered 413 (each is a record)."
    )
    tls_certfile: Path | None = Field(
        default=None, description="Serve HTTPS with this PEM certificate (chain); unset when an ingress terminates TLS."
    )
    tls_keyfile: Path | None = Field(default=None, description="Its PEM private key, unless tls_certfile holds it.")
    tls_client_ca: Path | None = Field(
        default=None, description="Mutual TLS: accept only clients with a certificate signed by these PEM CAs."
    )
    snapshot_on_start: bool = True
    catchup_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="F&O catch-up: every interval, read the rows of each map with fo.modified_on changed since the "
        "last window over OData and publish those no data event brought (set-based writes, lost events); 0 turns "
        "it off. Deletes are found by `dualwrite reconcile`.",
    )
    catchup_overlap_s: float | None = Field(
        default=None,
        ge=0,
        description="How far each catch-up window reaches back before the last one's end (clock skew, rows committed "
        "late); default twice catchup_interval_s.",
    )
    catchup_dedup_size: int = Field(
        default=50_000,
        ge=0,
        description="Recently published (key, version) pairs remembered per map, so catch-up does not publish what a "
        "data event already did (a duplicate is harmless: the consumer skips it as stale).",
    )

    @field_validator("tls_keyfile", "tls_client_ca")
    @classmethod
    def _needs_certificate(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and info.data.get("tls_certfile") is None:
            raise ValueError("needs tls_certfile (the receiver's own certificate)")
        return v


class DataverseProducerConfig(_Section):
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="One $batch change-tracking probe of every table per interval, plus one read per changed "
        "table; it shares the app user's Dataverse budget (6,000 requests per 5 minutes) with the consumer's writes.",
    )
    idle_poll_interval_s: float = Field(
        default=3.0,
        gt=0,
        description="While no table changes, the interval doubles from poll_interval_s up to this; the first "
        "change seen brings it back (a change made after a quiet spell waits up to this long to be read); "
        "not above poll_interval_s: no backoff.",
    )
    page_size: int = Field(default=5000, ge=1, le=5000)


class ReconcileConfig(_Section):
    page_size: int = Field(
        default=5000, ge=1, le=5000, description="Dataverse rows per page (Prefer: odata.maxpagesize); F&O pages."
    )
    keys_per_request: int = Field(
        default=40, ge=1, le=200, description="Rows re-read by key in one request (the confirm and verify passes)."
    )
    max_lag_read: int = Field(
        default=1_000_000,
        ge=0,
        description="Records past the consumer group's committed offsets read per map to find changes in flight; "
        "with more, every difference of the map is reported as in flight.",
    )
    apply_timeout_s: float = Field(
        default=600.0, gt=0, description="--repair: how long to wait for the consumer to apply the repairs."
    )
    report_rows: int = Field(default=1000, ge=0, description="Rows listed per map in the report; all are counted.")
    metrics_refresh_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the fo-producer reads the last reconcile report from the status topic for its gauges.",
    )


class RetryConfig(_Section):
    initial_backoff_s: float = Field(default=0.2, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, description="Transient failures before the DLQ.")
    missing_reference_timeout_s: float = Field(
        default=300.0, ge=0, description="How long a missing lookup is retried before the DLQ."
    )
    missing_reference_backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="The longest wait between tries of a record whose lookup's row is not there yet (it usually "
        "arrives within seconds, from another map or partition); each try costs a lookup query.",
    )


class ConsumerConfig(_Section):
    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(
        default=0.01, gt=0, description="consume() waits this long unless a full batch arrives first."
    )
    session_timeout_ms: int = Field(default=6000, ge=1000)
    fetch_wait_max_ms: int = Field(
        default=100,
        ge=1,
        description="How long the broker may hold an empty fetch; bounds the idle latency. Kafka answers as soon "
        "as data is there; tansu also stops filling a fetch of many partitions at this bound, so below ~100 ms "
        "a backlog behind ~150 partitions arrives at a few records per second.",
    )
    lanes: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Write lanes: a round's changes are split by partition (so one record's changes keep their "
        "order) into up to this many parts, written concurrently; each lane sends its own requests.",
    )
    lane_min_records: int = Field(
        default=50,
        ge=1,
        description="A round is split only into lanes of at least this many changes: a small round stays one "
        "request, so lanes cost no requests at low load.",
    )
    retry: RetryConfig = RetryConfig()
    state_dir: Path = Field(
        default=Path(".dualwrite/state"),
        description="Local state files (one SQLite file per partition), rebuilt from the compacted state topic "
        "when missing; a Kubernetes volume keeps restarts fast, none is needed for correctness.",
    )


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
    schemas_dir: Path | None = Field(
        default=None,
        description="Avro schemas generated for your own maps and catalogue (python -m schemas.generate --out); "
        "the built-in schemas when unset.",
    )
    fo_producer: FoProducerConfig = FoProducerConfig()
    dataverse_producer: DataverseProducerConfig = DataverseProducerConfig()
    consumer: ConsumerConfig = ConsumerConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
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
