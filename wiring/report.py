"""What `dualwrite status` shows: per map and direction, state, lag, applied and DLQ counts."""

from __future__ import annotations

import time
from typing import Any

from dualwrite import control, kafka, status
from dualwrite.config import Config
from dualwrite.envelope import Side
from dualwrite.order import dependency_order, waits_on
from wiring.components import enabled_maps


def collect(cfg: Config) -> list[dict[str, Any]]:
    kafka.check_reachable(cfg.kafka)
    maps = enabled_maps(cfg)
    published = status.read_status(cfg.kafka)
    paused = control.paused_maps(cfg.kafka)
    rows = []
    for towards in (Side.DATAVERSE, Side.FO):
        direction = f"{towards.other.value}->{towards.value}"
        # A one-way map has no row for the direction it does not write.
        sources = {
            name: kafka.map_topics(cfg.kafka.topic_prefix, m)[towards.other.value]
            for name, m in maps.items()
            if m.writes_to(towards.value)
        }
        group = kafka.group_id(cfg.kafka.topic_prefix)
        lag = status.consumer_lag(cfg.kafka, group, list(sources.values()))
        depth = status.topic_depth(cfg.kafka, [kafka.dlq_topic(t) for t in sources.values()])
        instances = [s for s in published if s.get("direction") == direction]
        alive = [
            s for s in instances if s.get("state") == "running" and time.time() - s["time"] < status.ALIVE_WITHIN_S
        ]
        for name in dependency_order(maps):
            if name not in sources:
                continue
            counts: dict[str, int] = {}
            for s in instances:
                for outcome, n in s.get("maps", {}).get(name, {}).items():
                    counts[outcome] = counts.get(outcome, 0) + n
            rows.append(
                {
                    "map": name,
                    "direction": direction,
                    "topic": sources[name],
                    "state": "paused" if name in paused else "running" if alive else "stopped",
                    "waits_on": waits_on(maps, name, paused),
                    "lag": lag.get(sources[name], 0),
                    "applied": counts.get("applied", 0) + counts.get("coalesced", 0),
                    "skipped": counts.get("skipped_equal", 0) + counts.get("filtered", 0),
                    "dlq": depth.get(kafka.dlq_topic(sources[name]), 0),
                }
            )
    return rows
