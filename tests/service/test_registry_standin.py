"""The schema-registry stand-in over real HTTP, as confluent_kafka's client and serdes and httpx see it."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import ConfigCompatibilityLevel, ServerConfig
from confluent_kafka.serialization import MessageField, SerializationContext

from standins.registry import Settings, create_app
from standins.server import BackgroundServer

SR_JSON = "application/vnd.schemaregistry.v1+json"


def record(*fields: dict[str, Any], name: str = "Account") -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "dw.test", "fields": list(fields)})


ID = {"name": "id", "type": "string"}
V1 = record(ID)
V2 = record(ID, {"name": "email", "type": ["null", "string"], "default": None})
NO_DEFAULT = record(ID, {"name": "email", "type": "string"})
ID_AS_INT = record({"name": "id", "type": "int"})


def serve(settings: Settings) -> BackgroundServer:
    srv = BackgroundServer(create_app(settings))
    return srv.start()


@pytest.fixture
def server() -> Iterator[BackgroundServer]:
    srv = serve(Settings())
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def sr(server: BackgroundServer) -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient({"url": server.url, "max.retries": 0})
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Content-Type": SR_JSON}) as client:
        yield client


def avro(text: str) -> Schema:
    return Schema(text, "AVRO")


def level(name: str) -> ServerConfig:
    return ServerConfig(compatibility=ConfigCompatibilityLevel(name))


def registry_error(call: Any, *args: Any, **kwargs: Any) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as info:
        call(*args, **kwargs)
    return info.value


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SR_JSON)
    body = response.json()
    assert body["error_code"] == code and isinstance(body["message"], str)
    return body


def test_register_is_idempotent_and_readable_back(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    first = sr.register_schema("accounts-value", avro(V1))
    # Same schema, other whitespace and key order: still the same schema.
    reordered = json.dumps(json.loads(V1), indent=2, sort_keys=True)
    raw = http.post("/subjects/accounts-value/versions", json={"schema": reordered})
    assert raw.status_code == 200 and raw.json() == {"id": first}

    assert sr.get_versions("accounts-value") == [1]
    assert sr.get_subjects() == ["accounts-value"]
    assert sr.get_schema_types() == ["AVRO"]
    assert json.loads(sr.get_schema(first).schema_str or "null") == json.loads(V1)
    latest = sr.get_latest_version("accounts-value")
    assert (latest.subject, latest.version, latest.schema_id) == ("accounts-value", 1, first)
    assert http.get(f"/schemas/ids/{first}").json() == {"schema": latest.schema.schema_str}
    assert json.loads(http.get("/subjects/accounts-value/versions/1/schema").text) == json.loads(V1)
    assert http.get("/").json() == {} and http.get("/mode").json() == {"mode": "READWRITE"}


def test_same_schema_under_two_subjects_shares_its_id(sr: SchemaRegistryClient) -> None:
    a = sr.register_schema("a-value", avro(V1))
    b = sr.register_schema("b-value", avro(V1))
    other = sr.register_schema("c-value", avro(V2))
    assert a == b != other
    assert sorted((v.subject, v.version) for v in sr.get_schema_versions(a)) == [
        ("a-value", 1),
        ("b-value", 1),
    ]
    assert sr.get_subjects_by_schema_id(a) == ["a-value", "b-value"]


def test_backward_evolution_becomes_version_two(sr: SchemaRegistryClient) -> None:
    v1 = sr.register_schema("accounts-value", avro(V1))
    v2 = sr.register_schema("accounts-value", avro(V2))
    assert v2 != v1
    assert sr.get_versions("accounts-value") == [1, 2]
    assert sr.get_latest_version("accounts-value").version == 2
    assert sr.get_version("accounts-value", 1).schema_id == v1
    found = sr.lookup_schema("accounts-value", avro(V1))
    assert (found.version, found.schema_id) == (1, v1)


@pytest.mark.parametrize("breaking", [NO_DEFAULT, ID_AS_INT], ids=["field-without-default", "type-change"])
def test_incompatible_change_is_409_under_backward_and_accepted_under_none(
    sr: SchemaRegistryClient, http: httpx.Client, breaking: str
) -> None:
    sr.register_schema("accounts-value", avro(V1))
    err = registry_error(sr.register_schema, "accounts-value", avro(breaking))
    assert (err.http_status_code, err.error_code) == (409, 409)
    body = assert_error(http.post("/subjects/accounts-value/versions", json={"schema": breaking}), 409, 409)
    assert body["message"].startswith(
        'Schema being registered is incompatible with an earlier schema for subject "accounts-value", details: ['
    )
    assert "oldSchemaVersion: 1" in body["message"]
    assert sr.get_versions("accounts-value") == [1]

    sr.set_config("accounts-value", level("NONE"))
    sr.register_schema("accounts-value", avro(breaking))
    assert sr.get_versions("accounts-value") == [1, 2]


def test_forward_and_full_follow_their_definitions(sr: SchemaRegistryClient) -> None:
    # FORWARD: the old schema must read new data, so adding a field without a default is fine...
    sr.set_config("fwd", level("FORWARD"))
    sr.register_schema("fwd", avro(V2))
    sr.register_schema("fwd", avro(record(ID, {"name": "email", "type": ["null", "string"]})))
    # ...but dropping a field the old schema has no default for is not.
    assert registry_error(sr.register_schema, "fwd", avro(V1)).http_status_code == 409
    assert sr.get_versions("fwd") == [1, 2]

    # FULL: both directions, so only changes with defaults pass.
    sr.set_config("full", level("FULL"))
    sr.register_schema("full", avro(V1))
    assert registry_error(sr.register_schema, "full", avro(NO_DEFAULT)).http_status_code == 409
    sr.register_schema("full", avro(V2))
    assert sr.get_versions("full") == [1, 2]
    assert registry_error(sr.register_schema, "full", avro(NO_DEFAULT)).http_status_code == 409


Field = dict[str, Any] | None


def _rec(field: Field) -> str:
    return record(ID, field) if field else V1


# Each chain: v3 is compatible with v2 (so the plain level accepts it) but not with v1.
TRANSITIVE_CHAINS: dict[str, tuple[Field, Field, Field]] = {
    "BACKWARD": ({"name": "f", "type": "int"}, None, {"name": "f", "type": "string", "default": ""}),
    "FORWARD": ({"name": "f", "type": "string", "default": ""}, None, {"name": "f", "type": "int"}),
    "FULL": (
        {"name": "f", "type": "string", "default": ""},
        None,
        {"name": "f", "type": "int", "default": 0},
    ),
}


@pytest.mark.parametrize("base", sorted(TRANSITIVE_CHAINS))
def test_transitive_levels_check_every_version(sr: SchemaRegistryClient, base: str) -> None:
    v1, v2, v3 = (_rec(f) for f in TRANSITIVE_CHAINS[base])
    for subject, name in (("plain", base), ("transitive", f"{base}_TRANSITIVE")):
        sr.set_config(subject, level(name))
        sr.register_schema(subject, avro(v1))
        sr.register_schema(subject, avro(v2))
    sr.register_schema("plain", avro(v3))
    assert sr.get_versions("plain") == [1, 2, 3]
    assert registry_error(sr.register_schema, "transitive", avro(v3)).http_status_code == 409
    assert sr.get_versions("transitive") == [1, 2]


def test_compatibility_endpoint(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    sr.register_schema("accounts-value", avro(V1))
    assert sr.test_compatibility("accounts-value", avro(V2)) is True
    assert sr.test_compatibility("accounts-value", avro(NO_DEFAULT), version=1) is False
    assert sr.test_compatibility_all_versions("accounts-value", avro(V2)) is True

    verbose = http.post(
        "/compatibility/subjects/accounts-value/versions/latest?verbose=true", json={"schema": NO_DEFAULT}
    ).json()
    assert verbose["is_compatible"] is False
    assert any("READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in verbose["messages"])
    ok = http.post("/compatibility/subjects/accounts-value/versions/1?verbose=true", json={"schema": V2})
    assert ok.json() == {"is_compatible": True, "messages": []}

    assert registry_error(sr.test_compatibility, "nobody", avro(V1)).error_code == 40401
    assert registry_error(sr.test_compatibility, "accounts-value", avro(V1), version=7).error_code == 40402
    bad = http.post("/compatibility/subjects/accounts-value/versions/abc", json={"schema": V1})
    assert_error(bad, 422, 42202)


def test_serializer_and_deserializer_round_trip(sr: SchemaRegistryClient) -> None:
    ctx = SerializationContext("accounts", MessageField.VALUE)
    value = {"id": "A-1", "email": "a@example.com"}

    auto = AvroSerializer(sr, V2)
    data = auto(value, ctx)
    assert data is not None and data[0] == 0
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert schema_id == sr.get_latest_version("accounts-value").schema_id

    reader = SchemaRegistryClient({"url": sr.config()["url"]})  # a fresh client: no cached schemas
    assert AvroDeserializer(reader)(data, ctx) == value
    reader.close()


def test_serializer_without_auto_register_needs_the_schema_registered(sr: SchemaRegistryClient) -> None:
    ctx = SerializationContext("orders", MessageField.VALUE)
    strict = AvroSerializer(sr, V1, conf={"auto.register.schemas": False})
    assert registry_error(strict, {"id": "O-1"}, ctx).error_code == 40401
    sr.register_schema("orders-value", avro(V1))
    assert AvroDeserializer(sr)(strict({"id": "O-1"}, ctx), ctx) == {"id": "O-1"}


def test_serializer_use_latest_version_writes_with_the_latest(sr: SchemaRegistryClient) -> None:
    ctx = SerializationContext("orders", MessageField.VALUE)
    sr.register_schema("orders-value", avro(V1))
    latest_id = sr.register_schema("orders-value", avro(V2))
    latest = AvroSerializer(sr, V1, conf={"auto.register.schemas": False, "use.latest.version": True})
    data = latest({"id": "O-2", "email": None}, ctx)
    assert data is not None and struct.unpack(">I", data[1:5])[0] == latest_id
    assert AvroDeserializer(sr)(data, ctx) == {"id": "O-2", "email": None}


def test_soft_then_permanent_delete(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    first = sr.register_schema("accounts-value", avro(V1))
    sr.register_schema("accounts-value", avro(V2))
    sr.register_schema("keep-value", avro(V1))

    assert_error(http.delete("/subjects/accounts-value?permanent=true"), 404, 40405)
    assert sr.delete_subject("accounts-value") == [1, 2]
    assert sr.get_subjects() == ["keep-value"]
    assert sr.get_subjects(deleted=True) == ["accounts-value", "keep-value"]
    assert registry_error(sr.get_versions, "accounts-value").error_code == 40401
    assert sr.get_versions("accounts-value", deleted=True) == [1, 2]
    assert_error(http.delete("/subjects/accounts-value"), 404, 40404)
    # A soft-deleted version's schema stays readable by id, so old records still decode.
    assert http.get(f"/schemas/ids/{first}").status_code == 200
    assert http.get("/subjects/accounts-value/versions/1?deleted=true").json()["id"] == first

    assert sr.delete_subject("accounts-value", permanent=True) == [1, 2]
    assert sr.get_subjects(deleted=True) == ["keep-value"]
    assert_error(http.delete("/subjects/accounts-value"), 404, 40401)
    assert_error(http.get("/subjects/accounts-value/versions/latest"), 404, 40401)


def test_version_delete_rules(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    sr.register_schema("accounts-value", avro(V1))
    sr.register_schema("accounts-value", avro(V2))
    assert_error(http.delete("/subjects/accounts-value/versions/2?permanent=true"), 404, 40407)
    assert sr.delete_version("accounts-value", 2) == 2
    assert_error(http.delete("/subjects/accounts-value/versions/2"), 404, 40402)
    assert sr.get_latest_version("accounts-value").version == 1
    assert sr.delete_version("accounts-value", 2, permanent=True) == 2
    assert sr.get_versions("accounts-value", deleted=True) == [1]
    assert_error(http.delete("/subjects/accounts-value/versions/9"), 404, 40402)
    assert_error(http.delete("/subjects/accounts-value/versions/zero"), 422, 42202)


def test_new_version_after_soft_delete_continues_numbering(sr: SchemaRegistryClient) -> None:
    sr.register_schema("accounts-value", avro(V1))
    sr.register_schema("accounts-value", avro(V2))
    sr.delete_subject("accounts-value")
    sr.register_schema("accounts-value", avro(ID_AS_INT))  # nothing live to be compatible with
    assert sr.get_versions("accounts-value") == [3]


def test_config_get_put_delete(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert http.put("/config", json={"compatibility": "FULL"}).json() == {"compatibility": "FULL"}
    assert sr.get_config().compatibility_level == ConfigCompatibilityLevel.FULL

    body = assert_error(http.get("/config/accounts-value"), 404, 40408)
    assert body["message"] == "Subject 'accounts-value' does not have subject-level compatibility configured"
    assert registry_error(sr.get_config, "accounts-value").error_code == 40408
    assert http.get("/config/accounts-value?defaultToGlobal=true").json() == {"compatibilityLevel": "FULL"}

    assert sr.set_config("accounts-value", level("NONE")) == {"compatibility": "NONE"}
    assert sr.get_compatibility("accounts-value") == "NONE"
    assert sr.delete_config("accounts-value").compatibility_level == ConfigCompatibilityLevel.NONE
    assert_error(http.get("/config/accounts-value"), 404, 40408)
    assert_error(http.delete("/config/accounts-value"), 404, 40401)

    assert_error(http.put("/config", json={"compatibility": "SIDEWAYS"}), 422, 42203)
    assert_error(http.put("/config/accounts-value", json={}), 422, 42203)
    assert http.delete("/config").json() == {"compatibilityLevel": "FULL"}
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}


def test_lookup_errors(sr: SchemaRegistryClient) -> None:
    assert registry_error(sr.lookup_schema, "nobody", avro(V1)).error_code == 40401
    sr.register_schema("accounts-value", avro(V1))
    assert registry_error(sr.lookup_schema, "accounts-value", avro(V2)).error_code == 40403


def test_error_bodies_are_json(http: httpx.Client) -> None:
    assert_error(http.get("/no/such/path"), 404, 404)
    assert http.get("/no/such/path").json()["message"] == "HTTP 404 Not Found"
    assert_error(http.get("/schemas/ids/999"), 404, 40403)
    assert_error(http.get("/subjects/nobody/versions"), 404, 40401)
    assert_error(http.get("/subjects/nobody/versions/latest"), 404, 40401)
    assert_error(http.get("/subjects/nobody/versions/x"), 422, 42202)
    assert_error(http.post("/subjects/s/versions", json={"schema": '{"type": "recrod"}'}), 422, 42201)
    assert_error(http.post("/subjects/s/versions", json={"schema": "not json at all"}), 422, 42201)
    assert_error(http.post("/subjects/s/versions", json={"nothing": 1}), 422, 42201)
    body = assert_error(
        http.post("/subjects/s/versions", json={"schema": '{"type": "object"}', "schemaType": "JSON"}),
        422,
        42201,
    )
    assert "AVRO" in body["message"]
    assert_error(http.post("/subjects/s/versions", content=b"{oops"), 400, 400)
    assert_error(http.patch("/subjects"), 405, 405)
    assert http.head("/subjects").status_code == 200
    assert_error(http.post("/subjects/s/versions", content=b"{}", headers={"Content-Type": "text/plain"}), 415, 415)
    assert_error(http.get("/subjects/s/versions/1"), 404, 40401)
    assert http.post("/subjects/s/versions", json={"schema": '"string"'}).json() == {"id": 1}
    assert_error(http.get("/subjects/s/versions/2"), 404, 40402)


def test_subject_names_with_slashes_and_references(sr: SchemaRegistryClient, http: httpx.Client) -> None:
    status = json.dumps({"type": "enum", "name": "Status", "namespace": "dw.test", "symbols": ["ON", "OFF"]})
    sr.register_schema("dw/status", avro(status))
    assert sr.get_subjects() == ["dw/status"]
    main = record(ID, {"name": "status", "type": "dw.test.Status"})
    ref = SchemaReference("dw.test.Status", "dw/status", 1)
    main_id = sr.register_schema("accounts-value", Schema(main, "AVRO", [ref]))
    assert http.get(f"/schemas/ids/{main_id}").json()["references"] == [
        {"name": "dw.test.Status", "subject": "dw/status", "version": 1}
    ]
    assert sr.get_referenced_by("dw/status", 1) == [main_id]
    assert_error(http.delete("/subjects/dw%2Fstatus/versions/1"), 422, 42206)
    ctx = SerializationContext("accounts", MessageField.VALUE)
    ser = AvroSerializer(sr, Schema(main, "AVRO", [ref]), conf={"auto.register.schemas": False})
    fresh = SchemaRegistryClient({"url": sr.config()["url"]})
    assert AvroDeserializer(fresh)(ser({"id": "A", "status": "ON"}, ctx), ctx) == {"id": "A", "status": "ON"}
    fresh.close()
    assert_error(http.post("/subjects/x/versions", json={"schema": main}), 422, 42201)


def test_settings_reject_an_unknown_default_level() -> None:
    assert Settings(default_compatibility="full_transitive").default_compatibility == "FULL_TRANSITIVE"
    with pytest.raises(pydantic.ValidationError):
        Settings(default_compatibility="SIDEWAYS")


def test_data_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(db_path=str(tmp_path / "registry.db"), default_compatibility="FULL")
    first = serve(settings)
    try:
        client = SchemaRegistryClient({"url": first.url})
        schema_id = client.register_schema("accounts-value", avro(V1))
        client.set_config("accounts-value", level("NONE"))
        client.close()
    finally:
        first.stop()
    second = serve(settings)
    try:
        client = SchemaRegistryClient({"url": second.url})
        assert client.get_latest_version("accounts-value").schema_id == schema_id
        assert client.get_compatibility("accounts-value") == "NONE"
        assert client.get_config().compatibility_level == ConfigCompatibilityLevel.FULL
        assert client.register_schema("other-value", avro(V2)) == schema_id + 1
        client.close()
    finally:
        second.stop()
