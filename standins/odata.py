"""OData v4 protocol pieces shared by the stand-ins: keys, query options, ETags, $batch, request plumbing."""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from standins.store import parse_datetime

JSON_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false"
MAX_BATCH_REQUESTS = 1000


class ODataError(Exception):
    """An error answered to the client; each stand-in renders it in its service's body shape."""

    def __init__(self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class QueryError(ODataError):
    """A malformed URL, query option, key or batch body: always 400."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


# -- literals and tokens --------------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    """A literal in a key or filter: kind is string, int, decimal, bool, null, guid, datetime or enum."""

    kind: str
    value: Any


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<enum>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\w:]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDlLfF]?(?!\w))
  | (?P<ident>[A-Za-z_$@][\w.]*(?:/[\w.$]+)*)
  | (?P<punct>[(),=])
    )""",
    re.VERBOSE,
)
_STRING_TYPES = ("string", "enum")


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of a key or filter expression; raises QueryError on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def literal(kind: str, text: str) -> Lit | None:
    """The literal a token stands for, or None when the token is not a literal."""
    if kind == "string":
        return Lit("string", text[1:-1].replace("''", "'"))
    if kind == "enum":
        quote_at = text.index("'")
        return Lit("enum", text[quote_at + 1 : -1].replace("''", "'"))
    if kind == "guid":
        return Lit("guid", text.lower())
    if kind in ("datetime", "date"):
        return Lit("datetime", parse_datetime(text))
    if kind == "number":
        body = text.rstrip("mMdDlLfF")
        if re.fullmatch(r"-?\d+", body):
            return Lit("int", int(body))
        return Lit("decimal", float(body))
    if kind == "ident":
        lowered = text.lower()
        if lowered in ("true", "false"):
            return Lit("bool", lowered == "true")
        if lowered == "null":
            return Lit("null", None)
    return None


# -- resource paths and keys -------------------------------------------------------------------------
def split_resource_path(path: str) -> tuple[str, str | None, str]:
    """`Set(key)/rest` as (set name, key text or None, rest)."""
    path = path.strip("/")
    paren = path.find("(")
    slash = path.find("/")
    if paren < 0 or (0 <= slash < paren):
        name, _, rest = path.partition("/")
        return name, None, rest
    depth, in_string, i = 0, False, paren
    while i < len(path):
        ch = path[i]
        if ch == "'":
            in_string = not in_string
        elif not in_string and ch == "(":
            depth += 1
        elif not in_string and ch == ")":
            depth -= 1
            if depth == 0:
                return path[:paren], path[paren + 1 : i], path[i + 1 :].strip("/")
        i += 1
    raise QueryError(f"Bad Request - Error in query syntax: unbalanced parentheses in '{path}'.")


def parse_key(text: str) -> dict[str | None, Lit]:
    """`'x'`, `<guid>` or `a='x',b=<guid>` as {name or None: literal}."""
    tokens = tokenize(text)
    if len(tokens) == 1:
        lit = literal(*tokens[0])
        if lit is None or lit.kind == "null":
            raise QueryError(f"Bad Request - Error in query syntax: invalid key '{text}'.")
        return {None: lit}
    out: dict[str | None, Lit] = {}
    if not tokens or tokens[-1] == ("punct", ","):
        raise QueryError(f"Bad Request - Error in query syntax: invalid key '{text}'.")
    i = 0
    while i < len(tokens):
        if i + 2 >= len(tokens) or tokens[i][0] != "ident" or tokens[i + 1] != ("punct", "="):
            raise QueryError(f"Bad Request - Error in query syntax: invalid key '{text}'.")
        lit = literal(*tokens[i + 2])
        if lit is None:
            raise QueryError(f"Bad Request - Error in query syntax: invalid key value in '{text}'.")
        name = tokens[i][1]
        if name in out:
            raise QueryError(f"Bad Request - Error in query syntax: key '{name}' given twice.")
        out[name] = lit
        i += 3
        if i < len(tokens):
            if tokens[i] != ("punct", ","):
                raise QueryError(f"Bad Request - Error in query syntax: invalid key '{text}'.")
            i += 1
    return out


