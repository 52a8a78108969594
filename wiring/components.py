"""The long-running components (producers and consumers), startable in-process or as processes."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from consumers.dataverse import DataverseTarget
from consumers.fo import FoTarget
from consumers.loop import ConsumerLoop
from consumers.target import Target
from dualwrite import kafka, metrics, registry
from dualwrite.config import Config
from dualwrite.dataverse import DataverseClient, LookupCache
from dualwrite.errors import ConfigError, DualWriteError
from dualwrite.fo import FoClient
from dualwrite.metrics import OpsServer
from dualwrite.server import BackgroundServer, Tls
from dualwrite.state import StateStore
from dualwrite.tablemap import TableMap, load_maps
from producers.dataverse import DataverseProducer
from producers.fo import FoProducer

log = logging.getLogger("dualwrite")

NAMES = ("fo-producer", "dataverse-producer", "consumer")


class Component(Protocol):
    ops_url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ready(self) -> bool: ...

    def alive(self) -> bool: ...


def _guarded(name: str, work: Callable[[], None]) -> Callable[[], None]:
    """Process boundary of a worker thread: an unexpected error is logged with context, not lost."""

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("%s stopped on an unexpected error", name)
            raise

    return run


def enabled_maps(cfg: Config) -> dict[str, TableMap]:
    return load_maps(cfg.maps_dir, cfg.maps)


def prepare(cfg: Config, maps: dict[str, TableMap]) -> None:
    """Idempotent set-up every component may run: topics (with DLQs) and schemas (BACKWARD)."""
    kafka.ensure_topics(cfg.kafka, list(maps.values()))
    registry.check_reachable(cfg.schema_registry)
    registry.register_all(cfg.schema_registry, cfg.kafka.topic_prefix, list(maps.values()), cfg.schemas_dir)


class FoProducerComponent:
    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.producer = FoProducer(cfg, maps)
        fp = cfg.fo_producer
        tls = Tls(fp.tls_certfile, fp.tls_keyfile, fp.tls_client_ca) if fp.tls_certfile else None
        self.http = BackgroundServer(self.producer.app, fp.listen_host, fp.listen_port, tls)
        self.ops = OpsServer(cfg.ops.host, cfg.ops.port, self.ready, self.alive)
        self.ops_url = self.ops.url
        self.url = f"{self.http.url}{cfg.fo_producer.path}"
        self._snapshot: threading.Thread | None = None

    def start(self) -> None:
        self.ops.start()
        self.http.start()
        self._snapshot = self.producer.start_background()

    def ready(self) -> bool:
        return self.producer.ready.is_set()

    def alive(self) -> bool:
        snapshot_died = self._snapshot is not None and not self._snapshot.is_alive() and not self.ready()
        return self.http.thread.is_alive() and not snapshot_died

    def stop(self) -> None:
        self.http.stop()
        self.producer.close()
        self.ops.stop()


class DataverseProducerComponent:
    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.producer = DataverseProducer(cfg, maps)
        self.ops = OpsServer(cfg.ops.host, cfg.ops.port, self.ready, self.alive)
        self.ops_url = self.ops.url
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.ops.start()
        self._thread = threading.Thread(
            target=_guarded("dataverse-producer", self.producer.run), daemon=True, name="dataverse-producer"
        )
        self._thread.start()

    def ready(self) -> bool:
        return self.producer.ready.is_set()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stop(self) -> None:
        self.producer.stop()
        if self._thread:
            self._thread.join(timeout=15)
        self.ops.stop()


class ConsumerComponent:
    """One consumer for both directions: each instance owns partition p of every map topic, and with it the
    sync state of the records there (restored from the `<prefix>.state` changelog on assignment)."""

    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        dv_client = DataverseClient(cfg.dataverse, "consumer")
        targets: dict[str, Target] = {
            "dataverse": DataverseTarget(
                maps, client=dv_client, lookups=LookupCache(dv_client), schemas_dir=cfg.schemas_dir
            ),
            "fo": FoTarget(maps, client=FoClient(cfg.fo), schemas_dir=cfg.schemas_dir),
        }
        deserializer = registry.EventDeserializer(registry.client(cfg.schema_registry))
        store = StateStore(cfg.kafka, cfg.consumer.state_dir)
        self.loop = ConsumerLoop(cfg, maps, targets, deserializer, store, dv_client.budget)
        self.ops = OpsServer(cfg.ops.host, cfg.ops.port, self.ready, self.alive)
        self.ops_url = self.ops.url
        self._thread = threading.Thread(target=_guarded("consumer", self.loop.run), daemon=True, name="consumer")

    def start(self) -> None:
        self.ops.start()
        self._thread.start()

    def ready(self) -> bool:
        return self.loop.assigned.is_set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.loop.stop()
        self._thread.join(timeout=15)
        self.ops.stop()


def build(name: str, cfg: Config, maps: dict[str, TableMap]) -> Component:
    if name in NAMES:
        metrics.initialise(maps.values(), name)  # every series at 0 before its first increment, so alerts see it
    if name == "fo-producer":
        return FoProducerComponent(cfg, maps)
    if name == "dataverse-producer":
        return DataverseProducerComponent(cfg, maps)
    if name == "consumer":
        return ConsumerComponent(cfg, maps)
    raise ConfigError(f"unknown component {name!r}; one of {', '.join(NAMES)}")


def run_until_signalled(component: Component) -> None:
    """Start, then block until SIGINT or SIGTERM, then stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    component.start()
    log.info("started; ops at %s", component.ops_url)
    while not stop.wait(1.0):
        if not component.alive():
            component.stop()
            raise DualWriteError("the component's worker stopped on an unexpected error (logged above)")
    component.stop()
