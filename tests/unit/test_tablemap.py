"""Loading and validating the table maps a user edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.errors import ConfigError
from dualwrite.order import dependency_order
from dualwrite.tablemap import Direction, load_map, load_maps


def test_builtin_maps_load_and_order_by_lookups() -> None:
    maps = load_maps()
    assert set(maps) >= {"companies", "customer-groups", "customers"}
    order = dependency_order(maps)
    assert order.index("companies") < order.index("customer-groups") < order.index("customers")


def test_direction_spellings_from_microsoft_templates_are_accepted(tmp_path: Path) -> None:
    text = (
        (Path(__file__).parents[2] / "maps" / "companies.yaml")
        .read_text()
        .replace('dir: "<->", dataverse: cdm_name', 'dir: "=", dataverse: cdm_name')
    )
    (tmp_path / "c.yaml").write_text(text)
    assert load_map(tmp_path / "c.yaml").fields[1].dir is Direction.BOTH


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (('dir: "<->", dataverse: cdm_name', 'dir: "sideways", dataverse: cdm_name'), "fields.1.dir"),
        (("entity_set: LegalEntities", "entity_sets: LegalEntities"), "fo.entity_set"),
        (('{fo: Name, dir: "<->", dataverse: cdm_name}', '{fo: Name, dir: "<-"}'), "F&O-only field is a constant"),
    ],
)
def test_bad_map_names_the_file_and_field(tmp_path: Path, mutation: tuple[str, str], message: str) -> None:
    text = (Path(__file__).parents[2] / "maps" / "companies.yaml").read_text().replace(*mutation)
    (tmp_path / "companies.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_maps(tmp_path)
    assert "companies.yaml" in str(info.value)


def test_cycle_is_reported_not_guessed(tmp_path: Path) -> None:
    base = (Path(__file__).parents[2] / "maps" / "customer-groups.yaml").read_text()
    for a, b in (("a", "b"), ("b", "a")):
        text = base.replace("name: customer-groups", f"name: {a}").replace(
            '  - {fo: Description, dir: "<->", dataverse: msdyn_description}',
            '  - fo: Description\n    dir: "<->"\n    dataverse: msdyn_description\n'
            f"    lookup: {{entity_set: x, key: y, map: {b}}}",
        )
        (tmp_path / f"{a}.yaml").write_text(text)
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        dependency_order(load_maps(tmp_path))


def test_unknown_map_name_in_config_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown map.*nope"):
        load_maps(None, ["companies", "nope"])


def test_enabling_a_map_without_the_maps_it_looks_up_is_refused() -> None:
    with pytest.raises(ConfigError, match="customers looks rows up through map.*payment-terms"):
        load_maps(None, ["companies", "customer-groups", "customers"])
    assert set(load_maps(None, ["companies", "currencies"])) == {"companies", "currencies"}
