"""The change envelope round-trips through Avro in the Confluent wire format's schema."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import fastavro

import schemas
from dualwrite.envelope import ChangeEvent, Op, Origin, Side


def test_event_round_trips_through_the_registered_schema() -> None:
    parsed = fastavro.parse_schema(schemas.load("fo", "CustomersV3"))
    event = ChangeEvent(
        Op.CREATE,
        "CustomersV3",
        "usmf",
        "usmf|US-001",
        datetime(2026, 11, 24, 12, 0, 0, 123000, tzinfo=UTC),
        Origin(Side.FO, False, "user-1", "corr-1"),
        {"dataAreaId": "usmf", "CustomerAccount": "US-001", "CreditLimit": Decimal("10.500000")},
        source_version="7",
    )
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, event.to_avro())
    back = ChangeEvent.from_avro(fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed))
    assert back.event_id == event.event_id and back.op is Op.CREATE and back.key == "usmf|US-001"
    assert back.source_time == event.source_time and back.origin == event.origin
    assert back.after is not None and back.after["CreditLimit"] == Decimal("10.500000")
    assert back.after["OrganizationName"] is None


def test_every_schema_has_the_envelope_fields() -> None:
    for side, entity in [
        ("fo", "LegalEntities"),
        ("fo", "CustomerGroups"),
        ("fo", "CustomersV3"),
        ("dataverse", "cdm_companies"),
        ("dataverse", "msdyn_customergroups"),
        ("dataverse", "accounts"),
    ]:
        names = [f["name"] for f in schemas.load(side, entity)["fields"]]
        assert names == [
            "event_id",
            "op",
            "entity",
            "company",
            "key",
            "source_time",
            "source_version",
            "source_id",
            "origin",
            "after",
        ]
