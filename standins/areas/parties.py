"""Area parties: terms of payment, payment methods, vendor groups, vendors and person customers (contacts).

Company-specific, two-way. Organization customers (CustomersV3 <-> accounts) are seeded in
standins/seed.py; person customers are the same CustomersV3 rows with PartyType "Person" and go to
`contacts`. The entity sets are in schemas/entities/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import COMPANIES

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
