"""The lookup cache: what is missing in Dataverse costs one query per table while records wait for it."""

from __future__ import annotations

from typing import Any

import pytest

from dualwrite import dataverse
from dualwrite.dataverse import COMPANY_CODE, COMPANY_SET, LookupCache


class Rows:
    """Stands in for DataverseClient.query over a table's rows (no HTTP: the cache's own logic)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.queries = 0

    def query(self, entity_set: str, flt: str, select: list[str]) -> list[dict[str, Any]]:
        self.queries += 1
        return [r for r in self.rows if f"'{r[COMPANY_CODE]}'" in flt]


def test_a_missing_row_is_asked_for_once_a_second_and_found_when_it_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(dataverse.time, "monotonic", lambda: now[0])
    client = Rows()
    cache = LookupCache(client)  # type: ignore[arg-type]
    for _ in range(50):  # fifty records (every partition, every retry) waiting for company USMF
        assert cache.company_id("USMF") is None
    assert client.queries == 1
    client.rows.append({"cdm_companyid": "c-1", COMPANY_CODE: "USMF"})
    now[0] += LookupCache.MISS_TTL_S
    assert cache.company_id("USMF") == "c-1"
    assert cache.company_id("USMF") == "c-1" and client.queries == 2  # then from the cache


def test_a_row_dualwrite_made_is_known_at_once_despite_the_earlier_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataverse.time, "monotonic", lambda: 5.0)
    client = Rows()
    cache = LookupCache(client)  # type: ignore[arg-type]
    assert cache.company_id("DEMF") is None
    cache.remember(COMPANY_SET, COMPANY_CODE, "DEMF", "c-2", None)  # dualwrite created it
    assert cache.company_id("DEMF") == "c-2" and client.queries == 1
