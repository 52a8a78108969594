"""The entity catalogue: the built-in files load, dump/load round-trips, and a broken file says where."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dualwrite.errors import ConfigError
from schemas.catalogue import Entity, Field, dump_entity, entity_from_dict, load_catalogue, load_entity, write_entity


def test_the_built_in_catalogue_loads() -> None:
    catalogue = load_catalogue()
    assert len(catalogue.entities("fo")) == 23 and len(catalogue.entities("dataverse")) == 24
    customers = catalogue.entity("fo", "CustomersV3")
    assert customers.key == ("dataAreaId", "CustomerAccount") and customers.company_field == "dataAreaId"
    assert customers.event_name == "mserp_custcustomerv3entity" and customers.type_name == "CustomerV3"
    group = customers.field("CustomerGroupId")
    assert group == Field(
        "CustomerGroupId", "string", 10, target="CustomerGroups", required=True, label="Customer group"
    )
    assert customers.field("CreditLimitIsMandatory") == Field(
        "CreditLimitIsMandatory", "enum", values=("No", "Yes"), default="No"
    )
    accounts = catalogue.entity("dataverse", "accounts")
    assert accounts.guid_key == "accountid" and accounts.logical_name == "account" and accounts.primary_name == "name"
    assert accounts.alternate_keys == (("accountnumber", "msdyn_company"),)
    assert accounts.field("statecode") == Field("statecode", "choice", values=(0, 1), default=0)


def test_every_built_in_entity_round_trips(tmp_path: Path) -> None:
    catalogue = load_catalogue()
    for side in ("fo", "dataverse"):
        for entity in catalogue.entities(side):
            path = write_entity(tmp_path, side, entity)
            assert load_entity(path) == entity, entity.name
    assert load_catalogue(tmp_path).sides == catalogue.sides


def test_yaml_look_alikes_survive_a_round_trip(tmp_path: Path) -> None:
    tricky = ("No", "Yes", "on", "off", "y", "n", "null", "~", "1.0", "0x1F", "a: b # c")
    entity = Entity(
        "Things",
        ("ThingId",),
        (
            Field("ThingId", max_length=10, required=True),
            Field("Kind", "enum", values=tricky, default="off", label='Kind: #1 "quoted"'),
            Field("Level", "choice", values=(0, 192350000), default=192350000),
            Field("Rate", "decimal", default=0.01),
            Field("Active", "bool", default=False),
            Field("Städte", max_length=60),
        ),
        event_name="mserp_thingentity",
        type_name="Thing",
    )
    text = dump_entity(entity)
    assert text.startswith("# Entity set Things: imported from the service's metadata")
    assert 'values: ["No", "Yes", "on", "off"' in text  # quoted for any YAML 1.1 reader, not just ours
    path = write_entity(tmp_path, "fo", entity)
    assert load_entity(path) == entity


def _broken(tmp_path: Path, text: str, name: str = "Things") -> Path:
    path = tmp_path / "fo" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: Things\nkey: [Id]\nfields:\n- {name: Id, type: text}\n", "field Id: type 'text' is not one of"),
        (
            "name: Things\nkey: [Id]\nfields:\n- {name: Id}\n- {name: Kind, type: enum, values: [No, Yes]}\n",
            "field Kind",
        ),
        ("name: Things\nkey: [Id]\nfields:\n- {name: Id, maxlength: 4}\n", "field Id: unknown key(s) maxlength"),
        ("name: Things\nkey: [Id]\nfields:\n- {name: Id, max_length: -1}\n", "field Id: max_length"),
        ("name: Things\nkey: [Nope]\nfields:\n- {name: Id}\n", "key: field Nope is not declared"),
        ("name: Things\nkey: [Id]\nfields:\n- {name: Id}\n- {name: Id}\n", "field Id: declared twice"),
        ("name: Things\nkey: [Id]\nfields:\n- {name: Id, type: int, default: many}\n", "field Id: default 'many'"),
        ("name: Others\nkey: [Id]\nfields:\n- {name: Id}\n", "differs from the file name"),
        ("name: Things\nkey: [Id]\nfields: [\n", "not valid YAML"),
        ("name: Things\nkey: [Id]\n", "fields: a non-empty list"),
    ],
)
def test_a_broken_file_names_the_file_and_the_field(tmp_path: Path, body: str, message: str) -> None:
    path = _broken(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_entity(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    with pytest.raises(ConfigError, match="Things.yaml"):
        load_catalogue(tmp_path)


def test_unquoted_no_yes_is_caught() -> None:
    # YAML 1.1 reads a bare No as false: the enum check names the field and says to quote
    assert yaml.safe_load("[No, Yes]") == [False, True]
    with pytest.raises(ConfigError, match=r'field Kind: .*quote "No"/"Yes"'):
        entity_from_dict(yaml.safe_load("name: T\nkey: [Kind]\nfields:\n- {name: Kind, type: enum, values: [No, Yes]}"))


def test_an_unknown_entity_set_names_the_expected_file(tmp_path: Path) -> None:
    (tmp_path / "fo").mkdir()
    catalogue = load_catalogue(tmp_path)
    assert catalogue.entities("dataverse") == ()
    with pytest.raises(
        ConfigError, match=r"fo entity set 'CustomersV3' is not in the entity catalogue.*CustomersV3\.yaml"
    ):
        catalogue.entity("fo", "CustomersV3")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_catalogue(tmp_path / "missing")
