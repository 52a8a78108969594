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
from dualwrite import kafka, registry
from dualwrite.config import Config
from dualwrite.dataverse import DataverseClient, LookupCache
from dualwrite.envelope import Side
from dualwrite.errors import ConfigError, DualWriteError
from dualwrite.fo import FoClient
from dualwrite.metrics import OpsServer
from dualwrite.server import BackgroundServer
from dualwrite.tablemap import TableMap, load_maps
from producers.dataverse import DataverseProducer
from producers.fo import FoProducer

log = logging.getLogger("dualwrite")

NAMES = ("fo-producer", "dataverse-producer", "consumer-dataverse", "consumer-fo")


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
    registry.register_all(cfg.schema_registry, cfg.kafka.topic_prefix, list(maps.values()))


class FoProducerComponent:
    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.producer = FoProducer(cfg, maps)
        self.http = BackgroundServer(self.producer.app, cfg.fo_producer.listen_host, cfg.fo_producer.listen_port)
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
    def __init__(self, cfg: Config, maps: dict[str, TableMap], towards: Side) -> None:
        target: Target
        if towards is Side.DATAVERSE:
            client = DataverseClient(cfg.dataverse)
            target = DataverseTarget(client, maps, LookupCache(client), cfg.dataverse.integration_user_id)
        else:
            target = FoTarget(FoClient(cfg.fo), maps, cfg.fo.integration_user_id)
        deserializer = registry.EventDeserializer(registry.client(cfg.schema_registry))
        self.loop = ConsumerLoop(cfg, maps, towards, target, deserializer)
        self.ops = OpsServer(cfg.ops.host, cfg.ops.port, self.ready, self.alive)
        self.ops_url = self.ops.url
        name = f"consumer-{towards.value}"
        self._thread = threading.Thread(target=_guarded(name, self.loop.run), daemon=True, name=name)

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
    if name == "fo-producer":
        return FoProducerComponent(cfg, maps)
    if name == "dataverse-producer":
        return DataverseProducerComponent(cfg, maps)
    if name == "consumer-dataverse":
        return ConsumerComponent(cfg, maps, Side.DATAVERSE)
    if name == "consumer-fo":
        return ConsumerComponent(cfg, maps, Side.FO)
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
