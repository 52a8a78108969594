"""Area products (the unified product experience): units, product dimensions, dimension groups,
released distinct products and released products.

All of it flows one way, F&O -> Dataverse. Units, dimensions and dimension groups are global (shared
across legal entities); products and released products are company-specific. Names Microsoft's docs
do not confirm are marked "unconfirmed" (see also the maps' header comments).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import COMPANIES, NO_YES, dv_company, dv_pk, fo_company, statecode
from standins.store import EntityDef, Field

UNIT_CLASSES = ("Quantity", "Length", "Area", "Volume", "Mass", "Time", "Temperature", "Energy", "Undefined")
SYSTEMS_OF_UNITS = ("None", "Metric", "UnitedStates")
PRODUCT_TYPES = ("Item", "Service")


# -- F&O ---------------------------------------------------------------------------------------------
UNITS_OF_MEASURE = EntityDef(
    name="UnitsOfMeasure",
    key=("UnitSymbol",),
    fields=(
        Field("UnitSymbol", max_length=10, required=True),
        Field("UnitDescription", max_length=50),
        Field("UnitClass", "enum", values=UNIT_CLASSES, default="Quantity"),
        Field("DecimalPrecision", "int", default=0),
        Field("SystemOfUnits", "enum", values=SYSTEMS_OF_UNITS, default="None"),
    ),
    event_name="mserp_unitofmeasureentity",
    logical_name="UnitOfMeasure",
    type_name="UnitOfMeasure",
)


def _dimension(name: str, key: str, entity: str, type_name: str) -> EntityDef:
    """A product dimension's value table (color, size, style, configuration): an id and a description."""
    return EntityDef(
        name=name,
        key=(key,),
        fields=(Field(key, max_length=10, required=True), Field("Description", max_length=60)),
        event_name=f"mserp_{entity.lower()}",
        logical_name=entity,
        type_name=type_name,
    )


PRODUCT_COLORS = _dimension("ProductColors", "ColorId", "EcoResProductColorEntity", "ProductColor")
PRODUCT_SIZES = _dimension("ProductSizes", "SizeId", "EcoResProductSizeEntity", "ProductSize")
PRODUCT_STYLES = _dimension("ProductStyles", "StyleId", "EcoResProductStyleEntity", "ProductStyle")
# unconfirmed: entity set and entity class of the configuration values
PRODUCT_CONFIGURATIONS = _dimension(
    "ProductConfigurations", "ConfigurationId", "EcoResProductConfigurationEntity", "ProductConfiguration"
)

# unconfirmed: entity set and entity class
PRODUCT_DIMENSION_GROUPS = EntityDef(
    name="ProductDimensionGroups",
    key=("GroupName",),
    fields=(
        Field("GroupName", max_length=10, required=True),
        Field("GroupDescription", max_length=60),
        Field("IsProductColorActive", "enum", values=NO_YES, default="No"),
        Field("IsProductSizeActive", "enum", values=NO_YES, default="No"),
        Field("IsProductStyleActive", "enum", values=NO_YES, default="No"),
        Field("IsProductConfigurationActive", "enum", values=NO_YES, default="No"),
    ),
    event_name="mserp_ecoresproductdimensiongroupentity",
    logical_name="EcoResProductDimensionGroup",
    type_name="ProductDimensionGroup",
)


def _unit(name: str) -> Field:
    return Field(name, max_length=10, target="UnitsOfMeasure", label="Unit")


RELEASED_DISTINCT_PRODUCTS = EntityDef(
    name="CDSReleasedDistinctProducts",
    key=("dataAreaId", "ProductNumber"),
    fields=(
        fo_company(),
        Field("ProductNumber", max_length=20, required=True),
        Field("ProductName", max_length=60),
        Field("ProductDescription", max_length=1000),
        Field("ItemNumber", max_length=20),
        Field("CurrencyCode", max_length=3),
        _unit("SalesUnitSymbol"),
        Field("SalesUnitDecimalPrecision", "int", default=0),
        Field("SalesPrice", "decimal", default=0),
        Field("UnitCost", "decimal", default=0),
        Field("ProductType", "enum", values=PRODUCT_TYPES, default="Item"),
        Field("IsCatchWeightProduct", "enum", values=NO_YES, default="No"),
        Field("ProductColorId", max_length=10, target="ProductColors", label="Color"),
        Field("ProductSizeId", max_length=10, target="ProductSizes", label="Size"),
        Field("ProductStyleId", max_length=10, target="ProductStyles", label="Style"),
        Field("ProductConfigurationId", max_length=10, target="ProductConfigurations", label="Configuration"),
    ),
    company_field="dataAreaId",
    event_name="mserp_ecoresreleaseddistinctproductcdsentity",
    logical_name="EcoResReleasedDistinctProductCDSEntity",
    type_name="CDSReleasedDistinctProduct",
)

