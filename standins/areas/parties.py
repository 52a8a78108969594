"""Area parties: terms of payment, payment methods, vendor groups, vendors and person customers (contacts).

Company-specific, two-way. Organization customers (CustomersV3 <-> accounts) live in standins/fo.py and
standins/dataverse.py; person customers are the same CustomersV3 rows with PartyType "Person" and
go to `contacts`, declared here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import COMPANIES, NO_YES, dv_company, dv_pk, fo_company, statecode
from standins.store import EntityDef, Field

VEND_BLOCKED = ("No", "Invoice", "All", "Payment", "Requisition", "Never")

# -- F&O ---------------------------------------------------------------------------------------------
PAYMENT_TERMS = EntityDef(
    name="PaymentTerms",
    key=("dataAreaId", "Name"),
    fields=(
        fo_company(),
        Field("Name", max_length=10, required=True),
        Field("Description", max_length=60),
        Field("NumberOfDays", "int", default=0),
        Field("NumberOfMonths", "int", default=0),
        Field("CutOffDayOfMonth", "int", default=0),
        Field("IsCashPayment", "enum", values=NO_YES, default="No"),
    ),
    company_field="dataAreaId",
    event_name="mserp_paymenttermentity",
    logical_name="PaymTerm",
    type_name="PaymentTerm",
)


def _payment_method(name: str, event: str, table: str, type_name: str) -> EntityDef:
    return EntityDef(
        name=name,
        key=("dataAreaId", "Name"),
        fields=(fo_company(), Field("Name", max_length=10, required=True), Field("Description", max_length=60)),
        company_field="dataAreaId",
        event_name=event,
        logical_name=table,
        type_name=type_name,
    )


CUSTOMER_PAYMENT_METHODS = _payment_method(
    "CustomerPaymentMethods", "mserp_customerpaymentmethodentity", "CustPaymModeTable", "CustomerPaymentMethod"
)
VENDOR_PAYMENT_METHODS = _payment_method(
    "VendorPaymentMethods", "mserp_vendorpaymentmethodentity", "VendPaymModeTable", "VendorPaymentMethod"
)

VENDOR_GROUPS = EntityDef(
    name="VendorGroups",
    key=("dataAreaId", "VendorGroupId"),
    fields=(
        fo_company(),
        Field("VendorGroupId", max_length=10, required=True),
        Field("Description", max_length=60),
        Field("DefaultPaymentTermName", max_length=10, target="PaymentTerms", label="Terms of payment"),
    ),
    company_field="dataAreaId",
    event_name="mserp_vendvendorgroupentity",
    logical_name="VendGroup",
    type_name="VendorGroup",
)

VENDORS_V2 = EntityDef(
    name="VendorsV2",
    key=("dataAreaId", "VendorAccountNumber"),
    fields=(
        fo_company(),
        Field("VendorAccountNumber", max_length=20, required=True),
        Field("VendorOrganizationName", max_length=100),
        Field("VendorGroupId", max_length=10, required=True, target="VendorGroups", label="Vendor group"),
        Field("VendorPartyType", "enum", values=("Organization", "Person"), default="Organization"),
        Field("PersonFirstName", max_length=25),
        Field("PersonLastName", max_length=25),
        Field("CurrencyCode", max_length=3),
        Field("CreditLimit", "decimal", default=0),
        Field("CreditRating", max_length=10),
        Field("OnHoldStatus", "enum", values=VEND_BLOCKED, default="No"),
        Field("IsOneTimeVendor", "enum", values=NO_YES, default="No"),
        Field("IsForeignEntity", "enum", values=NO_YES, default="No"),
        Field("DUNSNumber", max_length=9),
        Field("OrganizationNumber", max_length=30),
        Field("VendorPartyNumber", max_length=40),
        Field("DefaultPaymentTermsName", max_length=10, target="PaymentTerms", label="Terms of payment"),
        Field(
            "DefaultVendorPaymentMethodName", max_length=10, target="VendorPaymentMethods", label="Method of payment"
        ),
        Field("InvoiceVendorAccountNumber", max_length=20),
        Field("SalesTaxGroupCode", max_length=10),
        Field("LanguageId", max_length=7, default="en-us"),
        Field("AddressStreet", max_length=250),
        Field("AddressCity", max_length=60),
        Field("AddressStateId", max_length=10),
        Field("AddressZipCode", max_length=10),
        Field("AddressCountryRegionId", max_length=10),
        Field("AddressLatitude", "decimal"),
        Field("AddressLongitude", "decimal"),
        Field("PrimaryEmailAddress", max_length=255),
        Field("PrimaryPhoneNumber", max_length=255),
        Field("PrimaryURL", max_length=255),
    ),
    company_field="dataAreaId",
    event_name="mserp_vendvendorv2entity",
    logical_name="VendTable",
    type_name="VendorV2",
)

FO_ENTITIES: tuple[EntityDef, ...] = (
    PAYMENT_TERMS,
    CUSTOMER_PAYMENT_METHODS,
    VENDOR_PAYMENT_METHODS,
    VENDOR_GROUPS,
    VENDORS_V2,
)

# -- Dataverse ---------------------------------------------------------------------------------------
DV_PAYMENT_TERMS = EntityDef(
    name="msdyn_paymentterms",
    key=("msdyn_paymenttermid",),
    fields=(
        dv_pk("msdyn_paymenttermid"),
        Field("msdyn_name", max_length=10, required=True),
        Field("msdyn_description", max_length=100),
        Field("msdyn_days", "int"),
        Field("msdyn_numberofmonth", "int"),
        Field("msdyn_cutoffdayofmonth", "int"),
        Field("msdyn_iscashpayment", "bool", default=False),
        dv_company(),
        statecode(),
    ),
    alternate_keys=(("msdyn_name", "msdyn_company"),),
    logical_name="msdyn_paymentterm",
)


def _dv_payment_method(name: str, logical: str) -> EntityDef:
    return EntityDef(
        name=name,
        key=(f"{logical}id",),
        fields=(
            dv_pk(f"{logical}id"),
            Field("msdyn_name", max_length=10, required=True),
            Field("msdyn_description", max_length=100),
            dv_company(),
            statecode(),
        ),
        alternate_keys=(("msdyn_name", "msdyn_company"),),
        logical_name=logical,
    )


DV_CUSTOMER_PAYMENT_METHODS = _dv_payment_method("msdyn_customerpaymentmethods", "msdyn_customerpaymentmethod")
DV_VENDOR_PAYMENT_METHODS = _dv_payment_method("msdyn_vendorpaymentmethods", "msdyn_vendorpaymentmethod")

DV_VENDOR_GROUPS = EntityDef(
    name="msdyn_vendorgroups",
    key=("msdyn_vendorgroupid",),
    fields=(
        dv_pk("msdyn_vendorgroupid"),
        Field("msdyn_vendorgroup", max_length=10, required=True),
        Field("msdyn_description", max_length=100),
        Field("msdyn_paymentterms", "lookup", target="msdyn_paymentterms"),
        dv_company(),
        statecode(),
    ),
    alternate_keys=(("msdyn_vendorgroup", "msdyn_company"),),
    logical_name="msdyn_vendorgroup",
)

DV_VENDORS = EntityDef(
    name="msdyn_vendors",
    key=("msdyn_vendorid",),
    fields=(
        dv_pk("msdyn_vendorid"),
        Field("msdyn_vendoraccountnumber", max_length=20, required=True),
        Field("msdyn_name", max_length=100),
        Field("msdyn_vendorgroupid", "lookup", target="msdyn_vendorgroups"),
        Field("msdyn_isperson", "bool", default=False),
        Field("msdyn_firstname", max_length=50),
        Field("msdyn_lastname", max_length=50),
        Field("msdyn_currencycode", "lookup", target="transactioncurrencies"),
        Field("msdyn_vendorcreditlimit", "decimal"),
        Field("msdyn_creditrating", max_length=10),
        Field("msdyn_onholdstatus", "choice", values=tuple(range(192350000, 192350006))),
        Field("msdyn_isonetimevendor", "bool", default=False),
        Field("msdyn_isforeignentity", "bool", default=False),
        Field("msdyn_dunsnumber", max_length=9),
        Field("msdyn_organizationnumber", max_length=30),
        Field("msdyn_vendorpartynumber", max_length=40),
        Field("msdyn_paymentterms", "lookup", target="msdyn_paymentterms"),
        Field("msdyn_vendorpaymentmethod", "lookup", target="msdyn_vendorpaymentmethods"),
        Field("msdyn_invoicevendoraccountnumber", "lookup", target="msdyn_vendors"),
        Field("msdyn_addressstreet", max_length=250),
        Field("msdyn_addresscity", max_length=60),
        Field("msdyn_addressstateid", max_length=10),
        Field("msdyn_addresszipcode", max_length=10),
        Field("msdyn_addresscountryregionid", max_length=10),
        Field("msdyn_addresslatitude", "decimal"),
        Field("msdyn_addresslongitude", "decimal"),
        Field("msdyn_primaryemailaddress", max_length=255),
        Field("msdyn_pimaryphonenumber", max_length=255),  # sic: Microsoft's column name
        Field("msdyn_primarycontacturl", max_length=255),
        dv_company(),
        statecode(),
    ),
    alternate_keys=(("msdyn_vendoraccountnumber", "msdyn_company"),),
    logical_name="msdyn_vendor",
)

CONTACTS = EntityDef(
    name="contacts",
    key=("contactid",),
    fields=(
        dv_pk("contactid"),
        Field("msdyn_contactpersonid", max_length=20),
        Field("msdyn_partynumber", max_length=40),
        Field("msdyn_customergroupid", "lookup", target="msdyn_customergroups"),
        Field("msdyn_paymentterms", "lookup", target="msdyn_paymentterms"),
        Field("firstname", max_length=50),
        Field("middlename", max_length=50),
        Field("lastname", max_length=50),
        Field("jobtitle", max_length=100),
        Field("gendercode", "choice", values=(1, 2)),
        Field("familystatuscode", "choice", values=(1, 2, 3, 4)),
        Field("address1_line1", max_length=250),
        Field("address1_city", max_length=80),
        Field("address1_stateorprovince", max_length=50),
        Field("address1_postalcode", max_length=20),
        Field("address1_country", max_length=80),
        Field("address1_latitude", "decimal"),
        Field("address1_longitude", "decimal"),
        Field("address1_addresstypecode", "choice", values=(1, 2, 3, 4)),
        Field("emailaddress1", max_length=100),
        Field("telephone1", max_length=50),
        Field("transactioncurrencyid", "lookup", target="transactioncurrencies"),
        Field("description", max_length=2000),
        Field("msdyn_sellable", "bool", default=False),
        dv_company(),
        statecode(),
    ),
    alternate_keys=(("msdyn_contactpersonid", "msdyn_company"),),
    logical_name="contact",
)

DATAVERSE_ENTITIES: tuple[EntityDef, ...] = (
    DV_PAYMENT_TERMS,
    DV_CUSTOMER_PAYMENT_METHODS,
    DV_VENDOR_PAYMENT_METHODS,
    DV_VENDOR_GROUPS,
    DV_VENDORS,
    CONTACTS,
)

# -- seed --------------------------------------------------------------------------------------------
TERMS = (
    ("Net10", "Net 10 days", 10, 0, "No"),
    ("Net30", "Net 30 days", 30, 0, "No"),
    ("Net45", "Net 45 days", 45, 0, "No"),
    ("M15", "Current month + 15 days", 15, 1, "No"),
    ("COD", "Cash on delivery", 0, 0, "Yes"),
)
CUSTOMER_METHODS = (("CHECK", "Check"), ("TRANSFER", "Bank transfer"), ("CASH", "Cash"))
VENDOR_METHODS = (("CHECK", "Check"), ("TRANSFER", "Electronic payment"))
VENDOR_GROUPS_SEED = (("10", "Local vendors", "Net30"), ("20", "Foreign vendors", "Net45"), ("30", "Services", "Net10"))
_VENDOR_NAMES = (
    "Fabrikam Supplier",
    "Contoso Office Supply",
    "Litware Components",
    "Proseware Parts",
    "Northwind Freight",
    "Tailspin Logistics",
    "Coho Packaging",
    "Lucerne Paper",
    "Wingtip Metals",
    "Adatum Chemicals",
)
_PERSONS = (
    ("Karen", "Berg", "Female", "Married"),
    ("Jamie", "Reding", "Male", "Single"),
    ("Nancy", "Anderson", "Female", "Single"),
    ("Omar", "Bennett", "Male", "Married"),
    ("Lee", "Gu", "Male", "Divorced"),
)


def _vendor(company: str, n: int) -> dict[str, Any]:
    us = company == "usmf"
    name = _VENDOR_NAMES[(n - 1) % len(_VENDOR_NAMES)]
    return {
        "dataAreaId": company,
        "VendorAccountNumber": f"{'US' if us else 'DE'}-{100 + n}",
        "VendorOrganizationName": name,
        "VendorGroupId": VENDOR_GROUPS_SEED[n % len(VENDOR_GROUPS_SEED)][0],
        "VendorPartyType": "Organization",
        "CurrencyCode": "USD" if us else "EUR",
        "CreditLimit": float(10000 * n),
        "CreditRating": ("A", "B")[n % 2],
        "OnHoldStatus": "No",
        "IsOneTimeVendor": "No",
        "IsForeignEntity": "No",
        "VendorPartyNumber": f"{'0002' if us else '0003'}{n:04d}",
        "DefaultPaymentTermsName": VENDOR_GROUPS_SEED[n % len(VENDOR_GROUPS_SEED)][2],
        "DefaultVendorPaymentMethodName": "CHECK" if us else "TRANSFER",
        "LanguageId": "en-us" if us else "de",
        "AddressStreet": f"{200 + n} Industrial Way" if us else f"Industriestrasse {n}",
        "AddressCity": "Seattle" if us else "Berlin",
        "AddressZipCode": f"9810{n % 10}" if us else f"1011{n % 10}",
        "AddressCountryRegionId": "USA" if us else "DEU",
        "PrimaryEmailAddress": f"orders{n}@vendor{n}.{'com' if us else 'de'}",
        "PrimaryPhoneNumber": f"+1 425-555-{2000 + n:04d}" if us else f"+49 30 5551{n:03d}",
    }


def _person_customer(company: str, n: int) -> dict[str, Any]:
    us = company == "usmf"
    first, last, gender, marital = _PERSONS[(n - 1) % len(_PERSONS)]
    return {
        "dataAreaId": company,
        "CustomerAccount": f"{'US' if us else 'DE'}-{500 + n}",
        "PartyType": "Person",
        "PersonFirstName": first,
        "PersonLastName": last,
        "PersonGender": gender,
        "PersonMaritalStatus": marital,
        "OrganizationName": f"{first} {last}",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD" if us else "EUR",
        "PaymentTerms": "Net10",
        "PaymentMethod": "CASH",
        "PartyNumber": f"{'0004' if us else '0005'}{n:04d}",
        "PrimaryContactEmail": f"{first.lower()}.{last.lower()}@example.{'com' if us else 'de'}",
        "AddressStreet": f"{10 + n} Main Street" if us else f"Hauptstrasse {n}",
        "AddressCity": "Redmond" if us else "Hamburg",
        "AddressZipCode": "98052" if us else "20095",
        "AddressCountryRegionISOCode": "US" if us else "DE",
        "LanguageId": "en-us" if us else "de",
    }


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for company in COMPANIES:
        for name, description, days, months, cash in TERMS:
            yield (
                "PaymentTerms",
                {
                    "dataAreaId": company,
                    "Name": name,
                    "Description": description,
                    "NumberOfDays": days,
                    "NumberOfMonths": months,
                    "IsCashPayment": cash,
                },
            )
        for name, description in CUSTOMER_METHODS:
            yield "CustomerPaymentMethods", {"dataAreaId": company, "Name": name, "Description": description}
        for name, description in VENDOR_METHODS:
            yield "VendorPaymentMethods", {"dataAreaId": company, "Name": name, "Description": description}
        for group, description, terms in VENDOR_GROUPS_SEED:
            yield (
                "VendorGroups",
                {
                    "dataAreaId": company,
                    "VendorGroupId": group,
                    "Description": description,
                    "DefaultPaymentTermName": terms,
                },
            )
        for n in range(1, 11):
            yield "VendorsV2", _vendor(company, n)
        for n in range(1, 6):
            yield "CustomersV3", _person_customer(company, n)


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()
