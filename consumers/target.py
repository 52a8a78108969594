"""The narrow interface between the consumer loop and a target system: apply a batch, get a result each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from dualwrite.errors import DualWriteError, PermanentError, RetryableError, TargetRejectedError
from dualwrite.mapping import TargetWrite


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
