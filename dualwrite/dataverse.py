"""Dataverse Web API client: queries, change tracking, $batch, bulk messages, WhoAmI, and lookup resolution."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from dualwrite import metrics, odata
from dualwrite.auth import TokenProvider
from dualwrite.budget import PooledBudget, RequestBudget
from dualwrite.config import DataverseConfig
from dualwrite.errors import RetryableError, TargetRejectedError

API_PATH = "/api/data/v9.2"
COMPANY_SET = "cdm_companies"
COMPANY_PK = "cdm_companyid"
COMPANY_CODE = "cdm_companycode"
COMPANY_LOOKUP = "msdyn_company"
# Records per bulk message: Microsoft advises 100 to 1,000 per request for standard tables.
MAX_BULK = 1000
BulkAction = Literal["CreateMultiple", "UpdateMultiple", "UpsertMultiple"]
USER = "dualwrite_user"  # the request extension naming the application user a request went as


def logical_name_of(primary_key: str) -> str:
    """A table's logical name from its primary-key column (accountid -> account), as Dataverse names them."""
    return primary_key[:-2] if primary_key.endswith("id") else primary_key


def primary_key_of(entity_set: str) -> str:
    """Dataverse's primary-key column of a table, from its entity set name (accounts -> accountid)."""
    if entity_set.endswith("ies"):
        return f"{entity_set[:-3]}yid"
    return f"{entity_set[:-1]}id" if entity_set.endswith("s") else f"{entity_set}id"


@dataclass
class DeltaPage:
    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    delta_link: str | None


def budget_of(cfg: DataverseConfig, component: str | None) -> RequestBudget | None:
    """The component's share of one application user's request limit (None: the component has none)."""
    b = cfg.budget
    if component is None or component not in b.shares:
        return None
    return RequestBudget(b.requests, b.window_s, b.shares[component], b.headroom)


# The 429s of the limits other than the number of requests (`0x80072322`): combined execution time, concurrent
# requests. Fewer requests are no answer to them; a 429 without a known code is taken as the request limit's.
NOT_REQUEST_LIMITS = ("0x80072321", "0x80072326")


class UserPool(httpx.Auth):
    """The application users a client's requests go out as (`dataverse.auth`, then `more_users`): each request
    as the user whose budget lets it out soonest, the next one in turn among equals. Dataverse limits every user
    on its own, so each user's budget counts its own requests and takes its own 429s."""

    requires_response_body = True  # a 429's body says which limit it was

    def __init__(self, users: list[tuple[str, TokenProvider, RequestBudget | None]]) -> None:
        self.users = users
        self._next = 0
        self._lock = threading.Lock()

    @property
    def budget(self) -> RequestBudget | PooledBudget | None:
        budgets = [b for _, _, b in self.users if b is not None]
        if not budgets:
            return None
        return budgets[0] if len(budgets) == 1 else PooledBudget(budgets)

    def pick(self) -> int:
        with self._lock:
            n = len(self.users)
            best, best_wait = self._next % n, float("inf")
            for k in range(n):
                i = (self._next + k) % n
                budget = self.users[i][2]
                wait = 0.0 if budget is None else budget.wait_s()
                if wait < best_wait:
                    best, best_wait = i, wait
                if wait <= 0:
                    break
            self._next = best + 1
            return best

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        asked = request.extensions.get(USER)  # a request that must go as one user (WhoAmI of each)
        i = next(i for i, u in enumerate(self.users) if u[0] == asked) if asked else self.pick()
        name, provider, budget = self.users[i]
        request.extensions[USER] = name
        if budget is not None:
            budget.spend()
        request.headers["Authorization"] = f"Bearer {provider.token()}"
        response = yield request
        if response.status_code == 401:
            provider.invalidate()
            if budget is not None:
                budget.spend()
            request.headers["Authorization"] = f"Bearer {provider.token()}"
            response = yield request
        if response.status_code == 429 and budget is not None:
            _, code = odata.error_message(429, response.text)  # which limit it was
            budget.hold(odata.retry_after(response.headers) or 1.0, cut=code not in NOT_REQUEST_LIMITS)


