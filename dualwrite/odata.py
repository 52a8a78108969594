"""Client-side OData v4 pieces shared by the F&O and Dataverse clients: literals, keys, errors, $batch."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from dualwrite.errors import (
    ConcurrencyError,
    DualWriteError,
    MissingReferenceError,
    RetryableError,
    TargetRejectedError,
    ThrottledError,
)


def literal(value: Any) -> str:
    """An OData URL literal: strings quoted with '' escaping, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def key_segment(entity_set: str, key: dict[str, Any], raw: frozenset[str] = frozenset()) -> str:
    """`Set(k1='a',k2=guid)`; fields named in `raw` are written unquoted (GUIDs of lookups)."""
    parts = ",".join(f"{k}={v if k in raw else literal(v)}" for k, v in key.items())
    return f"{entity_set}({parts})"


def dumps(body: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return json.dumps(body, default=default, separators=(",", ":"))


def error_message(status: int, text: str) -> tuple[str, str | None]:
    """The useful message and service code of an OData error body (F&O puts it in innererror)."""
    try:
        err = json.loads(text).get("error", {})
    except (ValueError, AttributeError):
        return f"HTTP {status}: {text[:300]}", None
    if not isinstance(err, dict):
        return f"HTTP {status}: {text[:300]}", None
    inner = err.get("innererror") or {}
    message = (inner.get("message") if isinstance(inner, dict) else None) or err.get("message") or text[:300]
    return f"HTTP {status}: {message}", err.get("code") or None


def retry_after(headers: httpx.Headers | dict[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for(status: int, text: str, headers: httpx.Headers | dict[str, str], what: str) -> None:
    """Turn a non-2xx answer into the error type the consumer loop acts on."""
    if status < 300:
        return
    message, code = error_message(status, text)
    message = f"{what}: {message}"
    if status == 429:
        raise ThrottledError(message, retry_after(headers))
    if status == 412:
        raise ConcurrencyError(message)
    if status in (408, 502, 503, 504) or status >= 500:
        raise RetryableError(message, retry_after(headers))
    if status == 401:
        raise RetryableError(message)
    raise TargetRejectedError(message, status, code)


def check(resp: httpx.Response, what: str) -> None:
    """`raise_for` of a response, decoding its text only when it is an error (a page of 10,000 rows is
    tens of MB: its bytes are parsed as they are)."""
    if resp.status_code >= 300:
        raise_for(resp.status_code, resp.text, resp.headers, what)


def request(client: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """Send one request; transport failures become RetryableError."""
    try:
        resp = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{what}: timed out ({exc})") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"{what}: {exc}") from None
    except DualWriteError:
        raise
    return resp


TRANSIENT = frozenset({429, 500, 502, 503, 504})


def read(client: httpx.Client, url: str, what: str, retries: int = 0, **kwargs: Any) -> httpx.Response:
    """GET, which is safe to repeat: with `retries`, a transient failure (a transport error, 429 or 5xx)
    is tried again after its `Retry-After` or a growing pause (for batch jobs such as reconcile, which
    have no other retry; the components retry at their own level and pass none)."""
    for attempt in range(retries + 1):
        pause = min(30.0, 0.5 * 2**attempt)
        try:
            resp = request(client, "GET", url, what, **kwargs)
        except RetryableError:
            if attempt == retries:
                raise
            time.sleep(pause)
            continue
        if resp.status_code not in TRANSIENT or attempt == retries:
            return resp
        after = resp.headers.get("Retry-After", "")
        time.sleep(min(300.0, float(after)) if after.isdigit() else pause)
    raise AssertionError("unreachable")


def json_object(resp: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; RetryableError when it is something else (a proxy's or login page's HTML)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = resp.headers.get("content-type") or "no content type"
        raise RetryableError(
            f"{what}: answered {resp.status_code} with a body that is not a JSON object ({kind}): {resp.text[:120]!r}"
        )
    untie(resp)
    return body


def untie(resp: httpx.Response) -> None:
    """Let a read response go as soon as its last reference does. httpx ties each response to its stream in a
    reference cycle, which only Python's cyclic collector frees, and a full collection is rare: the pages of a
    long read (up to 10,000 rows, about 12 MB each from F&O) piled up until one came, so a reconcile's memory
    grew with the table instead of staying at a page. The stream is closed once the body is read."""
    if resp.is_closed:
        resp.stream = httpx.ByteStream(b"")


@dataclass
class BatchPart:
    method: str
    url: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PartResult:
    status: int
    headers: dict[str, str]
    text: str

    def error(self, what: str) -> DualWriteError | None:
        try:
            raise_for(self.status, self.text, self.headers, what)
        except DualWriteError as exc:
            return exc
        return None


def build_batch(parts: list[BatchPart], base_path: str, atomic_each: bool) -> tuple[str, bytes]:
    """A multipart/mixed $batch body; with `atomic_each` every request gets its own change set."""
    boundary = f"batch_{uuid.uuid4()}"
    lines: list[str] = []
    for i, part in enumerate(parts, start=1):
        lines.append(f"--{boundary}")
        inner = _http_part(part, base_path, content_id=i)
        if atomic_each and part.method != "GET":
            cs = f"changeset_{uuid.uuid4()}"
            lines.append(f"Content-Type: multipart/mixed; boundary={cs}")
            lines.append("")
            lines.append(f"--{cs}")
            lines.append(inner)
            lines.append(f"--{cs}--")
        else:
            lines.append(inner)
    lines.append(f"--{boundary}--")
    lines.append("")
    return f"multipart/mixed; boundary={boundary}", "\r\n".join(lines).encode()


def _http_part(part: BatchPart, base_path: str, content_id: int) -> str:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary", f"Content-ID: {content_id}", ""]
    # The request line is space-separated: key values (e.g. 'Cost centers') must be percent-encoded.
    url = quote(part.url.lstrip("/"), safe="/()=',$:@!*+;&?-._~%")
    req = [f"{part.method} {base_path.rstrip('/')}/{url} HTTP/1.1"]
    headers = dict(part.headers)
    payload = ""
    if part.body is not None:
        headers.setdefault("Content-Type", "application/json")
        payload = dumps(part.body)
    req += [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(head + req + ["", payload])


def parse_batch_response(content_type: str, body: bytes) -> list[PartResult]:
    """Every HTTP response in a multipart/mixed $batch answer, in order (change sets flattened)."""
    boundary = _boundary(content_type)
    if boundary is None:
        raise RetryableError(f"$batch answer is not multipart ({content_type})")
    results: list[PartResult] = []
    for chunk in _split(body.decode("utf-8", "replace"), boundary):
        headers, _, rest = chunk.partition("\r\n\r\n")
        ctype = _header(headers, "content-type") or ""
        if ctype.startswith("multipart/mixed"):
            results.extend(parse_batch_response(ctype, rest.encode()))
            continue
        status_line, _, after = rest.partition("\r\n")
        try:
            status = int(status_line.split(" ")[1])
        except (IndexError, ValueError):
            raise RetryableError(f"$batch answer has a malformed part: {status_line[:80]!r}") from None
        hdrs, _, text = after.partition("\r\n\r\n")
        parsed = {}
        for line in hdrs.split("\r\n"):
            k, sep, v = line.partition(":")
            if sep:
                parsed[k.strip().lower()] = v.strip()
        results.append(PartResult(status, parsed, text.strip()))
    return results


def _boundary(content_type: str) -> str | None:
    for piece in content_type.split(";"):
        k, _, v = piece.strip().partition("=")
        if k.lower() == "boundary":
            return v.strip('"')
    return None


def _header(block: str, name: str) -> str | None:
    for line in block.split("\r\n"):
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name:
            return v.strip()
    return None


def _split(text: str, boundary: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    chunks = []
    for piece in text.split(f"--{boundary}")[1:]:
        if piece.startswith("--"):
            break
        chunks.append(piece.strip("\r\n"))
    return chunks


__all__ = [
    "BatchPart",
    "MissingReferenceError",
    "PartResult",
    "build_batch",
    "key_segment",
    "literal",
    "parse_batch_response",
    "raise_for",
    "request",
]