RELEASED_PRODUCTS_V2 = EntityDef(
    name="ReleasedProductsV2",
    key=("dataAreaId", "ItemNumber"),
    fields=(
        fo_company(),
        Field("ItemNumber", max_length=20, required=True),
        Field("ProductNumber", max_length=20, required=True, target="CDSReleasedDistinctProducts", label="Product"),
        Field("ProductType", "enum", values=PRODUCT_TYPES, default="Item"),
        _unit("SalesUnitSymbol"),
        _unit("PurchaseUnitSymbol"),
        _unit("InventoryUnitSymbol"),
        Field("SalesPrice", "decimal", default=0),
        Field("SalesPriceDate", "datetime"),
        Field("PurchasePrice", "decimal", default=0),
        Field("UnitCost", "decimal", default=0),
        Field("NetProductWeight", "decimal", default=0),
        Field("TareProductWeight", "decimal", default=0),
        Field("ProductVolume", "decimal", default=0),
        Field("SellStartDate", "datetime"),
        # No reference check: vendors belong to the parties area, which this area does not depend on.
        Field("PrimaryVendorAccountNumber", max_length=20),
        Field(
            "ProductDimensionGroupName", max_length=10, target="ProductDimensionGroups", label="Product dimension group"
        ),
        Field("IsCatchWeightProduct", "enum", values=NO_YES, default="No"),
    ),
    company_field="dataAreaId",
    event_name="mserp_ecoresreleasedproductv2entity",
    logical_name="EcoResReleasedProductV2Entity",
    type_name="ReleasedProductV2",
)

FO_ENTITIES: tuple[EntityDef, ...] = (
    UNITS_OF_MEASURE,
    PRODUCT_COLORS,
    PRODUCT_SIZES,
    PRODUCT_STYLES,
    PRODUCT_CONFIGURATIONS,
    PRODUCT_DIMENSION_GROUPS,
    RELEASED_DISTINCT_PRODUCTS,
    RELEASED_PRODUCTS_V2,
)

# -- Dataverse ---------------------------------------------------------------------------------------
UOMS = EntityDef(
    name="uoms",
    key=("uomid",),
    fields=(
        dv_pk("uomid"),
        Field("msdyn_symbol", max_length=10, required=True),
        Field("name", max_length=100),
        Field("msdyn_description", max_length=100),
        Field("msdyn_externalunitclassname", max_length=100),
        Field("msdyn_decimalprecision", "int"),
        statecode(),
    ),
    alternate_keys=(("msdyn_symbol",),),
    logical_name="uom",
)


def _dv_dimension(name: str, column: str) -> EntityDef:
    logical = name[:-1]
    return EntityDef(
        name=name,
        key=(f"{logical}id",),
        fields=(
            dv_pk(f"{logical}id"),
            Field(column, max_length=10, required=True),
            Field("msdyn_description", max_length=100),
            statecode(),
        ),
        alternate_keys=((column,),),
        logical_name=logical,
    )


DV_PRODUCT_COLORS = _dv_dimension("msdyn_productcolors", "msdyn_productcolorname")
DV_PRODUCT_SIZES = _dv_dimension("msdyn_productsizes", "msdyn_productsize")
DV_PRODUCT_STYLES = _dv_dimension("msdyn_productstyles", "msdyn_productstyle")
DV_PRODUCT_CONFIGURATIONS = _dv_dimension("msdyn_productconfigurations", "msdyn_productconfiguration")

DV_PRODUCT_DIMENSION_GROUPS = EntityDef(
    name="msdyn_productdimensiongroups",
    key=("msdyn_productdimensiongroupid",),
    fields=(
        dv_pk("msdyn_productdimensiongroupid"),
        Field("msdyn_groupname", max_length=10, required=True),
        Field("msdyn_description", max_length=100),
        Field("msdyn_isproductcoloractive", "bool", default=False),
        Field("msdyn_isproductsizeactive", "bool", default=False),
        Field("msdyn_isproductstyleactive", "bool", default=False),
        Field("msdyn_isproductconfigurationactive", "bool", default=False),
        statecode(),
    ),
    alternate_keys=(("msdyn_groupname",),),
    logical_name="msdyn_productdimensiongroup",
)

