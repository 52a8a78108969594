"""Area products (the unified product experience): units, product dimensions, dimension groups,
released distinct products and released products (entity sets in schemas/entities/).

All of it flows one way, F&O -> Dataverse. Units, dimensions and dimension groups are global (shared
across legal entities); products and released products are company-specific. Names Microsoft's docs
do not confirm are marked "Unconfirmed" in their catalogue files (and in the maps' header comments).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import COMPANIES

# -- seed rows ---------------------------------------------------------------------------------------
UNITS = (
    # symbol, description, class, decimals, system of units
    ("ea", "Each", "Quantity", 0, "None"),
    ("pcs", "Pieces", "Quantity", 0, "None"),
    ("box", "Box", "Quantity", 0, "None"),
    ("kg", "Kilogram", "Mass", 3, "Metric"),
    ("g", "Gram", "Mass", 0, "Metric"),
    ("l", "Liter", "Volume", 2, "Metric"),
    ("m", "Meter", "Length", 2, "Metric"),
    ("h", "Hour", "Time", 2, "None"),
)
COLORS = (("Black", "Black"), ("White", "White"), ("Red", "Red"), ("Silver", "Silver metallic"))
SIZES = (("S", "Small"), ("M", "Medium"), ("L", "Large"), ("XL", "Extra large"))
STYLES = (("Classic", "Classic design"), ("Modern", "Modern design"), ("Sport", "Sport edition"))
CONFIGURATIONS = (("Std", "Standard configuration"), ("Pro", "Professional configuration"))
DIMENSION_GROUPS = (
    # name, description, color, size, style, configuration active
    ("ColSize", "Color and size", "Yes", "Yes", "No", "No"),
    ("Config", "Configuration and style", "No", "No", "Yes", "Yes"),
)
# number, name, type, unit, price (USD), cost (USD), color, size, style, configuration, dimension group
PRODUCTS_SEED = (
    ("D0001", "Mid-Range Speaker", "Item", "ea", 219.0, 132.5, "", "", "", "", ""),
    ("D0002", "High End Speaker", "Item", "ea", 1169.0, 702.0, "Black", "", "", "", "ColSize"),
    ("D0003", "Surround Sound Receiver", "Item", "ea", 549.0, 310.25, "", "", "Modern", "Pro", "Config"),
    ("D0004", "Projector Television", "Item", "ea", 2399.0, 1540.0, "", "", "", "", ""),
    ("D0005", "Stereo Headphones", "Item", "pcs", 89.5, 41.0, "White", "M", "", "", "ColSize"),
    ("D0006", "Speaker Cable", "Item", "m", 4.25, 1.1, "", "", "", "", ""),
    ("D0007", "Cleaning Kit", "Item", "box", 24.0, 9.75, "", "", "", "", ""),
    ("D0008", "Speaker Stand Weights", "Item", "kg", 12.0, 4.4, "", "", "", "", ""),
    ("D0009", "Contact Cleaning Fluid", "Item", "l", 18.9, 6.2, "", "", "", "", ""),
    ("D0010", "Installation Service", "Service", "h", 95.0, 55.0, "", "", "", "", ""),
)
# The seeded released products with a primary vendor (the parties area seeds US-101.. / DE-101..).
VENDOR_OF = {("usmf", "D0001"): "US-101", ("demf", "D0001"): "DE-101"}
_WEIGHTS_KG = {"D0001": 7.5, "D0002": 21.0, "D0003": 9.8, "D0004": 4.2, "D0005": 0.3, "D0008": 1.0}


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for symbol, description, unit_class, decimals, system in UNITS:
        yield (
            "UnitsOfMeasure",
            {
                "UnitSymbol": symbol,
                "UnitDescription": description,
                "UnitClass": unit_class,
                "DecimalPrecision": decimals,
                "SystemOfUnits": system,
            },
        )
    for entity_set, key, rows in (
        ("ProductColors", "ColorId", COLORS),
        ("ProductSizes", "SizeId", SIZES),
        ("ProductStyles", "StyleId", STYLES),
        ("ProductConfigurations", "ConfigurationId", CONFIGURATIONS),
    ):
        for value, description in rows:
            yield entity_set, {key: value, "Description": description}
    for name, description, color, size, style, config in DIMENSION_GROUPS:
        yield (
            "ProductDimensionGroups",
            {
                "GroupName": name,
                "GroupDescription": description,
                "IsProductColorActive": color,
                "IsProductSizeActive": size,
                "IsProductStyleActive": style,
                "IsProductConfigurationActive": config,
            },
        )
    for company in COMPANIES:
        us = company == "usmf"
        rate = 1.0 if us else 0.92  # demf prices in EUR
        for number, name, ptype, unit, price, cost, color, size, style, config, _ in PRODUCTS_SEED:
            yield (
                "CDSReleasedDistinctProducts",
                {
                    "dataAreaId": company,
                    "ProductNumber": number,
                    "ProductName": name,
                    "ProductDescription": f"{name} ({'Contoso USA' if us else 'Contoso Germany'})",
                    "ItemNumber": number,
                    "CurrencyCode": "USD" if us else "EUR",
                    "SalesUnitSymbol": unit,
                    "SalesUnitDecimalPrecision": next(u[3] for u in UNITS if u[0] == unit),
                    "SalesPrice": round(price * rate, 2),
                    "UnitCost": round(cost * rate, 2),
                    "ProductType": ptype,
                    "IsCatchWeightProduct": "No",
                    "ProductColorId": color,
                    "ProductSizeId": size,
                    "ProductStyleId": style,
                    "ProductConfigurationId": config,
                },
            )
        for n, (number, _, ptype, unit, price, cost, *_dims, group) in enumerate(PRODUCTS_SEED):
            yield (
                "ReleasedProductsV2",
                {
                    "dataAreaId": company,
                    "ItemNumber": number,
                    "ProductNumber": number,
                    "ProductType": ptype,
                    "SalesUnitSymbol": unit,
                    "PurchaseUnitSymbol": "box" if number == "D0006" else unit,
                    "InventoryUnitSymbol": unit,
                    "SalesPrice": round(price * rate, 2),
                    "SalesPriceDate": "2025-10-01T00:00:00Z",
                    "PurchasePrice": round(cost * rate * 0.95, 2),
                    "UnitCost": round(cost * rate, 2),
                    "NetProductWeight": _WEIGHTS_KG.get(number, 0.0),
                    "TareProductWeight": round(_WEIGHTS_KG.get(number, 0.0) * 0.1, 2),
                    "ProductVolume": 0.0,
                    "SellStartDate": f"2025-{1 + n:02d}-01T00:00:00Z",
                    "PrimaryVendorAccountNumber": VENDOR_OF.get((company, number), ""),
                    "ProductDimensionGroupName": group,
                    "IsCatchWeightProduct": "No",
                },
            )


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()
