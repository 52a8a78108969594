"""The narrow interface between the consumer loop and a target system: apply a batch, get a result each."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from dualwrite import odata
from dualwrite.envelope import ChangeEvent
from dualwrite.errors import DualWriteError, PermanentError, RetryableError, TargetRejectedError
from dualwrite.mapping import TargetWrite, may_overwrite
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer.target")


class Outcome(StrEnum):
    APPLIED = "applied"
    SKIPPED_EQUAL = "skipped_equal"
    SKIPPED_CONFLICT = "skipped_conflict"  # the target holds a newer (or winning) change of its own
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: DualWriteError | None = None


APPLIED = Result(Outcome.APPLIED)
SKIPPED = Result(Outcome.SKIPPED_EQUAL)
LOST_CONFLICT = Result(Outcome.SKIPPED_CONFLICT)


def parse_time(value: Any) -> datetime | None:
    """An OData datetime (ISO 8601, 'Z' allowed); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def from_error(error: DualWriteError) -> Result:
    if isinstance(error, RetryableError):
        return Result(Outcome.RETRY, error)
    if isinstance(error, PermanentError):
        return Result(Outcome.FAILED, error)
    return Result(Outcome.FAILED, TargetRejectedError(str(error)))


class Target(Protocol):
    def apply_batch(self, writes: list[TargetWrite]) -> list[Result]:
        """Apply writes (at most one per record identity); one Result per write, in order."""
        ...

    def take_kept(self, fields_of: Callable[[TableMap], list[str]]) -> list[ChangeEvent]:
        """Rows of this side that won a conflict, as change events to send out."""
        ...

    def close(self) -> None: ...


Ident = tuple[str, tuple[str, ...]]


def ident(w: TargetWrite) -> Ident:
    """A record's identity as targets index current rows: (company, lower-cased key values)."""
    return w.company.lower(), tuple(str(v).lower() for v in w.key.values())


class ODataTarget(ABC):
    """Apply a batch the same way on either side: read the current rows of each map once, plan one
    request per write (None when the target already holds the values), send all in one $batch, and
    turn each answer into a Result. Subclasses say how to read, plan, send and judge an answer."""

    system = "target"

    def __init__(self, maps: dict[str, TableMap], integration_user_id: str | None = None) -> None:
        self.maps = maps
        self.integration_user_id = (integration_user_id or "").lower() or None
        # Rows that kept their value in a conflict, to be sent back out to the other side.
        self.kept: list[tuple[TableMap, dict[str, Any]]] = []

    def modified(self, m: TableMap, row: dict[str, Any]) -> tuple[datetime | None, str | None]:
        """When and by whom the target row was last changed (None, None when the side does not say)."""
        return None, None

    def kept_event(self, m: TableMap, row: dict[str, Any], fields: list[str]) -> ChangeEvent | None:
        """A change event of this side carrying a row that won a conflict, so the other side gets it too."""
        return None

    def take_kept(self, fields_of: Callable[[TableMap], list[str]]) -> list[ChangeEvent]:
        """The kept rows of the last batches as change events of this side (and forget them)."""
        kept, self.kept = self.kept, []
        events = [self.kept_event(m, row, fields_of(m)) for m, row in kept]
        return [e for e in events if e is not None]

    def person_change(self, m: TableMap, row: dict[str, Any]) -> datetime | None:
        """When a person last changed the row; None when dualwrite wrote it last (or it cannot be told)."""
        when, who = self.modified(m, row)
        if who is None or (self.integration_user_id is not None and who.lower() == self.integration_user_id):
            return None
        return when

    def _lost(self, m: TableMap, w: TargetWrite, row: dict[str, Any]) -> bool:
        """Whether the target's own change wins over this write (then the write is skipped)."""
        changed = self.person_change(m, row)
        if may_overwrite(m.conflict, w.towards, w.source_time, changed):
            return False
        log.info(
            "conflict on %s %s: the %s row changed at %s wins over the change of %s",
            m.name,
            w.key,
            w.towards.value,
            changed,
            w.source_time,
        )
        # The target's row is sent back out as a change of its own side. Usually its own change event
        # is on the way anyway; but within the truth window, or on a tie (both systems keep whole
        # seconds), the winning row may have no event of its own left, and the other side must get it.
        self.kept.append((m, row))
        return True

    @abstractmethod
    def current_rows(self, m: TableMap, writes: list[TargetWrite]) -> dict[Ident, dict[str, Any]]:
        raise NotImplementedError

    @abstractmethod
    def plan(self, m: TableMap, w: TargetWrite, row: dict[str, Any] | None) -> odata.BatchPart | None:
        raise NotImplementedError

    @abstractmethod
    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        raise NotImplementedError

    def judge(self, w: TargetWrite, part: odata.BatchPart, answer: odata.PartResult) -> Result:
        if answer.status == 404 and part.method == "DELETE":
            return SKIPPED  # already gone: the delete converged
        error = answer.error(f"{self.system} {part.method} {part.url}")
        return APPLIED if error is None else from_error(error)

    def apply_batch(self, writes: list[TargetWrite]) -> list[Result]:
        results: list[Result] = [SKIPPED] * len(writes)
        planned: list[tuple[int, odata.BatchPart]] = []
        by_map: dict[str, list[int]] = defaultdict(list)
        for i, w in enumerate(writes):
            by_map[w.map_name].append(i)
        for map_name, idxs in by_map.items():
            m = self.maps[map_name]
            try:
                current = self.current_rows(m, [writes[i] for i in idxs])
            except DualWriteError as exc:
                for i in idxs:
                    results[i] = from_error(exc)
                continue
            for i in idxs:
                row = current.get(ident(writes[i]))
                try:
                    part = self.plan(m, writes[i], row)
                except DualWriteError as exc:
                    results[i] = from_error(exc)
                    continue
                if part is not None and row is not None and self._lost(m, writes[i], row):
                    results[i] = LOST_CONFLICT
                    continue
                if part is not None:
                    log.debug("%s %s %s %s", self.system, part.method, part.url, sorted((part.body or {}).keys()))
                    planned.append((i, part))
        if not planned:
            return results
        try:
            answers = self.send([part for _, part in planned])
        except DualWriteError as exc:
            for i, _ in planned:
                results[i] = from_error(exc)
            return results
        for (i, part), answer in zip(planned, answers, strict=True):
            results[i] = self.judge(writes[i], part, answer)
        return results
