"""The error hierarchy: one root, with retryable vs permanent visible in the type."""

from __future__ import annotations


class DualWriteError(Exception):
    """Root of every error dualwrite raises on purpose."""


class ConfigError(DualWriteError):
    """Bad configuration or environment at start-up (names the field or resource)."""


class RetryableError(DualWriteError):
    """Transient: timeouts, 5xx, throttling. Retry with backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(RetryableError):
    """429 from a service-protection limit; `retry_after` holds the server's Retry-After seconds."""


class AuthError(RetryableError):
    """The token endpoint refused or failed a token (4xx, 429, 5xx, unreachable).

    Never a reason to dead-letter a record: retry with `retry_after` until a token comes.
    """

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, retry_after)
        self.status = status


class PartitionLostError(RetryableError):
    """Another consumer claimed the partition (this one's group session ended without it knowing): its
    records wait for the next assignment. Never a reason to dead-letter a record."""


class MissingReferenceError(RetryableError):
    """A lookup target is not there yet; retried for a while, then dead-lettered."""


class PermanentError(DualWriteError):
    """Will fail the same way every time: send to the DLQ at once."""

    code = "permanent"


class MappingError(PermanentError):
    """The table map cannot translate a record (unknown enum value, missing required field)."""

    code = "mapping"


class CoercionError(PermanentError):
    """A source value that the Avro schema's type cannot take (text in a decimal field, a list in a string)."""

    code = "coercion"


class TargetRejectedError(PermanentError):
    """The target refused the write (validation 4xx)."""

    code = "target-rejected"

    def __init__(self, message: str, status: int | None = None, service_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.service_code = service_code


class DeserializationError(PermanentError):
    """Bytes that are not a valid record of the topic's schema (poison message)."""

    code = "deserialization"


class ConcurrencyError(RetryableError):
    """412 precondition failed: the target row changed under us; re-read and retry."""
