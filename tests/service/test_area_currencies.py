"""Currencies and exchange rate types both ways, exchange rates one way (F&O -> Dataverse), over the real wire."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from standins.store import SYSTEM_USER
from wiring.stack import LocalStack, dv_one, dv_rows, eventually

pytestmark = pytest.mark.service

RATES = "msdyn_currencyexchangerates"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("currencies"))
    try:
        yield s
    finally:
        s.stop()


def dv_currency(dv: httpx.Client, code: str) -> dict[str, Any] | None:
    return dv_one(dv, "transactioncurrencies", f"isocurrencycode eq '{code}'")


def dv_rate_type(dv: httpx.Client, name: str) -> dict[str, Any] | None:
    return dv_one(dv, "msdyn_exchangeratetypes", f"msdyn_name eq '{name}'")


def dv_rate(dv: httpx.Client, source: str, target: str, valid_from: str = "2026-01-01") -> dict[str, Any] | None:
    flt = (
        f"msdyn_exchangeratetypename eq 'Default' and msdyn_fromcurrencycode eq '{source}'"
        f" and msdyn_tocurrencycode eq '{target}' and msdyn_validfrom eq '{valid_from}'"
    )
    return dv_one(dv, RATES, flt)


def fo_row(fo: httpx.Client, url: str) -> dict[str, Any] | None:
    resp = fo.get(url)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_seeded_currencies_rate_types_and_rates_arrive(fo: httpx.Client, dv: httpx.Client) -> None:
    jpy = eventually(lambda: dv_currency(dv, "JPY"), what="JPY in Dataverse")
    assert (jpy["currencyname"], jpy["currencysymbol"], jpy["exchangerate"], jpy["currencyprecision"]) == (
        "Japanese Yen",
        "¥",
        1,
        2,
    )
    chf = eventually(lambda: dv_currency(dv, "CHF"), what="CHF in Dataverse")
    assert chf["currencyname"] == "Swiss Franc"
    # The currencies both sides already had were equal: nobody wrote to them.
    usd = dv_currency(dv, "USD")
    assert usd is not None and usd["_modifiedby_value"] == SYSTEM_USER and usd["exchangerate"] is None
    fo_usd = fo_row(fo, "Currencies(CurrencyCode='USD')")
    assert fo_usd is not None and (fo_usd["Name"], fo_usd["Symbol"]) == ("US Dollar", "$")
    assert len(dv_rows(dv, "transactioncurrencies")) == 7

    types = eventually(
        lambda: found if len(found := dv_rows(dv, "msdyn_exchangeratetypes")) >= 3 else None, what="types"
    )
    assert {t["msdyn_name"]: t["msdyn_description"] for t in types} == {
        "Default": "Default exchange rate type",
        "Budget": "Budget exchange rates",
        "Average": "Monthly average rates",
    }

    rates = eventually(lambda: found if len(found := dv_rows(dv, RATES)) >= 6 else None, what="six exchange rates")
    by_pair = {(r["msdyn_fromcurrencycode"], r["msdyn_tocurrencycode"]): r for r in rates}
    assert set(by_pair) == {
        ("USD", "EUR"),
        ("USD", "GBP"),
        ("USD", "DKK"),
        ("USD", "CAD"),
        ("USD", "JPY"),
        ("EUR", "USD"),
    }
    yen = by_pair[("USD", "JPY")]
    assert (yen["msdyn_exchangeratetypename"], yen["msdyn_exchangerate"]) == ("Default", 151.2)
    assert (yen["msdyn_validfrom"], yen["msdyn_validto"]) == ("2026-01-01", "2026-06-30")


def test_currency_created_updated_deleted_in_fo_follows_in_dataverse(fo: httpx.Client, dv: httpx.Client) -> None:
    resp = fo.post("Currencies", json={"CurrencyCode": "SEK", "Name": "Swedish Krona", "Symbol": "kr"})
    assert resp.status_code == 201, resp.text
    row = eventually(lambda: dv_currency(dv, "SEK"), what="SEK in Dataverse")
    assert (row["currencyname"], row["currencysymbol"], row["exchangerate"]) == ("Swedish Krona", "kr", 1)

    assert fo.patch("Currencies(CurrencyCode='SEK')", json={"Name": "Swedish krona"}).status_code == 204
    eventually(lambda: (c := dv_currency(dv, "SEK")) and c["currencyname"] == "Swedish krona", what="rename")

    assert fo.delete("Currencies(CurrencyCode='SEK')").status_code == 204
    eventually(lambda: dv_currency(dv, "SEK") is None, what="SEK deleted in Dataverse")


def test_currency_created_updated_deleted_in_dataverse_follows_in_fo(fo: httpx.Client, dv: httpx.Client) -> None:
    body = {
        "isocurrencycode": "NOK",
        "currencyname": "Norwegian Krone",
        "currencysymbol": "kr",
        "exchangerate": 10.5,
        "currencyprecision": 2,
    }
    resp = dv.post("transactioncurrencies", json=body)
    assert resp.status_code in (201, 204), resp.text
    url = "Currencies(CurrencyCode='NOK')"
    row = eventually(lambda: fo_row(fo, url), what="NOK in F&O")
    assert (row["Name"], row["Symbol"]) == ("Norwegian Krone", "kr")

    guid = dv_currency(dv, "NOK")["transactioncurrencyid"]  # type: ignore[index]
    assert dv.patch(f"transactioncurrencies({guid})", json={"currencysymbol": "Nkr"}).status_code == 204
    eventually(lambda: (c := fo_row(fo, url)) and c["Symbol"] == "Nkr", what="symbol in F&O")
    # F&O is written back only with what changed; the exchange rate stays Dataverse's own.
    assert dv_currency(dv, "NOK")["exchangerate"] == 10.5  # type: ignore[index]

    assert dv.delete(f"transactioncurrencies({guid})").status_code == 204
    eventually(lambda: fo_row(fo, url) is None, what="NOK deleted in F&O")


def test_exchange_rate_types_sync_both_ways(fo: httpx.Client, dv: httpx.Client) -> None:
    resp = fo.post("ExchangeRateTypes", json={"Name": "Spot", "Description": "Spot rates"})
    assert resp.status_code == 201, resp.text
    row = eventually(lambda: dv_rate_type(dv, "Spot"), what="Spot in Dataverse")
    assert row["msdyn_description"] == "Spot rates"
    assert fo.patch("ExchangeRateTypes(Name='Spot')", json={"Description": "Daily spot"}).status_code == 204
    eventually(lambda: (t := dv_rate_type(dv, "Spot")) and t["msdyn_description"] == "Daily spot", what="update")
    assert fo.delete("ExchangeRateTypes(Name='Spot')").status_code == 204
    eventually(lambda: dv_rate_type(dv, "Spot") is None, what="Spot deleted in Dataverse")

    resp = dv.post("msdyn_exchangeratetypes", json={"msdyn_name": "Forward", "msdyn_description": "Forward rates"})
    assert resp.status_code in (201, 204), resp.text
    url = "ExchangeRateTypes(Name='Forward')"
    row = eventually(lambda: fo_row(fo, url), what="Forward in F&O")
    assert row["Description"] == "Forward rates"
    guid = dv_rate_type(dv, "Forward")["msdyn_exchangeratetypeid"]  # type: ignore[index]
    assert dv.patch(f"msdyn_exchangeratetypes({guid})", json={"msdyn_description": "3M forward"}).status_code == 204
    eventually(lambda: (t := fo_row(fo, url)) and t["Description"] == "3M forward", what="update in F&O")
    assert dv.delete(f"msdyn_exchangeratetypes({guid})").status_code == 204
    eventually(lambda: fo_row(fo, url) is None, what="Forward deleted in F&O")


def test_exchange_rates_follow_fo_one_way(fo: httpx.Client, dv: httpx.Client) -> None:
    rate = {
        "ExchangeRateTypeName": "Default",
        "FromCurrencyCode": "USD",
        "ToCurrencyCode": "CHF",
        "ValidFrom": "2026-07-01",
        "ValidTo": "2026-12-31",
        "Rate": 0.8812,
    }
    resp = fo.post("CDSExchangeRates", json=rate)
    assert resp.status_code == 201, resp.text
    row = eventually(lambda: dv_rate(dv, "USD", "CHF", "2026-07-01"), what="USD/CHF in Dataverse")
    assert (row["msdyn_exchangerate"], row["msdyn_validto"]) == (0.8812, "2026-12-31")

    url = (
        "CDSExchangeRates(ExchangeRateTypeName='Default',FromCurrencyCode='USD',ToCurrencyCode='CHF',"
        "ValidFrom='2026-07-01')"
    )
    assert fo.patch(url, json={"Rate": 0.8790}).status_code == 204
    eventually(
        lambda: (r := dv_rate(dv, "USD", "CHF", "2026-07-01")) and r["msdyn_exchangerate"] == 0.879, what="new rate"
    )
    assert fo.delete(url).status_code == 204
    eventually(lambda: dv_rate(dv, "USD", "CHF", "2026-07-01") is None, what="rate deleted in Dataverse")


def test_dataverse_edit_of_an_exchange_rate_is_not_written_back(fo: httpx.Client, dv: httpx.Client) -> None:
    seeded = eventually(lambda: dv_rate(dv, "USD", "EUR"), what="USD/EUR in Dataverse")
    resp = dv.patch(f"{RATES}({seeded['msdyn_currencyexchangerateid']})", json={"msdyn_exchangerate": 9.99})
    assert resp.status_code == 204, resp.text

    # A later Dataverse change on a two-way map reaching F&O shows the Dataverse side has moved past ours.
    budget = eventually(lambda: dv_rate_type(dv, "Budget"), what="Budget in Dataverse")
    resp = dv.patch(f"msdyn_exchangeratetypes({budget['msdyn_exchangeratetypeid']})", json={"msdyn_description": "B"})
    assert resp.status_code == 204, resp.text
    eventually(lambda: (t := fo_row(fo, "ExchangeRateTypes(Name='Budget')")) and t["Description"] == "B", what="edit")

    url = (
        "CDSExchangeRates(ExchangeRateTypeName='Default',FromCurrencyCode='USD',ToCurrencyCode='EUR',"
        "ValidFrom='2026-01-01')"
    )
    row = fo_row(fo, url)
    assert row is not None and row["Rate"] == 0.9215
