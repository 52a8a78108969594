"""The committed Avro schemas are exactly what the maps and the entity catalogue generate."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import fastavro
import pytest

import schemas
from dualwrite.tablemap import builtin_maps_dir
from schemas import generate
from schemas.catalogue import Field, builtin_entities_dir, load_catalogue, write_entity


def test_committed_schemas_match_the_maps(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0, capsys.readouterr().err


def test_every_generated_schema_parses_and_round_trips_a_row() -> None:
    for path, schema in generate.build(generate.load_maps()).items():
        parsed = fastavro.parse_schema(schema)
        side = path.parent.name
        entity_set = path.stem
        names = list(schemas.record_fields(side, entity_set))
        assert names, path
        event = {
            "event_id": "e1",
            "op": "update",
            "entity": entity_set,
            "company": "usmf",
            "key": "usmf|1",
            "source_time": 0,
            "source_version": None,
            "origin": {"side": side, "by_dualwrite": False, "user_id": None, "correlation_id": None},
            "after": dict.fromkeys(names),
        }
        assert json.loads(json.dumps(schema)) == schema
        fastavro.validate(event, parsed, raise_errors=True)


def test_a_map_naming_an_undeclared_field_is_refused() -> None:
    maps = generate.load_maps()
    m = maps["companies"]
    broken = m.model_copy(update={"fields": [*m.fields, m.fields[1].model_copy(update={"fo": "NoSuchField"})]})
    with pytest.raises(SystemExit, match="NoSuchField"):
        generate.build({**maps, "companies": broken})


def test_strimzi_topics_cover_every_map() -> None:
    import runpy

    script = Path(__file__).parents[2] / "deploy" / "strimzi" / "generate_topics.py"
    module = runpy.run_path(str(script))
    assert module["main"](["--check"]) == 0, "deploy/strimzi/topics.yaml is stale"
    text = (script.parent / "topics.yaml").read_text()
    assert "topicName: dualwrite.fo.customersv3.persons\n" in text and "topicName: dualwrite.control\n" in text


def _custom(tmp_path: Path) -> tuple[Path, Path]:
    """The built-in maps and catalogue, plus a custom region field on companies on both sides."""
    maps, entities = tmp_path / "maps", tmp_path / "entities"
    shutil.copytree(builtin_maps_dir(), maps, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(builtin_entities_dir(), entities)
    path = maps / "companies.yaml"
    path.write_text(path.read_text() + '  - {fo: RegionCode, dir: "->", dataverse: cdm_regioncode}\n')
    for side, entity_set, name in (
        ("fo", "LegalEntities", "RegionCode"),
        ("dataverse", "cdm_companies", "cdm_regioncode"),
    ):
        entity = load_catalogue().entity(side, entity_set)
        write_entity(entities, side, replace(entity, fields=(*entity.fields, Field(name, max_length=10))))
    return maps, entities


def test_a_users_maps_and_catalogue_generate_their_own_schemas(tmp_path: Path) -> None:
    maps, entities = _custom(tmp_path)
    out = tmp_path / "schemas"
    args = ["--maps", str(maps), "--entities", str(entities), "--out", str(out)]
    assert generate.main(args) == 0
    fo = json.loads((out / "fo" / "legalentities.avsc").read_text())
    row = next(t for t in fo["fields"][-1]["type"] if isinstance(t, dict))
    assert {"name": "RegionCode", "type": ["null", "string"], "default": None} in row["fields"]
    assert (out / "dataverse" / "cdm_companies.avsc").exists()
    assert generate.main([*args, "--check"]) == 0
    assert generate.main(["--check"]) == 0  # the built-in schemas are untouched


def test_a_map_naming_a_field_the_users_catalogue_lacks_is_refused(tmp_path: Path) -> None:
    maps, _ = _custom(tmp_path)
    with pytest.raises(SystemExit, match="field cdm_regioncode, which the entity does not have"):
        generate.main(["--maps", str(maps), "--out", str(tmp_path / "schemas")])


def test_an_entity_set_missing_from_the_catalogue_names_the_file(tmp_path: Path) -> None:
    entities = tmp_path / "entities"
    shutil.copytree(builtin_entities_dir(), entities)
    (entities / "fo" / "VendorsV2.yaml").unlink()
    with pytest.raises(SystemExit, match=r"fo entity set VendorsV2 is not in the entity catalogue.*VendorsV2\.yaml"):
        generate.build(generate.load_maps(), load_catalogue(entities), tmp_path)
