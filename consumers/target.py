"""The narrow interface between the consumer loop and a target system: apply a batch, get a result each."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from dualwrite import odata
from dualwrite.errors import DualWriteError, PermanentError, RetryableError, TargetRejectedError
from dualwrite.mapping import TargetWrite
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer.target")


class Outcome(StrEnum):
    APPLIED = "applied"
    SKIPPED_EQUAL = "skipped_equal"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: DualWriteError | None = None


APPLIED = Result(Outcome.APPLIED)
SKIPPED = Result(Outcome.SKIPPED_EQUAL)


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

    def __init__(self, maps: dict[str, TableMap]) -> None:
        self.maps = maps

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
                try:
                    part = self.plan(m, writes[i], current.get(ident(writes[i])))
                except DualWriteError as exc:
                    results[i] = from_error(exc)
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
