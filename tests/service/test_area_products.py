"""Area products over the real wire: units, product dimensions, dimension groups, products and
released products flow one way, F&O -> Dataverse, with their lookups resolved."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dualwrite import dlq, kafka
from wiring.stack import LocalStack, dv_company_id, dv_rows, eventually

pytestmark = pytest.mark.service
AREA_MAPS = (
    "units",
    "product-colors",
    "product-sizes",
    "product-styles",
    "product-configurations",
    "product-dimension-groups",
    "products",
    "released-products",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("products"),
        consumer={"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "missing_reference_timeout_s": 20}},
    )
    try:
        yield s
    finally:
        s.stop()


def row(
    dv: httpx.Client, entity_set: str, column: str, value: str, company: str | None = None
) -> dict[str, Any] | None:
    """The Dataverse row whose alternate-key `column` is `value` (in `company` when given)."""
    flt = f"{column} eq '{value}'"
    if company is not None:
        cid = dv_company_id(dv, company)
        if not cid:
            return None
        flt += f" and _msdyn_company_value eq {cid}"
    found = dv_rows(dv, entity_set, flt)
    assert len(found) <= 1, found
    return found[0] if found else None


def guid(dv: httpx.Client, entity_set: str, column: str, value: str, company: str | None = None) -> str:
    found = eventually(lambda: row(dv, entity_set, column, value, company), what=f"{entity_set} {value}")
    pk = f"{entity_set[:-3]}yid" if entity_set.endswith("ies") else f"{entity_set[:-1]}id"
    return str(found[pk])


def product(dv: httpx.Client, number: str, company: str = "usmf") -> dict[str, Any] | None:
    return row(dv, "products", "msdyn_productnumber", number, company)


def detail(dv: httpx.Client, item: str, company: str = "usmf") -> dict[str, Any] | None:
    return row(dv, "msdyn_sharedproductdetails", "msdyn_itemnumber", item, company)


def fo_row(fo: httpx.Client, path: str) -> dict[str, Any] | None:
    resp = fo.get(path)
    assert resp.status_code in (200, 404), resp.text
    return resp.json() if resp.status_code == 200 else None


def post(fo: httpx.Client, entity_set: str, body: dict[str, Any]) -> None:
    resp = fo.post(entity_set, json=body)
    assert resp.status_code == 201, resp.text


def patch(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    resp = client.patch(path, json=body)
    assert resp.status_code == 204, resp.text


def test_seeded_units_dimensions_and_groups_arrive_in_dataverse(stack: LocalStack, dv: httpx.Client) -> None:
    eventually(lambda: len(dv_rows(dv, "uoms")) == 8, what="8 seeded units")
    kg = row(dv, "uoms", "msdyn_symbol", "kg")
    assert kg is not None
    assert (kg["name"], kg["msdyn_description"], kg["msdyn_externalunitclassname"], kg["msdyn_decimalprecision"]) == (
        "kg",
        "Kilogram",
        "Mass",
        3,
    )
    for entity_set, column, count, value, description in (
        ("msdyn_productcolors", "msdyn_productcolorname", 4, "Silver", "Silver metallic"),
        ("msdyn_productsizes", "msdyn_productsize", 4, "XL", "Extra large"),
        ("msdyn_productstyles", "msdyn_productstyle", 3, "Sport", "Sport edition"),
        ("msdyn_productconfigurations", "msdyn_productconfiguration", 2, "Pro", "Professional configuration"),
    ):
        eventually(lambda s=entity_set, n=count: len(dv_rows(dv, s)) == n, what=f"{count} seeded {entity_set}")
        got = row(dv, entity_set, column, value)
        assert got is not None and got["msdyn_description"] == description
    eventually(lambda: len(dv_rows(dv, "msdyn_productdimensiongroups")) == 2, what="2 seeded dimension groups")
    group = row(dv, "msdyn_productdimensiongroups", "msdyn_groupname", "ColSize")
    assert group is not None and group["msdyn_description"] == "Color and size"
    assert (group["msdyn_isproductcoloractive"], group["msdyn_isproductsizeactive"]) == (True, True)
    assert (group["msdyn_isproductstyleactive"], group["msdyn_isproductconfigurationactive"]) == (False, False)


def test_seeded_products_arrive_with_lookups(stack: LocalStack, dv: httpx.Client) -> None:
    eventually(lambda: len(dv_rows(dv, "products")) == 20, timeout_s=30, what="10 seeded products per company")
    speaker = product(dv, "D0002")
    assert speaker is not None
    assert speaker["name"] == "High End Speaker" and speaker["msdyn_itemnumber"] == "D0002"
    assert float(speaker["price"]) == 1169.0 and float(speaker["currentcost"]) == 702.0
    assert (
        speaker["producttypecode"] == 1 and speaker["quantitydecimal"] == 0 and speaker["msdyn_iscatchweight"] is False
    )
    assert speaker["_defaultuomid_value"] == guid(dv, "uoms", "msdyn_symbol", "ea")
    assert speaker["_transactioncurrencyid_value"] == guid(dv, "transactioncurrencies", "isocurrencycode", "USD")
    assert speaker["_msdyn_productcolor_value"] == guid(dv, "msdyn_productcolors", "msdyn_productcolorname", "Black")
    assert speaker["_msdyn_productsize_value"] is None and speaker["_msdyn_productstyle_value"] is None

    receiver = product(dv, "D0003")
    assert receiver is not None
    assert receiver["_msdyn_productstyle_value"] == guid(dv, "msdyn_productstyles", "msdyn_productstyle", "Modern")
    assert receiver["_msdyn_productconfiguration_value"] == guid(
        dv, "msdyn_productconfigurations", "msdyn_productconfiguration", "Pro"
    )

    service = product(dv, "D0010", "demf")
    assert service is not None and service["description"] == "Installation Service (Contoso Germany)"
    assert service["producttypecode"] == 3 and service["quantitydecimal"] == 2 and float(service["price"]) == 87.4
    assert service["_transactioncurrencyid_value"] == guid(dv, "transactioncurrencies", "isocurrencycode", "EUR")
    assert service["_defaultuomid_value"] == guid(dv, "uoms", "msdyn_symbol", "h")
    assert service["_msdyn_company_value"] == dv_company_id(dv, "demf")


def test_seeded_released_products_arrive_with_lookups(stack: LocalStack, dv: httpx.Client) -> None:
    eventually(
        lambda: len(dv_rows(dv, "msdyn_sharedproductdetails")) == 20,
        timeout_s=30,
        what="10 released products per company",
    )
    cable = detail(dv, "D0006")
    assert cable is not None
    assert cable["_msdyn_globalproduct_value"] == guid(dv, "products", "msdyn_productnumber", "D0006", "usmf")
    assert cable["_msdyn_globalproduct_value"] != guid(dv, "products", "msdyn_productnumber", "D0006", "demf")
    assert cable["_msdyn_salesunitsymbol_value"] == guid(dv, "uoms", "msdyn_symbol", "m")
    assert cable["_msdyn_purchaseunitsymbol_value"] == guid(dv, "uoms", "msdyn_symbol", "box")
    assert cable["_msdyn_inventoryunitsymbol_value"] == guid(dv, "uoms", "msdyn_symbol", "m")
    assert float(cable["msdyn_salesprice"]) == 4.25 and cable["msdyn_producttype"] == 192350000
    assert cable["msdyn_sellstartdate"] == "2025-06-01T00:00:00Z"
    assert cable["msdyn_salespricedate"] == "2025-10-01T00:00:00Z"
    assert cable["_msdyn_vendorid_value"] is None and cable["_msdyn_productdimensiongroupid_value"] is None

    speaker = detail(dv, "D0002")
    assert speaker is not None and float(speaker["msdyn_netproductweight"]) == 21.0
    assert speaker["_msdyn_productdimensiongroupid_value"] == guid(
        dv, "msdyn_productdimensiongroups", "msdyn_groupname", "ColSize"
    )
    service = detail(dv, "D0010", "demf")
    assert service is not None and service["msdyn_producttype"] == 192350001

    for company, vendor in (("usmf", "US-101"), ("demf", "DE-101")):
        vendor_id = guid(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", vendor, company)
        got = eventually(
            lambda c=company: (d := detail(dv, "D0001", c)) and d["_msdyn_vendorid_value"] and d,
            what=f"released product D0001 with its vendor in {company}",
        )
        assert got["_msdyn_vendorid_value"] == vendor_id


# F&O entity set, key field, fields of a new row, Dataverse set, key column, {Dataverse column: expected},
# the F&O field an update changes and the Dataverse column that shows it.
GLOBAL_MAPS = [
    (
        "UnitsOfMeasure",
        "UnitSymbol",
        {"UnitDescription": "Test unit", "UnitClass": "Length", "DecimalPrecision": 1},
        "uoms",
        "msdyn_symbol",
        {"name": "T-unit", "msdyn_description": "Test unit", "msdyn_externalunitclassname": "Length"},
        ("UnitDescription", "msdyn_description"),
    ),
    (
        "ProductColors",
        "ColorId",
        {"Description": "Test color"},
        "msdyn_productcolors",
        "msdyn_productcolorname",
        {"msdyn_description": "Test color"},
        ("Description", "msdyn_description"),
    ),
    (
        "ProductSizes",
        "SizeId",
        {"Description": "Test size"},
        "msdyn_productsizes",
        "msdyn_productsize",
        {"msdyn_description": "Test size"},
        ("Description", "msdyn_description"),
    ),
    (
        "ProductStyles",
        "StyleId",
        {"Description": "Test style"},
        "msdyn_productstyles",
        "msdyn_productstyle",
        {"msdyn_description": "Test style"},
        ("Description", "msdyn_description"),
    ),
    (
        "ProductConfigurations",
        "ConfigurationId",
        {"Description": "Test configuration"},
        "msdyn_productconfigurations",
        "msdyn_productconfiguration",
        {"msdyn_description": "Test configuration"},
        ("Description", "msdyn_description"),
    ),
    (
        "ProductDimensionGroups",
        "GroupName",
        {"GroupDescription": "Test group", "IsProductSizeActive": "Yes", "IsProductStyleActive": "Yes"},
        "msdyn_productdimensiongroups",
        "msdyn_groupname",
        {"msdyn_description": "Test group", "msdyn_isproductsizeactive": True, "msdyn_isproductcoloractive": False},
        ("GroupDescription", "msdyn_description"),
    ),
]


@pytest.mark.parametrize(
    ("fo_set", "fo_key", "fields", "dv_set", "dv_key", "expected", "update"),
    GLOBAL_MAPS,
    ids=[m[0] for m in GLOBAL_MAPS],
)
def test_global_map_fo_create_update_delete_reach_dataverse(
    stack: LocalStack,
    fo: httpx.Client,
    dv: httpx.Client,
    fo_set: str,
    fo_key: str,
    fields: dict[str, Any],
    dv_set: str,
    dv_key: str,
    expected: dict[str, Any],
    update: tuple[str, str],
) -> None:
    value = "T-unit" if fo_set == "UnitsOfMeasure" else "T-1"
    post(fo, fo_set, {fo_key: value, **fields})
    got = eventually(lambda: row(dv, dv_set, dv_key, value), what=f"{value} in {dv_set}")
    assert {k: got[k] for k in expected} == expected
    assert "_msdyn_company_value" not in got  # a global table has no company

    fo_field, dv_column = update
    patch(fo, f"{fo_set}({fo_key}='{value}')", {fo_field: "Changed in F&O"})
    eventually(lambda: (r := row(dv, dv_set, dv_key, value)) and r[dv_column] == "Changed in F&O", what="the update")

    assert fo.delete(f"{fo_set}({fo_key}='{value}')").status_code == 204
    eventually(lambda: row(dv, dv_set, dv_key, value) is None, what=f"{value} deleted from {dv_set}")


def test_product_and_released_product_fo_create_update_delete_reach_dataverse(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    post(
        fo,
        "CDSReleasedDistinctProducts",
        {
            "dataAreaId": "usmf",
            "ProductNumber": "T-P1",
            "ProductName": "Bookshelf Speaker",
            "ItemNumber": "T-P1",
            "CurrencyCode": "GBP",
            "SalesUnitSymbol": "pcs",
            "SalesPrice": 149.99,
            "UnitCost": 80.5,
            "ProductColorId": "Red",
            "ProductSizeId": "L",
        },
    )
    post(
        fo,
        "ReleasedProductsV2",
        {
            "dataAreaId": "usmf",
            "ItemNumber": "T-P1",
            "ProductNumber": "T-P1",
            "SalesUnitSymbol": "pcs",
            "PurchaseUnitSymbol": "box",
            "InventoryUnitSymbol": "pcs",
            "SalesPrice": 149.99,
            "PurchasePrice": 75.0,
            "PrimaryVendorAccountNumber": "US-102",
            "ProductDimensionGroupName": "ColSize",
            "IsCatchWeightProduct": "Yes",
        },
    )
    p = eventually(lambda: product(dv, "T-P1"), what="product T-P1")
    assert p["name"] == "Bookshelf Speaker" and float(p["price"]) == 149.99 and float(p["currentcost"]) == 80.5
    assert p["_transactioncurrencyid_value"] == guid(dv, "transactioncurrencies", "isocurrencycode", "GBP")
    assert p["_defaultuomid_value"] == guid(dv, "uoms", "msdyn_symbol", "pcs")
    assert p["_msdyn_productcolor_value"] == guid(dv, "msdyn_productcolors", "msdyn_productcolorname", "Red")
    assert p["_msdyn_productsize_value"] == guid(dv, "msdyn_productsizes", "msdyn_productsize", "L")
    assert p["_msdyn_company_value"] == dv_company_id(dv, "usmf") and product(dv, "T-P1", "demf") is None

    d = eventually(lambda: detail(dv, "T-P1"), what="released product T-P1")
    assert d["_msdyn_globalproduct_value"] == p["productid"] and d["msdyn_iscatchweight"] is True
    assert d["_msdyn_purchaseunitsymbol_value"] == guid(dv, "uoms", "msdyn_symbol", "box")
    assert d["_msdyn_vendorid_value"] == guid(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "US-102", "usmf")
    assert float(d["msdyn_purchaseprice"]) == 75.0

    patch(
        fo,
        "CDSReleasedDistinctProducts(dataAreaId='usmf',ProductNumber='T-P1')",
        {"SalesPrice": 139.0, "ProductColorId": "", "SalesUnitSymbol": "box"},
    )
    box = guid(dv, "uoms", "msdyn_symbol", "box")
    p = eventually(lambda: (r := product(dv, "T-P1")) and float(r["price"]) == 139.0 and r, what="product T-P1 updated")
    assert p["_msdyn_productcolor_value"] is None and p["_defaultuomid_value"] == box
    assert p["_msdyn_productsize_value"] is not None

    patch(
        fo,
        "ReleasedProductsV2(dataAreaId='usmf',ItemNumber='T-P1')",
        {"PurchasePrice": 70.0, "ProductDimensionGroupName": "Config", "PrimaryVendorAccountNumber": ""},
    )
    d = eventually(
        lambda: (r := detail(dv, "T-P1")) and float(r["msdyn_purchaseprice"]) == 70.0 and r,
        what="released product T-P1 updated",
    )
    assert d["_msdyn_productdimensiongroupid_value"] == guid(
        dv, "msdyn_productdimensiongroups", "msdyn_groupname", "Config"
    )
    assert d["_msdyn_vendorid_value"] is None

    assert fo.delete("ReleasedProductsV2(dataAreaId='usmf',ItemNumber='T-P1')").status_code == 204
    assert fo.delete("CDSReleasedDistinctProducts(dataAreaId='usmf',ProductNumber='T-P1')").status_code == 204
    eventually(lambda: detail(dv, "T-P1") is None, what="released product T-P1 deleted")
    eventually(lambda: product(dv, "T-P1") is None, what="product T-P1 deleted")


def new_dv_account(dv: httpx.Client, number: str) -> None:
    cid = dv_company_id(dv, "usmf")
    group = eventually(lambda: row(dv, "msdyn_customergroups", "msdyn_groupid", "10", "usmf"), what="customer group 10")
    body = {
        "accountnumber": number,
        "name": f"Account {number}",
        "customertypecode": 3,
        "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group['msdyn_customergroupid']})",
        "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
    }
    resp = dv.post("accounts", json=body)
    assert resp.status_code in (201, 204), resp.text


def test_dataverse_edits_are_not_written_back_to_fo(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    eventually(lambda: detail(dv, "D0004"), what="seeded released product D0004")
    kg = guid(dv, "uoms", "msdyn_symbol", "kg")
    patch(dv, f"uoms({kg})", {"msdyn_description": "Changed in CRM", "msdyn_decimalprecision": 5})
    for entity_set, column, value in (
        ("msdyn_productcolors", "msdyn_productcolorname", "Black"),
        ("msdyn_productsizes", "msdyn_productsize", "S"),
        ("msdyn_productconfigurations", "msdyn_productconfiguration", "Std"),
        ("msdyn_productdimensiongroups", "msdyn_groupname", "Config"),
    ):
        patch(dv, f"{entity_set}({guid(dv, entity_set, column, value)})", {"msdyn_description": "Changed in CRM"})
    sport = guid(dv, "msdyn_productstyles", "msdyn_productstyle", "Sport")
    assert dv.delete(f"msdyn_productstyles({sport})").status_code == 204
    resp = dv.post("uoms", json={"msdyn_symbol": "T-dv", "name": "T-dv", "msdyn_description": "Made in CRM"})
    assert resp.status_code in (201, 204), resp.text
    p = product(dv, "D0004")
    d = detail(dv, "D0004")
    assert p is not None and d is not None
    patch(dv, f"products({p['productid']})", {"name": "Changed in CRM", "price": 1.0})
    patch(dv, f"msdyn_sharedproductdetails({d['msdyn_sharedproductdetailid']})", {"msdyn_salesprice": 1.0})

    # A later Dataverse change on a two-way map reaches F&O: the Dataverse side has been read past our edits.
    new_dv_account(dv, "T-PROD-1")
    eventually(lambda: fo_row(fo, "CustomersV3(dataAreaId='usmf',CustomerAccount='T-PROD-1')"), what="T-PROD-1 in F&O")

    unit = fo_row(fo, "UnitsOfMeasure(UnitSymbol='kg')")
    assert unit is not None and (unit["UnitDescription"], unit["DecimalPrecision"]) == ("Kilogram", 3)
    for path, field, value in (
        ("ProductColors(ColorId='Black')", "Description", "Black"),
        ("ProductSizes(SizeId='S')", "Description", "Small"),
        ("ProductConfigurations(ConfigurationId='Std')", "Description", "Standard configuration"),
        ("ProductDimensionGroups(GroupName='Config')", "GroupDescription", "Configuration and style"),
        ("ProductStyles(StyleId='Sport')", "Description", "Sport edition"),
        ("CDSReleasedDistinctProducts(dataAreaId='usmf',ProductNumber='D0004')", "ProductName", "Projector Television"),
        ("ReleasedProductsV2(dataAreaId='usmf',ItemNumber='D0004')", "SalesPrice", 2399),
    ):
        got = fo_row(fo, path)
        assert got is not None and got[field] == value, (path, got)
    assert fo_row(fo, "UnitsOfMeasure(UnitSymbol='T-dv')") is None


def test_nothing_of_the_area_was_dead_lettered(stack: LocalStack) -> None:
    prefix = stack.config.kafka.topic_prefix
    for name in AREA_MAPS:
        topic = kafka.map_topics(prefix, stack.maps[name])["fo"]
        letters = list(dlq.read_all(stack.config.kafka, kafka.dlq_topic(topic), idle_s=0.3))
        assert letters == [], (name, [(d.key, d.headers) for d in letters])