PRODUCTS = EntityDef(
    name="products",
    key=("productid",),
    fields=(
        dv_pk("productid"),
        Field("msdyn_productnumber", max_length=20, required=True),
        Field("name", max_length=100),
        Field("description", max_length=2000),
        Field("msdyn_itemnumber", max_length=20),
        dv_company(),
        Field("transactioncurrencyid", "lookup", target="transactioncurrencies"),
        Field("defaultuomid", "lookup", target="uoms"),
        Field("price", "decimal"),
        Field("currentcost", "decimal"),
        # Dataverse's product type: 1 Sales Inventory, 2 Miscellaneous Charges, 3 Services, 4 Flat Fees.
        Field("producttypecode", "choice", values=(1, 2, 3, 4)),
        Field("quantitydecimal", "int"),
        Field("msdyn_iscatchweight", "bool", default=False),
        Field("msdyn_productcolor", "lookup", target="msdyn_productcolors"),
        Field("msdyn_productsize", "lookup", target="msdyn_productsizes"),
        Field("msdyn_productstyle", "lookup", target="msdyn_productstyles"),
        Field("msdyn_productconfiguration", "lookup", target="msdyn_productconfigurations"),
        statecode(),
    ),
    alternate_keys=(("msdyn_productnumber", "msdyn_company"),),
    logical_name="product",
)

# unconfirmed: the alternate key and the option values of msdyn_producttype
SHARED_PRODUCT_DETAILS = EntityDef(
    name="msdyn_sharedproductdetails",
    key=("msdyn_sharedproductdetailid",),
    fields=(
        dv_pk("msdyn_sharedproductdetailid"),
        Field("msdyn_itemnumber", max_length=20, required=True),
        dv_company(),
        Field("msdyn_globalproduct", "lookup", target="products"),
        Field("msdyn_producttype", "choice", values=(192350000, 192350001)),
        Field("msdyn_salesunitsymbol", "lookup", target="uoms"),
        Field("msdyn_purchaseunitsymbol", "lookup", target="uoms"),
        Field("msdyn_inventoryunitsymbol", "lookup", target="uoms"),
        Field("msdyn_salesprice", "decimal"),
        Field("msdyn_salespricedate", "datetime"),
        Field("msdyn_purchaseprice", "decimal"),
        Field("msdyn_unitcost", "decimal"),
        Field("msdyn_netproductweight", "decimal"),
        Field("msdyn_tareproductweight", "decimal"),
        Field("msdyn_productvolume", "decimal"),
        Field("msdyn_sellstartdate", "datetime"),
        Field("msdyn_vendorid", "lookup", target="msdyn_vendors"),
        Field("msdyn_productdimensiongroupid", "lookup", target="msdyn_productdimensiongroups"),
        Field("msdyn_iscatchweight", "bool", default=False),
        statecode(),
    ),
    alternate_keys=(("msdyn_itemnumber", "msdyn_company"),),
    logical_name="msdyn_sharedproductdetail",
)

DATAVERSE_ENTITIES: tuple[EntityDef, ...] = (
    UOMS,
    DV_PRODUCT_COLORS,
    DV_PRODUCT_SIZES,
    DV_PRODUCT_STYLES,
    DV_PRODUCT_CONFIGURATIONS,
    DV_PRODUCT_DIMENSION_GROUPS,
    PRODUCTS,
    SHARED_PRODUCT_DETAILS,
)

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
            UNITS_OF_MEASURE.name,
            {
                "UnitSymbol": symbol,
                "UnitDescription": description,
                "UnitClass": unit_class,
                "DecimalPrecision": decimals,
                "SystemOfUnits": system,
            },
        )
    for entity, rows in (
        (PRODUCT_COLORS, COLORS),
        (PRODUCT_SIZES, SIZES),
        (PRODUCT_STYLES, STYLES),
        (PRODUCT_CONFIGURATIONS, CONFIGURATIONS),
    ):
        for value, description in rows:
            yield entity.name, {entity.key[0]: value, "Description": description}
    for name, description, color, size, style, config in DIMENSION_GROUPS:
        yield (
            PRODUCT_DIMENSION_GROUPS.name,
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
                RELEASED_DISTINCT_PRODUCTS.name,
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
                RELEASED_PRODUCTS_V2.name,
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
