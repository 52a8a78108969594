"""Deterministic demo data for the stand-ins: data that existed before, so it raises no data events."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from schemas.catalogue import Field
from standins import areas
from standins.store import SYSTEM_USER, Store

SEED_TIME = "2026-01-05T08:00:00Z"
_ID_NAMESPACE = uuid.UUID("0b6a1f0e-3c4d-4e5f-8a9b-1c2d3e4f5a6b")

LEGAL_ENTITIES = (("usmf", "Contoso Entertainment System USA"), ("demf", "Contoso Entertainment System Germany"))
CUSTOMER_GROUPS = (
    ("10", "Wholesale customers"),
    ("20", "Major customers"),
    ("30", "Retail customers"),
    ("80", "Other customers"),
    ("90", "Intercompany customers"),
)
_US_NAMES = (
    "Forest Wholesales",
    "Sparrow Retail",
    "Lamna Healthcare Company",
    "Adventure Works",
    "Fabrikam Electronics",
    "Contoso Retail San Diego",
    "Contoso Retail Los Angeles",
    "Northwind Traders",
    "Trey Research",
    "Litware Inc.",
    "Proseware Inc.",
    "Wide World Importers",
    "Tailspin Toys",
    "Fourth Coffee",
    "Alpine Ski House",
    "Coho Winery",
    "Blue Yonder Airlines",
    "Margie's Travel",
    "Woodgrove Bank",
    "Relecloud",
    "Humongous Insurance",
    "Lucerne Publishing",
    "Graphic Design Institute",
    "School of Fine Art",
    "City Power & Light",
)
_DE_NAMES = (
    "Bergmann Handels GmbH",
    "Rheinland Elektronik AG",
    "Nordsee Fischhandel GmbH",
    "Alpenblick Sport GmbH",
    "Schwarzwald Uhren KG",
    "Hanse Logistik GmbH",
    "Bayern Maschinenbau AG",
    "Elbtal Medien GmbH",
    "Mosel Weinkontor GmbH",
    "Spree Software GmbH",
    "Ruhr Stahlhandel AG",
    "Isar Optik GmbH",
    "Harz Holzwerke GmbH",
    "Main Finanz Service GmbH",
    "Ostsee Reisen GmbH",
    "Neckar Autoteile GmbH",
    "Donau Pharma AG",
    "Weser Baustoffe GmbH",
    "Taunus Druckerei KG",
    "Allgäu Käserei GmbH",
    "Eifel Energie GmbH",
    "Lausitz Textil GmbH",
    "Pfalz Gartenbau GmbH",
    "Saar Kunststoff AG",
    "Vogtland Instrumente GmbH",
)
_US_CITIES = (
    ("Seattle", "WA", "KING", "98101", 47.6062, -122.3321),
    ("San Diego", "CA", "SAN DIEGO", "92101", 32.7157, -117.1611),
    ("Chicago", "IL", "COOK", "60601", 41.8781, -87.6298),
    ("New York", "NY", "NEW YORK", "10001", 40.7128, -74.0060),
    ("Atlanta", "GA", "FULTON", "30301", 33.7490, -84.3880),
    ("Dallas", "TX", "DALLAS", "75201", 32.7767, -96.7970),
    ("Denver", "CO", "DENVER", "80202", 39.7392, -104.9903),
    ("Boston", "MA", "SUFFOLK", "02108", 42.3601, -71.0589),
)
_DE_CITIES = (
    ("Berlin", "BE", "", "10115", 52.5200, 13.4050),
    ("München", "BY", "", "80331", 48.1351, 11.5820),
    ("Hamburg", "HH", "", "20095", 53.5511, 9.9937),
    ("Köln", "NW", "", "50667", 50.9375, 6.9603),
    ("Frankfurt am Main", "HE", "", "60311", 50.1109, 8.6821),
    ("Stuttgart", "BW", "", "70173", 48.7758, 9.1829),
    ("Düsseldorf", "NW", "", "40213", 51.2277, 6.7735),
    ("Leipzig", "SN", "", "04109", 51.3397, 12.3731),
)
_US_STREETS = ("Main Street", "Pine Avenue", "Lake Drive", "Market Street", "Oak Boulevard", "Cedar Lane")
_DE_STREETS = ("Hauptstraße", "Bahnhofstraße", "Gartenweg", "Schillerstraße", "Goethestraße", "Lindenallee")
TRANSACTION_CURRENCIES = (
    ("USD", "US Dollar", "$"),
    ("EUR", "Euro", "€"),
    ("GBP", "British Pound", "£"),
    ("DKK", "Danish Krone", "kr."),
    ("CAD", "Canadian Dollar", "CA$"),
)


def seed_id(*parts: str) -> str:
    """A stable row id for seeded data, so every start produces the same GUIDs."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