def format_literal(value: Any, kind: str = "string") -> str:
    """A value written as an OData URL literal (guids bare, strings quoted)."""
    if value is None:
        return "null"
    if kind in ("guid", "lookup"):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def format_key(parts: list[tuple[str, Any, str]]) -> str:
    """`(a='x',b=1)` from (name, value, field type) triples; a single guid key is written bare."""
    if len(parts) == 1 and parts[0][2] == "guid":
        return f"({parts[0][1]})"
    return "(" + ",".join(f"{n}={format_literal(v, t)}" for n, v, t in parts) + ")"


# -- $filter ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """How a property name of a query maps to SQL: its column expression, store type and enum values."""

    name: str
    sql: str
    type: str
    values: tuple[Any, ...] = ()


Resolver = Callable[[str], Column]
_EDM = {
    "string": "Edm.String",
    "enum": "Edm.String",
    "int": "Edm.Int32",
    "choice": "Edm.Int32",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "guid": "Edm.Guid",
    "lookup": "Edm.Guid",
    "null": "null",
    "date": "Edm.Date",
}
_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_FUNCS = {"contains": ("%", "%"), "startswith": ("", "%"), "endswith": ("%", "")}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _FilterParser:
    """Recursive descent over $filter tokens, emitting a parameterised SQL WHERE clause."""

    def __init__(self, text: str, resolve: Resolver, wildcards: bool) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.resolve = resolve
        self.wildcards = wildcards
        self.params: list[Any] = []

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self) -> str:
        tok = self.peek()
        return tok[1].lower() if tok and tok[0] == "ident" else ""

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise QueryError(f"Syntax error: unexpected end of $filter '{self.text}'.")
        self.i += 1
        return tok

    def expect(self, punct: str) -> None:
        if self.peek() is None:
            raise QueryError(f"Syntax error: expected '{punct}' but reached the end of $filter '{self.text}'.")
        tok = self.take()
        if tok != ("punct", punct):
            raise QueryError(f"Syntax error: expected '{punct}' but found '{tok[1]}' in $filter '{self.text}'.")

    def parse(self) -> str:
        if not self.tokens:
            raise QueryError("The $filter query option is empty.")
        sql = self.or_expr()
        if self.peek() is not None:
            raise QueryError(f"Syntax error at '{self.peek()[1]}' in $filter '{self.text}'.")  # type: ignore[index]
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.word() == "or":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.not_expr()]
        while self.word() == "and":
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def not_expr(self) -> str:
        if self.word() == "not":
            self.take()
            return f"(NOT {self.not_expr()})"
        return self.primary()

    def primary(self) -> str:
        tok = self.take()
        if tok == ("punct", "("):
            inner = self.or_expr()
            self.expect(")")
            return inner
        kind, text = tok
        if kind == "ident" and text.lower() in _FUNCS and self.peek() == ("punct", "("):
            return self.function(text.lower())
        if kind != "ident" or literal(kind, text) is not None:
            raise QueryError(f"Syntax error: expected a property name but found '{text}' in $filter '{self.text}'.")
        if "/" in text:
            raise QueryError(f"Navigation paths such as '{text}' are not supported in $filter.")
        column = self.resolve(text)
        op = self.word()
        if op == "in":
            self.take()
            return self.in_list(column)
        if op not in _OPS:
            if column.type == "bool":  # a bare boolean property is a predicate
                return f"{column.sql} = 1"
            found = self.peek()[1] if self.peek() else "end of expression"  # type: ignore[index]
            raise QueryError(f"Syntax error: expected a comparison operator after '{text}' but found '{found}'.")
        self.take()
        lit = self.literal_token(column, op)
        return self.comparison(column, op, lit)

    def literal_token(self, column: Column, op: str) -> Lit:
        tok = self.take()
        lit = literal(*tok)
        if lit is None:
            raise QueryError(f"Syntax error: expected a literal after '{column.name} {op}' but found '{tok[1]}'.")
        return lit

    def coerce(self, column: Column, lit: Lit, op: str) -> Any:
        t = column.type
        if lit.kind == "null":
            return None
        if t == "string" and lit.kind == "string":
            return lit.value
        if t == "enum" and lit.kind in ("string", "enum"):
            for allowed in column.values:
                if str(allowed).lower() == str(lit.value).lower():
                    return allowed
            raise QueryError(f"The value '{lit.value}' is not a valid value of '{column.name}'.")
        if t in ("int", "choice") and lit.kind == "int":
            return lit.value
        if t == "decimal" and lit.kind in ("int", "decimal"):
            return float(lit.value)
        if t == "bool" and lit.kind == "bool":
            return int(lit.value)
        if t in ("guid", "lookup") and lit.kind == "guid":
            return lit.value
        if t == "datetime" and lit.kind == "datetime":
            return lit.value
        raise QueryError(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{_EDM.get(t, t)}' and '{_EDM.get(lit.kind, lit.kind)}' for operator kind '{op}' "
            f"on property '{column.name}'."
        )

    def comparison(self, column: Column, op: str, lit: Lit) -> str:
        value = self.coerce(column, lit, op)
        if value is None:
            if op == "eq":
                return f"{column.sql} IS NULL"
            if op == "ne":
                return f"{column.sql} IS NOT NULL"
            return "0"
        if self.wildcards and column.type == "string" and op in ("eq", "ne") and "*" in value:
            # F&O reads '*' in an eq literal as a wildcard: 'US-*' starts with, '*x*' contains
            self.params.append(_like_escape(value).replace("*", "%"))
            like = f"{column.sql} LIKE ? ESCAPE '\\'"
            return like if op == "eq" else f"({column.sql} IS NULL OR NOT {like})"
        self.params.append(value)
        if op == "ne":  # OData: null ne 'x' is true
            return f"({column.sql} IS NULL OR {column.sql} <> ?)"
        return f"{column.sql} {_OPS[op]} ?"

    def in_list(self, column: Column) -> str:
        self.expect("(")
        values: list[Any] = []
        while True:
            values.append(self.coerce(column, self.literal_token(column, "in"), "in"))
            tok = self.take()
            if tok == ("punct", ")"):
                break
            if tok != ("punct", ","):
                raise QueryError(f"Syntax error: expected ',' or ')' in the 'in' list of '{column.name}'.")
        present = [v for v in values if v is not None]
        self.params.extend(present)
        sql = f"{column.sql} IN ({', '.join('?' for _ in present)})" if present else "0"
        return f"({sql} OR {column.sql} IS NULL)" if len(present) < len(values) else sql

    def function(self, name: str) -> str:
        self.expect("(")
        kind, text = self.take()
        if kind != "ident" or literal(kind, text) is not None:
            raise QueryError(f"The first argument of {name}() must be a property name, not '{text}'.")
        column = self.resolve(text)
        if column.type not in _STRING_TYPES:
            raise QueryError(f"{name}() needs a string property; '{column.name}' is {_EDM.get(column.type)}.")
        self.expect(",")
        lit = literal(*self.take())
        if lit is None or lit.kind != "string":
            raise QueryError(f"The second argument of {name}() must be a string literal.")
        self.expect(")")
        before, after = _FUNCS[name]
        self.params.append(before + _like_escape(lit.value) + after)
        return f"{column.sql} LIKE ? ESCAPE '\\'"


