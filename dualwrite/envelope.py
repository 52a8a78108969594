"""The change envelope every Kafka value carries (see DESIGN.md, "Change event")."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# The header of change events `dualwrite reconcile --repair` publishes (the run's id): the consumer reads the
# target and asserts the source's one-way values even where the sync state says the versions are known.
REPAIR_HEADER = "dualwrite.reconcile.run"


class Op(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    SNAPSHOT = "snapshot"


class Side(StrEnum):
    FO = "fo"
    DATAVERSE = "dataverse"

    @property
    def other(self) -> Side:
        return Side.DATAVERSE if self is Side.FO else Side.FO


@dataclass(frozen=True)
class Origin:
    side: Side
    by_dualwrite: bool = False
    user_id: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class ChangeEvent:
    """One change of one row on one side; `after` is None on delete."""

    op: Op
    entity: str
    company: str
    key: str
    source_time: datetime
    origin: Origin
    after: dict[str, Any] | None
    source_version: str | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # The row's own id at the source (Dataverse primary key, F&O data-event Id): tells a re-created
    # row from the one deleted before it.
    source_id: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "op": self.op.value,
            "entity": self.entity,
            "company": self.company,
            "key": self.key,
            "source_time": self.source_time,
            "source_version": self.source_version,
            "source_id": self.source_id,
            "origin": {
                "side": self.origin.side.value,
                "by_dualwrite": self.origin.by_dualwrite,
                "user_id": self.origin.user_id,
                "correlation_id": self.origin.correlation_id,
            },
            "after": self.after,
        }

    @classmethod
    def from_avro(cls, value: dict[str, Any]) -> ChangeEvent:
        origin = value["origin"]
        source_time = value["source_time"]
        if isinstance(source_time, int):
            source_time = datetime.fromtimestamp(source_time / 1000, UTC)
        return cls(
            op=Op(value["op"]),
            entity=value["entity"],
            company=value["company"],
            key=value["key"],
            source_time=source_time,
            origin=Origin(
                side=Side(origin["side"]),
                by_dualwrite=origin["by_dualwrite"],
                user_id=origin.get("user_id"),
                correlation_id=origin.get("correlation_id"),
            ),
            after=value.get("after"),
            source_version=value.get("source_version"),
            event_id=value["event_id"],
            source_id=value.get("source_id"),
        )


def record_key(company: str, natural_key: list[Any]) -> str:
    """The Kafka key `company|natural key`, so one record's changes stay in one partition."""
    return "|".join([company.lower(), *(str(v) for v in natural_key)])