def _customer(company: str, n: int) -> dict[str, Any]:
    us = company == "usmf"
    names, cities, streets = (_US_NAMES, _US_CITIES, _US_STREETS) if us else (_DE_NAMES, _DE_CITIES, _DE_STREETS)
    name = names[(n - 1) % len(names)]
    city, state, county, zipcode, lat, lon = cities[(n - 1) % len(cities)]
    street = f"{100 + 7 * n} {streets[n % len(streets)]}" if us else f"{streets[n % len(streets)]} {n + 2}"
    domain = "".join(ch for ch in name.lower().split()[0] if ch.isalnum()) + (".com" if us else ".de")
    phone = f"+1 206-555-{1000 + n:04d}" if us else f"+49 30 5550{100 + n:03d}"
    group = CUSTOMER_GROUPS[(n - 1) % len(CUSTOMER_GROUPS)][0]
    address = {
        "Street": street,
        "City": city,
        "State": state,
        "County": county,
        "ZipCode": zipcode,
        "CountryRegionISOCode": "US" if us else "DE",
        "Latitude": lat,
        "Longitude": lon,
    }
    values: dict[str, Any] = {
        "dataAreaId": company,
        "CustomerAccount": f"{'US' if us else 'DE'}-{n:03d}",
        "OrganizationName": name,
        "CustomerGroupId": group,
        "SalesCurrencyCode": "USD" if us else "EUR",
        "CreditLimit": float(5000 * (1 + n % 10)),
        "CreditLimitIsMandatory": "Yes" if n % 4 == 0 else "No",
        "CreditRating": ("A", "B", "C")[n % 3],
        "OnHoldStatus": "No" if n % 12 else "Invoice",
        "IsOneTimeCustomer": "No",
        "PaymentTerms": "Net30" if n % 2 else "Net10",
        "PaymentMethod": "CHECK" if us else "TRANSFER",
        "PartyNumber": f"{'0000' if us else '0001'}{n:04d}",
        "OrganizationNumberOfEmployees": 10 * n + 5,
        "PrimaryContactEmail": f"info{n}@{domain}",
        "PrimaryContactPhone": phone,
        "PrimaryContactURL": f"https://www.{domain}",
        "LanguageId": "en-us" if us else "de",
        "PartyType": "Organization",
    }
    for prefix in ("DeliveryAddress", "InvoiceAddress"):
        values.update({prefix + k: v for k, v in address.items()})
    return values


def _fo_rows() -> Iterator[tuple[str, dict[str, Any]]]:
    for company, name in LEGAL_ENTITIES:
        yield "LegalEntities", {"LegalEntityId": company, "Name": name}
        for group_id, description in CUSTOMER_GROUPS:
            yield (
                "CustomerGroups",
                {
                    "dataAreaId": company,
                    "CustomerGroupId": group_id,
                    "Description": description,
                    "IsSalesTaxIncludedInPrice": "No",
                },
            )
        for n in range(1, 26):
            yield "CustomersV3", _customer(company, n)
    yield from areas.fo_seed()


def _dataverse_rows() -> Iterator[tuple[str, dict[str, Any]]]:
    for code, name, symbol in TRANSACTION_CURRENCIES:
        yield "transactioncurrencies", {"isocurrencycode": code, "currencyname": name, "currencysymbol": symbol}
    yield from areas.dataverse_seed()


def _seed(store: Store, rows: Iterable[tuple[str, dict[str, Any]]], fill: Callable[[Field], Any] | None = None) -> None:
    """Insert the rows of every set the store declares (a catalogue may leave some out); a used store is left as is."""
    if store.current_version():
        return
    with store.savepoint():
        for entity_set, values in rows:
            entity = store.entity(entity_set)
            if entity is None:
                continue
            if fill is not None:  # else the store applies the defaults of unset fields
                values = {**values, **{f.name: fill(f) for f in entity.fields if f.name not in values}}
            names = entity.key if entity.guid_key is None or not entity.alternate_keys else entity.alternate_keys[0]
            row_id = seed_id(entity.name, *(str(values[k]) for k in names))
            store.insert(entity, values, SYSTEM_USER, row_id, now=SEED_TIME)


def seed_fo(store: Store, empty_value: Callable[[Field], Any] = lambda f: None) -> None:
    """Legal entities, customer groups, 25 organization customers per company and the areas' rows.

    `empty_value` gives the value of a field the data leaves unset (F&O has no NULLs)."""
    _seed(store, _fo_rows(), empty_value)


def seed_dataverse(store: Store) -> None:
    """Reference data every org has: a few transaction currencies, and the areas' rows."""
    _seed(store, _dataverse_rows())
