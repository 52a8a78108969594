"""The committed Avro schemas are exactly what the maps and entity declarations generate."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

import schemas
from schemas import generate


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
