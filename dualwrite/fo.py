"""F&O OData client: reads (cross-company, server paging) and $batch writes under /data/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from dualwrite import odata
from dualwrite.auth import TokenProvider
from dualwrite.config import FoConfig


class FoClient:
    """`read_retries`: how often a read that failed transiently is tried again (see `odata.read`)."""

    def __init__(self, cfg: FoConfig, read_retries: int = 0) -> None:
        self.read_retries = read_retries
        self.url = str(cfg.url).rstrip("/")
        self.base = f"{self.url}/data"
        self.auth = TokenProvider(cfg.auth, self.url)
        self.http = httpx.Client(
            auth=self.auth,
            timeout=cfg.timeout_s,
            headers={"Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )

    def close(self) -> None:
        self.http.close()

    def query(
        self,
        entity_set: str,
        filter: str | None = None,
        select: list[str] | None = None,
        top: int | None = None,
        orderby: list[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows of `entity_set` across companies, following `@odata.nextLink`."""
        params: dict[str, str] = {"cross-company": "true"}
        if filter:
            params["$filter"] = filter
        if select:
            params["$select"] = ",".join(select)
        if top is not None:
            params["$top"] = str(top)
        if orderby:
            params["$orderby"] = ",".join(orderby)
        url: str | None = f"{self.base}/{entity_set}"
        first = True
        what = f"F&O GET {entity_set}"
        while url:
            resp = odata.read(self.http, url, what, self.read_retries, params=params if first else None)
            odata.check(resp, what)
            body = odata.json_object(resp, what)
            del resp
            url, first, rows = body.get("@odata.nextLink"), False, body.get("value", [])
            del body
            yield from rows
            del rows  # one page in memory at a time: this one goes before the next is read

    def count(self, entity_set: str, filter: str | None = None) -> int | None:
        """How many rows match (`$count=true`), or None when the service does not say."""
        params = {"cross-company": "true", "$count": "true", "$top": "0"}
        if filter:
            params["$filter"] = filter
        url = f"{self.base}/{entity_set}"
        resp = odata.read(self.http, url, f"F&O count {entity_set}", self.read_retries, params=params)
        odata.check(resp, f"F&O count {entity_set}")
        value = odata.json_object(resp, f"F&O count {entity_set}").get("@odata.count")
        return int(value) if value is not None else None

    def batch(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        """Send writes in one $batch, each in its own change set so one failure does not undo the others."""
        ctype, payload = odata.build_batch(parts, "/data", atomic_each=True)
        resp = odata.request(
            self.http, "POST", f"{self.base}/$batch", "F&O $batch", content=payload, headers={"Content-Type": ctype}
        )
        odata.raise_for(resp.status_code, resp.text, resp.headers, "F&O $batch")
        results = odata.parse_batch_response(resp.headers.get("content-type", ""), resp.content)
        if len(results) != len(parts):
            return _pad(results, len(parts))
        return results


def _pad(results: list[odata.PartResult], n: int) -> list[odata.PartResult]:
    # A service that stops at the first failure answers fewer parts: the rest were not applied.
    missing = odata.PartResult(503, {}, '{"error":{"code":"","message":"not executed: an earlier part failed"}}')
    return results + [missing] * (n - len(results))
