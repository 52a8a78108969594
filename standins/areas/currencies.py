"""Area currencies: currencies, exchange rate types and exchange rates.

Global (shared by all legal entities), F&O is the master. Currencies and exchange rate types sync both
ways; exchange rates go one way to Dataverse. Dataverse's transactioncurrencies table is seeded in
standins/seed.py (every org has it, with a few currencies). The entity sets are in schemas/entities/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
        yield "Currencies", {"CurrencyCode": code, "Name": name, "Symbol": symbol, "RoundingPrecision": precision}
    for name, description in RATE_TYPES:
        yield "ExchangeRateTypes", {"Name": name, "Description": description}
    for source, target, rate, valid_from, valid_to in RATES:
        yield (
            "CDSExchangeRates",
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
