"""Dataverse Web API client: queries, change tracking, $batch, WhoAmI, and lookup resolution."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from dualwrite import odata
from dualwrite.auth import TokenProvider
from dualwrite.config import DataverseConfig

API_PATH = "/api/data/v9.2"
COMPANY_SET = "cdm_companies"
COMPANY_PK = "cdm_companyid"
COMPANY_CODE = "cdm_companycode"
COMPANY_LOOKUP = "msdyn_company"


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


class DataverseClient:
    def __init__(self, cfg: DataverseConfig) -> None:
        self.url = str(cfg.url).rstrip("/")
        self.base = f"{self.url}{API_PATH}"
        self.auth = TokenProvider(cfg.auth, self.url)
        self.max_batch = cfg.max_batch
        self.http = httpx.Client(
            auth=self.auth,
            timeout=cfg.timeout_s,
            headers={"Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )

    def close(self) -> None:
        self.http.close()

    def _get(self, url: str, what: str, params: dict[str, str] | None = None, **headers: str) -> dict[str, Any]:
        resp = odata.request(self.http, "GET", url, what, params=params, headers=headers)
        odata.raise_for(resp.status_code, resp.text, resp.headers, what)
        body: dict[str, Any] = resp.json()
        return body

    def whoami(self) -> str:
        return str(self._get(f"{self.base}/WhoAmI", "Dataverse WhoAmI")["UserId"])

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
            yield from body.get("value", [])
            url, first = body.get("@odata.nextLink"), False

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


class LookupCache:
    """Both ways between a row's alternate key and its GUID, for lookups and company striping.

    Keys are (entity_set, key_field, value, company_guid-or-None). Misses are resolved in one
    query per table; a GUID for a row that is deleted later is dropped on the 404 it causes.
    """

    def __init__(self, client: DataverseClient) -> None:
        self.client = client
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
        with self._lock:
            for v in values:
                hit = self._by_key.get((entity_set, key_field, str(v), company_id))
                if hit:
                    out[v] = hit
                else:
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

    def drop_table(self, entity_set: str) -> None:
        """Forget every cached row of a table (after a 404 showed the cache is stale)."""
        with self._lock:
            self._by_key = {k: v for k, v in self._by_key.items() if k[0] != entity_set}
            self._by_id = {k: v for k, v in self._by_id.items() if k[0] != entity_set}