def filter_to_sql(text: str, resolve: Resolver, *, wildcards: bool = False) -> tuple[str, list[Any]]:
    """A $filter as (SQL WHERE clause, parameters); `wildcards` turns on F&O's `eq '*x*'`."""
    parser = _FilterParser(text, resolve, wildcards)
    return parser.parse(), parser.params


def parse_select(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names):
        raise QueryError(f"The $select query option '{text}' is not a comma-separated list of property names.")
    return names


def orderby_to_sql(text: str, resolve: Resolver) -> str:
    parts = []
    for item in text.split(","):
        words = item.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise QueryError(f"Syntax error in $orderby '{text}'.")
        column = resolve(words[0])
        parts.append(f"{column.sql} {'DESC' if len(words) == 2 and words[1].lower() == 'desc' else 'ASC'}")
    return ", ".join(parts)


def parse_count(name: str, text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise QueryError(f"Invalid value '{text}' for {name} query option; a non-negative integer is required.")
    return int(text)


def parse_prefer(headers: dict[str, str]) -> dict[str, str]:
    """The Prefer header as {preference: value ('' when it has none)}, names lower-cased."""
    out: dict[str, str] = {}
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', headers.get("prefer", "")):
        name, _, value = item.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def etag(version: int) -> str:
    return f'W/"{version}"'


def etag_matches(header: str, version: int) -> bool:
    """Whether an If-Match / If-None-Match value names this row version (`*` names any)."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == f'"{version}"' for t in tags)


# -- requests and responses -------------------------------------------------------------------------
@dataclass
class ODataRequest:
    """One request to a service, from HTTP or from a $batch part; `path` is relative to the service root."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    service_root: str
    caller: Any = None
    raw_query: str = ""

    def json(self) -> Any:
        if not self.body.strip():
            raise QueryError("The request body is empty; a JSON object is required.")
        try:
            value = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QueryError(f"The request body is not valid JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise QueryError("The request body must be a JSON object.")
        return value

    def url(self, **overrides: str | None) -> str:
        """This request's absolute URL with query options replaced (None removes one)."""
        params = dict(self.query)
        for name, value in overrides.items():
            key = name if name.startswith("$") or name == "cross-company" else f"${name}"
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        query = urlencode(params, quote_via=quote, safe="$,'()=*:/!")
        return self.service_root + self.path + (f"?{query}" if query else "")


@dataclass
class ODataResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> ODataResponse:
    out = {"Content-Type": JSON_TYPE, "OData-Version": "4.0", **(headers or {})}
    return ODataResponse(status, out, json.dumps(payload, ensure_ascii=False).encode())


def parse_query(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        if name in out:
            raise QueryError(
                f"Query option '{name}' was specified more than once, but it must be specified at most once."
            )
        out[name] = value
    return out


async def read_request(request: Request, base_path: str, caller: Any) -> ODataRequest:
    """An ODataRequest from a Starlette request under `base_path` (e.g. `/data/`)."""
    body = await request.body()
    path = request.url.path
    relative = path[len(base_path) :] if path.startswith(base_path) else ""
    root = f"{request.url.scheme}://{request.url.netloc}{base_path}"
    headers = {k.lower(): v for k, v in request.headers.items()}
    raw = request.url.query
    return ODataRequest(request.method, relative, parse_query(raw), headers, body, root, caller, raw)


def to_starlette(resp: ODataResponse) -> Response:
    return Response(resp.body, status_code=resp.status, headers=resp.headers)


class Stats:
    """Stand-in-only counters: requests, writes (inside $batch included) and 429s per caller."""

    WRITES = ("POST", "PATCH", "PUT", "DELETE")

    def __init__(self) -> None:
        self.requests = 0
        self.by_caller: dict[str, int] = defaultdict(int)  # requests per caller (client id), 429s included
        self.writes: dict[str, dict[str, int]] = defaultdict(lambda: {"POST": 0, "PATCH": 0, "DELETE": 0})
        self.throttled: dict[str, int] = defaultdict(int)  # 429s answered, per caller
        self.executed_ms: dict[str, float] = defaultdict(float)  # execution time charged, per caller (Dataverse)

    def count_write(self, client_id: str, method: str) -> None:
        if method in self.WRITES:
            counts = self.writes[client_id]
            counts[method] = counts.get(method, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "writes": {k: dict(v) for k, v in self.writes.items()},
            "requests": self.requests,
            "requests_by": dict(self.by_caller),
            "throttled": dict(self.throttled),
            "executed_ms": {k: round(v, 1) for k, v in self.executed_ms.items()},
        }


# -- $batch -------------------------------------------------------------------------------------------
@dataclass
class BatchPart:
    """One HTTP request inside a $batch body."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    parts: list[BatchPart]


@dataclass
class PartResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


def boundary_of(content_type: str) -> str | None:
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    return (m.group(1) or m.group(2)) if m else None


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for m in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            return parts
        start = m.end()
    raise QueryError(f"The batch body has no closing boundary '--{boundary}--'.")


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    """Header lines and body of a MIME part or HTTP message."""
    if data.startswith(b"\r\n") or data.startswith(b"\n"):
        return [], data.split(b"\n", 1)[1]
    m = re.search(rb"\r?\n\r?\n", data)
    head, body = (data, b"") if not m else (data[: m.start()], data[m.end() :])
    return [line.rstrip("\r") for line in head.decode("utf-8", "replace").split("\n")], body


def _headers(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise QueryError(f"Malformed header line '{line}' in the batch body.")
        out[name.strip().lower()] = value.strip()
    return out


def _parse_http_part(data: bytes) -> BatchPart:
    mime_lines, message = _split_head(data)
    mime = _headers(mime_lines)
    if not mime.get("content-type", "").lower().startswith("application/http"):
        raise QueryError("Every batch part must have 'Content-Type: application/http'.")
    lines, body = _split_head(message.lstrip(b"\r\n"))
    if not lines:
        raise QueryError("A batch part has no request line.")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise QueryError(f"Malformed request line '{lines[0]}' in the batch body.")
    headers = _headers([line for line in lines[1:] if line])
    content_id = mime.get("content-id") or headers.get("content-id")
    return BatchPart(request_line[0].upper(), request_line[1], headers, body.rstrip(b"\r\n"), content_id)


def parse_batch(body: bytes, content_type: str) -> list[BatchPart | ChangeSet]:
    """A multipart/mixed $batch body as individual requests and change sets."""
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/mixed") or not boundary:
        raise QueryError("A $batch request must have 'Content-Type: multipart/mixed; boundary=...'.")
    items: list[BatchPart | ChangeSet] = []
    for raw in _split_multipart(body, boundary):
        lines, inner = _split_head(raw)
        mime = _headers(lines)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            inner_boundary = boundary_of(ctype)
            if not inner_boundary:
                raise QueryError("A change set must declare its boundary.")
            parts = [_parse_http_part(p) for p in _split_multipart(inner, inner_boundary)]
            for p in parts:
                if p.method == "GET":
                    raise QueryError("A change set may not hold a GET request.")
            items.append(ChangeSet(parts))
        else:
            items.append(_parse_http_part(raw))
    if sum(len(i.parts) if isinstance(i, ChangeSet) else 1 for i in items) > MAX_BATCH_REQUESTS:
        raise QueryError(f"The number of requests in a batch exceeded the limit of {MAX_BATCH_REQUESTS}.")
    return items


def _render_part(r: PartResponse) -> bytes:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if r.content_id:
        head += f"Content-ID: {r.content_id}\r\n"
    reason = HTTPStatus(r.status).phrase if r.status in HTTPStatus._value2member_map_ else ""
    message = f"HTTP/1.1 {r.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in r.headers.items())
    return (head + "\r\n" + message + "\r\n").encode() + r.body + b"\r\n"


def render_batch(items: list[PartResponse | list[PartResponse]]) -> tuple[str, bytes]:
    """A multipart/mixed batch response body and its content type; a list is a change set's responses."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    out = b""
    for item in items:
        out += f"--{boundary}\r\n".encode()
        if isinstance(item, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            out += f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode()
            for r in item:
                out += f"--{inner}\r\n".encode() + _render_part(r)
            out += f"--{inner}--\r\n".encode()
        else:
            out += _render_part(item)
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/mixed; boundary={boundary}", out


def parse_batch_response(body: bytes, content_type: str) -> list[PartResponse | list[PartResponse]]:
    """Read a batch response (the inverse of render_batch); tests and clients use it."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise QueryError("no boundary in the batch response content type")

    def one(raw: bytes) -> PartResponse:
        mime_lines, message = _split_head(raw)
        mime = _headers(mime_lines)
        lines, body = _split_head(message.lstrip(b"\r\n"))
        status = int(lines[0].split()[1])
        return PartResponse(status, _headers([x for x in lines[1:] if x]), body.rstrip(b"\r\n"), mime.get("content-id"))

    out: list[PartResponse | list[PartResponse]] = []
    for raw in _split_multipart(body, boundary):
        lines, inner = _split_head(raw)
        ctype = _headers(lines).get("content-type", "")
        if ctype.startswith("multipart/mixed"):
            out.append([one(p) for p in _split_multipart(inner, boundary_of(ctype) or "")])
        else:
            out.append(one(raw))
    return out


class _ChangeSetFailed(Exception):
    def __init__(self, response: PartResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _resolve_references(part: BatchPart, ids: dict[str, str]) -> BatchPart:
    """Replace `$<content-id>` at the start of the URL and in `@odata.bind` values by the entity URL."""
    url = part.url
    m = re.match(r"\$([^/?(]+)", url)
    if m and m.group(1) in ids:
        url = ids[m.group(1)] + url[m.end() :]
    body = part.body
    if ids and body.strip().startswith(b"{"):
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            payload = None
        if isinstance(payload, dict):
            for k, v in payload.items():
                if k.endswith("@odata.bind") and isinstance(v, str) and v.startswith("$") and v[1:] in ids:
                    payload[k] = ids[v[1:]]
            body = json.dumps(payload).encode()
    return BatchPart(part.method, url, part.headers, body, part.content_id)


def run_batch(
    items: list[BatchPart | ChangeSet],
    dispatch: Callable[[BatchPart], ODataResponse],
    savepoint: Callable[[], AbstractContextManager[None]],
    *,
    stop_on_error: bool,
) -> tuple[list[PartResponse | list[PartResponse]], bool]:
    """Execute a batch: each change set all-or-nothing; returns (responses, whether any part failed).

    With stop_on_error the first failure ends the batch and the responses hold only the failed part.
    """
    out: list[PartResponse | list[PartResponse]] = []
    failed = False
    for item in items:
        if isinstance(item, ChangeSet):
            ids: dict[str, str] = {}
            responses: list[PartResponse] = []
            try:
                with savepoint():
                    for part in item.parts:
                        part = _resolve_references(part, ids)
                        resp = dispatch(part)
                        r = PartResponse(resp.status, resp.headers, resp.body, part.content_id)
                        if resp.status >= 400:
                            raise _ChangeSetFailed(r)
                        location = resp.headers.get("OData-EntityId") or resp.headers.get("Location")
                        if part.content_id and location:
                            ids[part.content_id] = location
                        responses.append(r)
            except _ChangeSetFailed as exc:
                failed = True
                if stop_on_error:
                    return [exc.response], True
                out.append(exc.response)  # a failed change set answers with the one error
                continue
            out.append(responses)
        else:
            resp = dispatch(item)
            r = PartResponse(resp.status, resp.headers, resp.body, item.content_id)
            if resp.status >= 400:
                failed = True
                if stop_on_error:
                    return [r], True
            out.append(r)
    return out, failed


def execute_batch(
    req: ODataRequest,
    base_path: str,
    handle: Callable[[ODataRequest], ODataResponse],
    error: Callable[[int, str], ODataResponse],
    savepoint: Callable[[], AbstractContextManager[None]],
    *,
    stop_on_error: bool,
) -> tuple[list[PartResponse | list[PartResponse]], bool]:
    """Parse a $batch request and run its parts through `handle`; `error` renders the service's error body."""
    items = parse_batch(req.body, req.headers.get("content-type", ""))
    for part in iter_parts(items):
        if part.method not in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            raise QueryError(f"The HTTP method '{part.method}' is not valid in a batch part.")

    def dispatch(part: BatchPart) -> ODataResponse:
        try:
            sub = part_request(part, req, base_path)
        except ODataError as exc:
            return error(exc.status, exc.message)
        if sub.path.strip("/") == "$batch":
            return error(400, "A $batch request cannot be nested in a $batch request.")
        return handle(sub)

    return run_batch(items, dispatch, savepoint, stop_on_error=stop_on_error)


def iter_parts(items: list[BatchPart | ChangeSet]) -> Iterator[BatchPart]:
    for item in items:
        yield from (item.parts if isinstance(item, ChangeSet) else [item])


def part_request(part: BatchPart, outer: ODataRequest, base_path: str) -> ODataRequest:
    """The ODataRequest of a batch part; its URL may be absolute, root-relative or service-relative."""
    split = urlsplit(part.url)
    path = split.path
    if split.scheme or path.startswith("/"):
        if not path.startswith(base_path) and path + "/" != base_path:
            raise ODataError(404, f"No HTTP resource was found that matches the request URI '{part.url}'.")
        path = path[len(base_path) :]
    return ODataRequest(
        part.method,
        unquote(path),
        parse_query(split.query),
        part.headers,
        part.body,
        outer.service_root,
        outer.caller,
        split.query,
    )
