"""The narrow interface between the consumer and a target system: read rows, apply writes, get a
result for each. The two OData services share the mechanism (`ODataTarget`): one `$batch` per call,
each write with its precondition, each answer judged the same way."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, Protocol

from dualwrite import odata
from dualwrite.envelope import ChangeEvent
from dualwrite.errors import (
    ConcurrencyError,
    DualWriteError,
    MissingReferenceError,
    PermanentError,
    RetryableError,
    TargetRejectedError,
)
from dualwrite.mapping import TargetWrite
from dualwrite.merge import Ack
from dualwrite.observe import etag_of, version_of
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer.target")

Ident = tuple[str, tuple[str, ...]]


def ident(company: str, key: dict[str, Any]) -> Ident:
    """A record's identity as targets index rows: (company, lower-cased key values)."""
    return company.lower(), tuple(str(v).lower() for v in key.values())


@dataclass(frozen=True)
class Write:
    """One write: a create (all of `change`), an update (only `change`'s values, which are the fields
    to write) or a delete, with the target's precondition (`if_match`) and the row's id when known."""

    map: TableMap
    action: Literal["create", "update", "delete"]
    change: TargetWrite
    if_match: str | None = None
    row_id: str | None = None


class Outcome(StrEnum):
    DONE = "done"
    CONFLICT = "conflict"  # 412, or the row is gone: read it and plan again
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    ack: Ack | None = None
    error: DualWriteError | None = None
    answered: bool = True  # False: the request may or may not have reached the service (a timeout)


def from_error(error: DualWriteError) -> Result:
    if isinstance(error, ConcurrencyError):
        return Result(Outcome.CONFLICT, error=error)
    if isinstance(error, RetryableError):
        return Result(Outcome.RETRY, error=error)
    if isinstance(error, PermanentError):
        return Result(Outcome.FAILED, error=error)
    return Result(Outcome.FAILED, error=TargetRejectedError(str(error)))


class Target(Protocol):
    side: str

    def read(self, m: TableMap, keys: list[tuple[str, dict[str, Any]]]) -> dict[Ident, ChangeEvent]:
        """The rows now there for (company, key) pairs, as change events of this side."""
        ...

    def write(self, writes: list[Write]) -> list[Result]:
        """Apply the writes (at most one per record); one Result per write, in order."""
        ...

    def close(self) -> None: ...


@dataclass
class _Sent:
    index: int
    part: odata.BatchPart
    write: Write


@dataclass
class ODataTarget(ABC):
    """Writes as one `$batch` of requests; a subclass says how to build each request and read its answer."""

    maps: dict[str, TableMap]
    system: str = field(default="target", init=False)

    def missing_references(self, changes: list[TargetWrite]) -> dict[int, MissingReferenceError]:
        """Which of `changes` (by index) refer to rows the target does not have yet, found without reading
        the changes' own rows (none for a target whose references are plain key values)."""
        return {}

    @abstractmethod
    def part(self, w: Write) -> odata.BatchPart:
        """The request of one write (raises DualWriteError when it cannot be made, e.g. a missing lookup)."""
        raise NotImplementedError

    @abstractmethod
    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        raise NotImplementedError

    def ack(self, w: Write, answer: odata.PartResult) -> Ack:
        """The row's new version, ETag and id from a 2xx answer (representation body or headers)."""
        body: dict[str, Any] = {}
        if answer.text:
            try:
                parsed = json.loads(answer.text)
                body = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                body = {}
        tag = body.get("@odata.etag") or answer.headers.get("etag")
        return Ack(version_of(tag), etag_of(tag), self.row_id(w, body, answer.headers))

    def row_id(self, w: Write, body: dict[str, Any], headers: dict[str, str]) -> str | None:
        return w.row_id

    def judge(self, w: Write, part: odata.BatchPart, answer: odata.PartResult) -> Result:
        if answer.status == 404 and w.action == "delete":
            return Result(Outcome.DONE, Ack())  # already gone: the delete converged
        if answer.status == 404 and w.action == "update":
            return from_error(ConcurrencyError(f"{self.system} {part.method} {part.url}: the row is gone"))
        error = answer.error(f"{self.system} {part.method} {part.url}")
        if error is None:
            return Result(Outcome.DONE, self.ack(w, answer))
        return from_error(error)

    def write(self, writes: list[Write]) -> list[Result]:
        results: list[Result | None] = [None] * len(writes)
        sent: list[_Sent] = []
        for i, w in enumerate(writes):
            try:
                sent.append(_Sent(i, self.part(w), w))
            except DualWriteError as exc:
                results[i] = from_error(exc)
        if sent:
            try:
                answers = self.send([s.part for s in sent])
            except DualWriteError as exc:
                answers = []
                for s in sent:
                    results[s.index] = replace(from_error(exc), answered=False)
            for s, answer in zip(sent, answers, strict=False):
                log.debug("%s %s %s -> %s", self.system, s.part.method, s.part.url, answer.status)
                results[s.index] = self.judge(s.write, s.part, answer)
        return [r if r is not None else from_error(MissingReferenceError("not sent")) for r in results]