def user_pool(cfg: DataverseConfig, url: str, component: str | None) -> UserPool:
    users = [("auth", cfg.auth), *sorted(cfg.more_users.items())]
    return UserPool([(name, TokenProvider(auth, url), budget_of(cfg, component)) for name, auth in users])


class DataverseClient:
    """`component` names the caller for the request budget and the request counter (see `dualwrite.budget`)."""

    def __init__(self, cfg: DataverseConfig, component: str | None = None, read_retries: int = 0) -> None:
        self.read_retries = read_retries  # reads that failed transiently are tried again (see odata.read)
        self.url = str(cfg.url).rstrip("/")
        self.base = f"{self.url}{API_PATH}"
        self.users = user_pool(cfg, self.url, component)
        self.max_batch = cfg.max_batch
        self.budget = self.users.budget
        counter = metrics.DATAVERSE_REQUESTS.labels(component or "other")

        def count(_: httpx.Request) -> None:
            counter.inc()

        self.dop_hint: int | None = None  # the degree of parallelism Dataverse's last answer suggested

        def hint(response: httpx.Response) -> None:
            value = response.headers.get("x-ms-dop-hint")
            if value is not None and value.strip().isdigit():
                self.dop_hint = int(value)

        self.http = httpx.Client(
            auth=self.users,
            timeout=cfg.timeout_s,
            headers={"Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            event_hooks={"request": [count], "response": [hint]},
        )

    def close(self) -> None:
        self.http.close()

    def _get(self, url: str, what: str, params: dict[str, str] | None = None, **headers: str) -> dict[str, Any]:
        resp = odata.read(self.http, url, what, self.read_retries, params=params, headers=headers)
        odata.check(resp, what)
        return odata.json_object(resp, what)

    def whoami(self, user: str | None = None) -> str:
        """The user id of the caller: of one application user of the pool when `user` names it."""
        what, extensions = "Dataverse WhoAmI", {USER: user} if user else None
        resp = odata.read(self.http, f"{self.base}/WhoAmI", what, self.read_retries, extensions=extensions)
        odata.check(resp, what)
        return str(odata.json_object(resp, what)["UserId"])

    def query(
        self,
        entity_set: str,
        filter: str | None = None,
        select: list[str] | None = None,
        page_size: int = 5000,
        orderby: list[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if select:
            params["$select"] = ",".join(select)
        if orderby:
            params["$orderby"] = ",".join(orderby)
        url: str | None = f"{self.base}/{entity_set}"
        first = True
        while url:
            body = self._get(
                url, f"Dataverse GET {entity_set}", params if first else None, Prefer=f"odata.maxpagesize={page_size}"
            )
            url, first, rows = body.get("@odata.nextLink"), False, body.get("value", [])
            del body
            yield from rows
            del rows  # one page in memory at a time: this one goes before the next is read

    def count(self, entity_set: str, filter: str | None = None) -> int | None:
        """How many rows match (`$count=true`; Dataverse counts up to 5,000), or None when not said."""
        # One row per page instead of $top, which Microsoft's docs advise against combining with $count.
        params = {"$count": "true", "$select": primary_key_of(entity_set)}
        if filter:
            params["$filter"] = filter
        body = self._get(
            f"{self.base}/{entity_set}", f"Dataverse count {entity_set}", params, Prefer="odata.maxpagesize=1"
        )
        value = body.get("@odata.count")
        return int(value) if isinstance(value, int) else None

    def track_changes(
        self, entity_set: str, select: list[str], delta_link: str | None, page_size: int = 5000
    ) -> Iterator[DeltaPage]:
        """Pages of changes: the whole table first (no delta link), then what changed since `delta_link`."""
        what = f"Dataverse change tracking {entity_set}"
        prefer = f"odata.track-changes,odata.maxpagesize={page_size}"
        url: str | None = delta_link or f"{self.base}/{entity_set}"
        params = None if delta_link else {"$select": ",".join(select)}
        while url:
            body = self._get(url, what, params, Prefer=prefer)
            rows, deleted = [], []
            for item in body.get("value", []):
                if str(item.get("@odata.context", "")).endswith("$deletedEntity") or item.get("reason") == "deleted":
                    deleted.append(str(item["id"]))
                else:
                    rows.append(item)
            next_link = body.get("@odata.nextLink")
            yield DeltaPage(rows, deleted, None if next_link else body.get("@odata.deltaLink"))
            url, params = next_link, None

    def batch(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        """Independent requests in one $batch with continue-on-error: one answer per part."""
        results: list[odata.PartResult] = []
        for start in range(0, len(parts), self.max_batch):
            chunk = parts[start : start + self.max_batch]
            ctype, payload = odata.build_batch(chunk, API_PATH, atomic_each=False)
            resp = odata.request(
                self.http,
                "POST",
                f"{self.base}/$batch",
                "Dataverse $batch",
                content=payload,
                headers={"Content-Type": ctype, "Prefer": "odata.continue-on-error"},
            )
            odata.raise_for(resp.status_code, resp.text, resp.headers, "Dataverse $batch")
            got = odata.parse_batch_response(resp.headers.get("content-type", ""), resp.content)
            missing = odata.PartResult(503, {}, '{"error":{"code":"","message":"part not answered"}}')
            results.extend(got[: len(chunk)] + [missing] * (len(chunk) - len(got)))
        return results

    def bulk(
        self, entity_set: str, logical_name: str, action: BulkAction, records: list[dict[str, Any]]
    ) -> list[odata.PartResult | None]:
        """Records of one table through a bulk message (`MAX_BULK` per call); one answer per record.

        A bulk message is one transaction: a record the service refuses (a 4xx) fails the whole call and
        nothing of it is kept, so a refused call is split in halves until the refused record is alone and
        its answer is its own. A created record answers 204 with its `OData-EntityId` (CreateMultiple's
        `Ids`); a throttled or failed call (429, 5xx) is not split: its records all get that answer. None:
        not answered (a timeout), the records may or may not have been written."""
        odata_type = f"Microsoft.Dynamics.CRM.{logical_name}"
        targets = [{"@odata.type": odata_type, **r} for r in records]
        out: list[odata.PartResult | None] = []
        for start in range(0, len(targets), MAX_BULK):
            out.extend(self._bulk(entity_set, action, targets[start : start + MAX_BULK]))
        return out

    def _bulk(
        self, entity_set: str, action: BulkAction, targets: list[dict[str, Any]]
    ) -> list[odata.PartResult | None]:
        what = f"Dataverse {entity_set}/{action}"
        try:
            resp = odata.request(
                self.http,
                "POST",
                f"{self.base}/{entity_set}/Microsoft.Dynamics.CRM.{action}",
                what,
                content=odata.dumps({"Targets": targets}),
                headers={"Content-Type": "application/json"},
            )
        except RetryableError:
            return [None] * len(targets)
        answer = odata.PartResult(resp.status_code, dict(resp.headers), resp.text)
        if resp.status_code >= 300:
            refused_for_a_record = isinstance(answer.error(what), TargetRejectedError) or resp.status_code == 412
            if len(targets) == 1 or not refused_for_a_record:
                return [answer] * len(targets)
            mid = len(targets) // 2
            return self._bulk(entity_set, action, targets[:mid]) + self._bulk(entity_set, action, targets[mid:])
        done: list[odata.PartResult | None] = [odata.PartResult(204, {}, "")] * len(targets)
        if action != "CreateMultiple":
            return done
        try:
            ids = odata.json_object(resp, what).get("Ids")
        except RetryableError:  # written, but which row is which is unknown: as if not answered
            return [None] * len(targets)
        ids = ids if isinstance(ids, list) else []
        created = [odata.PartResult(204, {"odata-entityid": f"{self.base}/{entity_set}({i})"}, "") for i in ids]
        return (created + done)[: len(targets)]


class LookupCache:
    """Both ways between a row's alternate key and its GUID, for lookups and company striping.

    Keys are (entity_set, key_field, value, company_guid-or-None). Misses are resolved in one
    query per table; a GUID for a row that is deleted later is dropped on the 404 it causes. A row
    not found is not asked for again for `MISS_TTL_S`: the records waiting for it (a company or a
    group not synced yet, every partition retrying) then cost one query per table, not one each.
    """

    MISS_TTL_S = 1.0

    def __init__(self, client: DataverseClient) -> None:
        self.client = client
        self._missing: dict[tuple[str, str, str, str | None], float] = {}  # -> when it was found missing
        self._by_key: dict[tuple[str, str, str, str | None], str] = {}
        self._by_id: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def company_id(self, code: str) -> str | None:
        return self.resolve(COMPANY_SET, COMPANY_CODE, [code]).get(code)

    def resolve(
        self, entity_set: str, key_field: str, values: list[Any], company_id: str | None = None
    ) -> dict[Any, str]:
        """GUIDs of the rows whose `key_field` is one of `values` (within the company when given)."""
        out: dict[Any, str] = {}
        misses = []
        now = time.monotonic()
        with self._lock:
            for v in values:
                k = (entity_set, key_field, str(v), company_id)
                hit = self._by_key.get(k)
                if hit:
                    out[v] = hit
                elif now - self._missing.get(k, -self.MISS_TTL_S) >= self.MISS_TTL_S:
                    misses.append(v)
        pk = primary_key_of(entity_set)
        for start in range(0, len(misses), 40):
            chunk = misses[start : start + 40]
            flt = "(" + " or ".join(f"{key_field} eq {odata.literal(v)}" for v in chunk) + ")"
            if company_id:
                flt += f" and _{COMPANY_LOOKUP}_value eq {company_id}"
            for row in self.client.query(entity_set, flt, [pk, key_field]):
                self.remember(entity_set, key_field, row[key_field], row[pk], company_id)
                for v in chunk:
                    if str(v) == str(row[key_field]):
                        out[v] = row[pk]
            with self._lock:
                if len(self._missing) > 10_000:  # forget what has expired, so the map stays small
                    cutoff = time.monotonic() - self.MISS_TTL_S
                    self._missing = {k: t for k, t in self._missing.items() if t > cutoff}
                for v in chunk:
                    if v not in out:
                        self._missing[(entity_set, key_field, str(v), company_id)] = time.monotonic()
        return out

    def keys_of(self, entity_set: str, key_field: str, ids: list[str], company_scoped: bool) -> dict[str, Any]:
        """Alternate-key values of rows by GUID; for company-scoped tables, (value, company guid)."""
        out: dict[str, Any] = {}
        misses = []
        with self._lock:
            for i in ids:
                hit = self._by_id.get((entity_set, i))
                if hit is not None:
                    out[i] = hit
                else:
                    misses.append(i)
        pk = primary_key_of(entity_set)
        select = [pk, key_field] + ([f"_{COMPANY_LOOKUP}_value"] if company_scoped else [])
        for start in range(0, len(misses), 40):
            chunk = misses[start : start + 40]
            flt = " or ".join(f"{pk} eq {i}" for i in chunk)
            for row in self.client.query(entity_set, flt, select):
                company = row.get(f"_{COMPANY_LOOKUP}_value") if company_scoped else None
                self.remember(entity_set, key_field, row[key_field], row[pk], company)
                out[row[pk]] = (row[key_field], company)
        return out

    def remember(self, entity_set: str, key_field: str, value: Any, guid: str, company_id: str | None) -> None:
        with self._lock:
            self._by_key[(entity_set, key_field, str(value), company_id)] = guid
            self._by_id[(entity_set, guid)] = (value, company_id)
            self._missing.pop((entity_set, key_field, str(value), company_id), None)

    def drop_table(self, entity_set: str) -> None:
        """Forget every cached row of a table (after a 404 showed the cache is stale)."""
        with self._lock:
            self._by_key = {k: v for k, v in self._by_key.items() if k[0] != entity_set}
            self._by_id = {k: v for k, v in self._by_id.items() if k[0] != entity_set}
