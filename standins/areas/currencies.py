"""Area currencies: currencies, exchange rate types and exchange rates.

Global (shared by all legal entities), F&O is the master. Currencies and exchange rate types sync both
ways; exchange rates go one way to Dataverse. Dataverse's transactioncurrencies table is declared in
standins/dataverse.py (every org has it, seeded with a few currencies).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import dv_pk, statecode
from standins.store import EntityDef, Field

# -- F&O ---------------------------------------------------------------------------------------------
CURRENCIES = EntityDef(
    name="Currencies",
    key=("CurrencyCode",),
    fields=(
        Field("CurrencyCode", max_length=3, required=True),
        Field("Name", max_length=60),
        Field("Symbol", max_length=5),
        Field("RoundingPrecision", "decimal", default=0.01),
    ),
    event_name="mserp_currencyentity",
    logical_name="CurrencyEntity",
    type_name="Currency",
)

EXCHANGE_RATE_TYPES = EntityDef(
    name="ExchangeRateTypes",
    key=("Name",),
    fields=(Field("Name", max_length=20, required=True), Field("Description", max_length=60)),
    event_name="mserp_exchangeratetypeentity",
    logical_name="ExchangeRateTypeEntity",
    type_name="ExchangeRateType",
)

# ValidFrom/ValidTo are date-only strings ("2026-01-01"), not datetimes: a datetime key part does not
# survive the pipeline yet (see the header of maps/exchange-rates.yaml).
EXCHANGE_RATES = EntityDef(
    name="CDSExchangeRates",
    key=("ExchangeRateTypeName", "FromCurrencyCode", "ToCurrencyCode", "ValidFrom"),
    fields=(
        Field("ExchangeRateTypeName", max_length=20, required=True, target="ExchangeRateTypes", label="Rate type"),
        Field("FromCurrencyCode", max_length=3, required=True, target="Currencies", label="From currency"),
        Field("ToCurrencyCode", max_length=3, required=True, target="Currencies", label="To currency"),
        Field("ValidFrom", max_length=10, required=True),
        Field("ValidTo", max_length=10),
        Field("Rate", "decimal", default=0),
    ),
    event_name="mserp_exchangeratecdsentity",
    logical_name="ExchangeRateCDSEntity",
    type_name="CDSExchangeRate",
)

FO_ENTITIES: tuple[EntityDef, ...] = (CURRENCIES, EXCHANGE_RATE_TYPES, EXCHANGE_RATES)

# -- Dataverse ---------------------------------------------------------------------------------------
DV_EXCHANGE_RATE_TYPES = EntityDef(
    name="msdyn_exchangeratetypes",
    key=("msdyn_exchangeratetypeid",),
    fields=(
        dv_pk("msdyn_exchangeratetypeid"),
        Field("msdyn_name", max_length=20, required=True),
        Field("msdyn_description", max_length=100),
        statecode(),
    ),
    alternate_keys=(("msdyn_name",),),
    logical_name="msdyn_exchangeratetype",
)

DV_EXCHANGE_RATES = EntityDef(
    name="msdyn_currencyexchangerates",
    key=("msdyn_currencyexchangerateid",),
    fields=(
        dv_pk("msdyn_currencyexchangerateid"),
        Field("msdyn_exchangeratetypename", max_length=20),
        Field("msdyn_fromcurrencycode", max_length=3),
        Field("msdyn_tocurrencycode", max_length=3),
        Field("msdyn_exchangerate", "decimal"),
        Field("msdyn_validfrom", max_length=10),
        Field("msdyn_validto", max_length=10),
        statecode(),
    ),
    alternate_keys=(
        ("msdyn_exchangeratetypename", "msdyn_fromcurrencycode", "msdyn_tocurrencycode", "msdyn_validfrom"),
    ),
    logical_name="msdyn_currencyexchangerate",
)

DATAVERSE_ENTITIES: tuple[EntityDef, ...] = (DV_EXCHANGE_RATE_TYPES, DV_EXCHANGE_RATES)

# -- seed --------------------------------------------------------------------------------------------
# The first five are in every Dataverse org too (standins/seed.py TRANSACTION_CURRENCIES), with the
# same names and symbols, so the first sync finds them equal.
CURRENCY_ROWS = (
    ("USD", "US Dollar", "$", 0.01),
    ("EUR", "Euro", "€", 0.01),
    ("GBP", "British Pound", "£", 0.01),
    ("DKK", "Danish Krone", "kr.", 0.01),
    ("CAD", "Canadian Dollar", "CA$", 0.01),
    ("JPY", "Japanese Yen", "¥", 1.0),
    ("CHF", "Swiss Franc", "CHF", 0.01),
)
RATE_TYPES = (
    ("Default", "Default exchange rate type"),
    ("Budget", "Budget exchange rates"),
    ("Average", "Monthly average rates"),
)
# (from, to, rate, valid from, valid to) of the Default type
RATES = (
    ("USD", "EUR", 0.9215, "2026-01-01", "2026-06-30"),
    ("USD", "GBP", 0.794, "2026-01-01", "2026-06-30"),
    ("USD", "DKK", 6.8725, "2026-01-01", "2026-06-30"),
    ("USD", "CAD", 1.361, "2026-01-01", "2026-06-30"),
    ("USD", "JPY", 151.2, "2026-01-01", "2026-06-30"),
    ("EUR", "USD", 1.0852, "2026-01-01", "2026-06-30"),
)


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for code, name, symbol, precision in CURRENCY_ROWS:
        yield CURRENCIES.name, {"CurrencyCode": code, "Name": name, "Symbol": symbol, "RoundingPrecision": precision}
    for name, description in RATE_TYPES:
        yield EXCHANGE_RATE_TYPES.name, {"Name": name, "Description": description}
    for source, target, rate, valid_from, valid_to in RATES:
        yield (
            EXCHANGE_RATES.name,
            {
                "ExchangeRateTypeName": "Default",
                "FromCurrencyCode": source,
                "ToCurrencyCode": target,
                "ValidFrom": valid_from,
                "ValidTo": valid_to,
                "Rate": rate,
            },
        )


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()
