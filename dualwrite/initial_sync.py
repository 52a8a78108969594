"""Initial sync: copy the rows that exist on each map's master side to the other side.

Maps run in dependency order. Rows are read in key order and published as `snapshot` change events
(tagged with the run id) to the master side's topic, so the consumers apply them exactly like live
changes: batched, convergence-checked, failures to the DLQ. After each acknowledged page the last
key is checkpointed, so a crashed run resumes after it; rows re-sent from the last page find the
target already equal and are not written twice. A map starts only when the consumer has applied
every map it refers to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from consumers.loop import group_id
from dualwrite import kafka, odata
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import Config
from dualwrite.envelope import ChangeEvent, Side
from dualwrite.errors import DualWriteError
from dualwrite.fo import FoClient
from dualwrite.order import dependency_order
from dualwrite.tablemap import TableMap
from producers.fo import snapshot_event, source_filter
from producers.publish import Publisher

RUN_HEADER = "dualwrite.sync.run"
PAGE = 1000


@dataclass
class MapProgress:
    name: str
    total: int | None = None
    done: int = 0
    resumed_at: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return (self.done - self.resumed_at) / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


def _after_key(fields: list[str], last: list[str]) -> str:
    """OData filter for rows whose (fields) tuple sorts after `last`."""
    ors = []
    for i in range(len(fields)):
        eqs = [f"{fields[j]} eq {odata.literal(last[j])}" for j in range(i)]
        ors.append("(" + " and ".join([*eqs, f"{fields[i]} gt {odata.literal(last[i])}"]) + ")")
    return "(" + " or ".join(ors) + ")"


def _key_fields(m: TableMap) -> list[str]:
    """The F&O read order: company first (unless global), then the key."""
    company = [m.fo.company_field] if m.fo.company_field else []
    return [*company, *[k for k in m.fo.key if k != m.fo.company_field]]


class InitialSync:
    def __init__(self, cfg: Config, maps: dict[str, TableMap], run_id: str | None = None, page: int = PAGE) -> None:
        self.cfg = cfg
        self.page = page
        self.maps = maps
        self.checkpoints = CheckpointStore(cfg.kafka)
        self.checkpoints.load()
        current = self.checkpoints.get("sync|current-run")
        self.run_id = run_id or current or uuid.uuid4().hex[:12]
        self.fo = FoClient(cfg.fo)

    def _mark(self, map_name: str, what: str) -> str:
        return f"sync|{self.run_id}|{map_name}|{what}"

    def order(self, names: list[str] | None) -> list[str]:
        order = dependency_order(self.maps)
        return [n for n in order if names is None or n in names]

    def run(self, names: list[str] | None, on_progress: Callable[[MapProgress], None]) -> list[MapProgress]:
        self.checkpoints.put_many({"sync|current-run": self.run_id})
        results = []
        for name in self.order(names):
            m = self.maps[name]
            if m.initial_sync_master != "fo":
                raise DualWriteError(f"map {name}: initial sync from Dataverse is not built yet (master: fo only)")
            progress = self._sync_map(m, on_progress)
            results.append(progress)
        self.checkpoints.put_many({"sync|current-run": None})
        self.fo.close()
        return results

    def _rows(self, m: TableMap, last: list[str] | None) -> Iterator[dict[str, Any]]:
        flt = source_filter(m, self.cfg.companies)
        if last:
            after = _after_key(_key_fields(m), last)
            flt = f"{flt} and {after}" if flt else after
        yield from self.fo.query(m.fo.entity_set, flt, orderby=_key_fields(m))

    def _sync_map(self, m: TableMap, on_progress: Callable[[MapProgress], None]) -> MapProgress:
        progress = MapProgress(m.name)
        if self.checkpoints.get(self._mark(m.name, "done")):
            progress.done = progress.resumed_at = int(self.checkpoints.get(self._mark(m.name, "count")) or 0)
            progress.total = progress.done
            progress.finished = time.monotonic()
            on_progress(progress)
            return progress
        progress.total = self.fo.count(m.fo.entity_set, source_filter(m, self.cfg.companies))
        last_text = self.checkpoints.get(self._mark(m.name, "last"))
        last = last_text.split("|") if last_text else None
        progress.done = progress.resumed_at = int(self.checkpoints.get(self._mark(m.name, "count")) or 0)
        publisher = Publisher(self.cfg, "fo", {m.name: m}, headers=[(RUN_HEADER, self.run_id)])
        key_fields = _key_fields(m)
        topic = kafka.map_topics(self.cfg.kafka.topic_prefix, m)["fo"]
        page: list[ChangeEvent] = []
        last_row: dict[str, Any] | None = None
        try:
            for raw in self._rows(m, last):
                event = snapshot_event(publisher, m, raw, self.cfg.companies, self.run_id)
                last_row = raw
                if event is not None:
                    page.append(event)
                if len(page) >= self.page:
                    self._flush(publisher, m, page, last_row, key_fields, progress)
                    page = []
                    on_progress(progress)
            self._flush(publisher, m, page, last_row, key_fields, progress)
            on_progress(progress)
            self._wait_applied(m, publisher.max_offsets, on_progress, progress)
        finally:
            publisher.close()
        progress.dead_lettered = self._dead_letters(kafka.dlq_topic(topic))
        progress.finished = time.monotonic()
        self.checkpoints.put_many({self._mark(m.name, "done"): "1"})
        on_progress(progress)
        return progress

    def _flush(
        self,
        publisher: Publisher,
        m: TableMap,
        page: list[ChangeEvent],
        last_row: dict[str, Any] | None,
        key_fields: list[str],
        progress: MapProgress,
    ) -> None:
        publisher.publish(page)
        progress.done += len(page)
        if last_row is not None:
            last = "|".join(str(last_row.get(k, "")) for k in key_fields)
            self.checkpoints.put_many(
                {self._mark(m.name, "last"): last, self._mark(m.name, "count"): str(progress.done)}
            )

    def _wait_applied(
        self,
        m: TableMap,
        offsets: dict[tuple[str, int], int],
        on_progress: Callable[[MapProgress], None],
        progress: MapProgress,
    ) -> None:
        """Block until the consumer group committed past everything this run published for the map."""
        if not offsets:
            return
        c = kafka.consumer(self.cfg.kafka, group_id(self.cfg.kafka.topic_prefix, Side.DATAVERSE))
        try:
            parts = [TopicPartition(t, p) for (t, p) in offsets]
            while True:
                committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
                if all(committed.get(k, -1) > o for k, o in offsets.items()):
                    return
                on_progress(progress)
                time.sleep(0.2)
        finally:
            c.close()

    def _dead_letters(self, dlq: str) -> int:
        count = 0
        for msg in kafka.read_to_end(self.cfg.kafka, dlq, idle_s=0.5):
            if dict(msg.headers() or []).get(RUN_HEADER) == self.run_id.encode():  # type: ignore[arg-type]
                count += 1
        return count
