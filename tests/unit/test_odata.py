"""OData protocol pieces without HTTP: keys, $filter to SQL, query options and $batch parse/render."""

from __future__ import annotations

import json
import sqlite3

import pytest

from standins.odata import (
    BatchPart,
    ChangeSet,
    Column,
    Lit,
    PartResponse,
    QueryError,
    etag,
    etag_matches,
    filter_to_sql,
    format_key,
    orderby_to_sql,
    parse_batch,
    parse_batch_response,
    parse_key,
    parse_prefer,
    parse_select,
    render_batch,
    split_resource_path,
)

GUID = "00000000-0000-0000-0000-000000000001"
COLUMNS = {
    "Name": Column("Name", '"Name"', "string"),
    "Limit": Column("Limit", '"Limit"', "decimal"),
    "Count": Column("Count", '"Count"', "int"),
    "Active": Column("Active", '"Active"', "bool"),
    "Blocked": Column("Blocked", '"Blocked"', "enum", ("No", "Invoice", "All")),
    "_company_value": Column("_company_value", '"Company"', "lookup"),
    "Created": Column("Created", '"Created"', "datetime"),
}


def resolve(name: str) -> Column:
    if name not in COLUMNS:
        raise QueryError(f"Could not find a property named '{name}'.")
    return COLUMNS[name]


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        'CREATE TABLE t (id INTEGER, "Name" TEXT COLLATE NOCASE, "Limit" REAL, "Count" INTEGER,'
        ' "Active" INTEGER, "Blocked" TEXT, "Company" TEXT, "Created" TEXT)'
    )
    rows = [
        (1, "Forest Wholesales", 1000.0, 5, 1, "No", GUID, "2026-01-01T00:00:00Z"),
        (2, "Sparrow Retail", 5000.0, 50, 0, "All", GUID, "2026-06-01T00:00:00Z"),
        (3, "O'Brien & Co_1", None, None, 1, "Invoice", None, None),
        (4, "Litware 100%", 20000.0, 7, 0, "No", "00000000-0000-0000-0000-000000000002", "2026-03-01T12:00:00Z"),
    ]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return conn


def ids(db: sqlite3.Connection, text: str, wildcards: bool = False) -> list[int]:
    where, params = filter_to_sql(text, resolve, wildcards=wildcards)
    return [r[0] for r in db.execute(f"SELECT id FROM t WHERE {where} ORDER BY id", params)]


# -- keys -----------------------------------------------------------------------------------------------
def test_fo_compound_key_with_quotes_escaped() -> None:
    name, key, rest = split_resource_path("CustomersV3(dataAreaId='usmf',CustomerAccount='O''Brien (1)')")
    assert (name, rest) == ("CustomersV3", "")
    assert parse_key(key or "") == {
        "dataAreaId": Lit("string", "usmf"),
        "CustomerAccount": Lit("string", "O'Brien (1)"),
    }


def test_guid_key_alternate_key_and_single_string_key() -> None:
    assert parse_key(GUID) == {None: Lit("guid", GUID)}
    assert parse_key(f"accountnumber='US-001',msdyn_company={GUID}") == {
        "accountnumber": Lit("string", "US-001"),
        "msdyn_company": Lit("guid", GUID),
    }
    assert parse_key("cdm_companycode='usmf'") == {"cdm_companycode": Lit("string", "usmf")}
    assert parse_key("42") == {None: Lit("int", 42)}


@pytest.mark.parametrize("text", ["", "a=", "a='x',", "a='x' b='y'", "a='x',a='y'", "null"])
def test_bad_keys_are_query_errors(text: str) -> None:
    with pytest.raises(QueryError):
        parse_key(text)


def test_split_resource_path_without_key_and_with_tail() -> None:
    assert split_resource_path("/accounts") == ("accounts", None, "")
    assert split_resource_path(f"accounts({GUID})/name") == ("accounts", GUID, "name")
    with pytest.raises(QueryError):
        split_resource_path("accounts('x'")


def test_format_key_round_trips() -> None:
    text = format_key([("dataAreaId", "usmf", "string"), ("CustomerAccount", "O'B", "string")])
    assert text == "(dataAreaId='usmf',CustomerAccount='O''B')"
    assert parse_key(text[1:-1])["CustomerAccount"] == Lit("string", "O'B")
    assert format_key([("accountid", GUID, "guid")]) == f"({GUID})"


# -- $filter ---------------------------------------------------------------------------------------------
def test_filter_sql_is_parameterised() -> None:
    where, params = filter_to_sql("Name eq 'x'' or 1=1 --'", resolve)
    assert where == '"Name" = ?'
    assert params == ["x' or 1=1 --"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Name eq 'forest wholesales'", [1]),
        ("Name ne 'Forest Wholesales'", [2, 3, 4]),
        ("Limit gt 1000", [2, 4]),
        ("Limit ge 1000 and Limit lt 20000", [1, 2]),
        ("Count le 7", [1, 4]),
        ("Limit eq null", [3]),
        ("Limit ne null", [1, 2, 4]),
        ("Active eq true", [1, 3]),
        ("Active", [1, 3]),
        ("not (Active eq true)", [2, 4]),
        ("Blocked eq 'All' or Blocked eq Microsoft.Dynamics.DataEntities.CustVendorBlocked'Invoice'", [2, 3]),
        (f"_company_value eq {GUID}", [1, 2]),
        ("Name in ('Sparrow Retail', 'Litware 100%')", [2, 4]),
        ("Count in (5, null)", [1, 3]),
        ("contains(Name, 'ware')", [4]),
        ("contains(Name, '100%')", [4]),
        ("contains(Name, '_1')", [3]),
        ("startswith(Name,'Sp') or endswith(Name,'Co_1')", [2, 3]),
        ("Created ge 2026-03-01T00:00:00Z", [2, 4]),
        ("Created lt 2026-03-01", [1]),
        ("(Limit gt 100 or Count eq 50) and not Active eq true", [2, 4]),
        ("Limit gt 999.5", [1, 2, 4]),
    ],
)
def test_filter_semantics(db: sqlite3.Connection, text: str, expected: list[int]) -> None:
    assert ids(db, text) == expected


def test_fo_wildcards_only_when_enabled(db: sqlite3.Connection) -> None:
    assert ids(db, "Name eq '*ware*'", wildcards=True) == [4]
    assert ids(db, "Name eq 'Sp*'", wildcards=True) == [2]
    assert ids(db, "Name ne '*e*'", wildcards=True) == []
    assert ids(db, "Name ne '*o*'", wildcards=True) == [4]
    assert ids(db, "Name eq '*ware*'") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Nope eq 1", "Could not find a property named 'Nope'"),
        ("Name eq 5", "incompatible types"),
        (f"_company_value eq '{GUID}'", "incompatible types"),
        ("Blocked eq 'Maybe'", "not a valid value"),
        ("Name eq", "unexpected end"),
        ("Name eq 'x' and", "unexpected end"),
        ("(Name eq 'x'", "expected ')'"),
        ("Name foo 'x'", "expected a comparison operator"),
        ("contains(Limit, 'x')", "needs a string property"),
        ("Name eq 'x' Name", "Syntax error"),
        ("Name eq #", "Syntax error"),
        ("company/code eq 'x'", "Navigation paths"),
        ("", "empty"),
    ],
)
def test_bad_filters_explain_themselves(text: str, message: str) -> None:
    with pytest.raises(QueryError) as err:
        filter_to_sql(text, resolve)
    assert err.value.status == 400
    assert message in err.value.message


def test_orderby_select_prefer_and_etags() -> None:
    assert orderby_to_sql("Name desc, Limit", resolve) == '"Name" DESC, "Limit" ASC'
    with pytest.raises(QueryError):
        orderby_to_sql("Name sideways", resolve)
    assert parse_select("name, accountnumber") == ["name", "accountnumber"]
    with pytest.raises(QueryError):
        parse_select("name,,x")
    prefer = parse_prefer({"prefer": 'odata.include-annotations="*",odata.maxpagesize=10, odata.track-changes'})
    assert prefer == {"odata.include-annotations": "*", "odata.maxpagesize": "10", "odata.track-changes": ""}
    assert etag(7) == 'W/"7"'
    assert etag_matches('W/"7"', 7) and etag_matches("*", 7) and not etag_matches('W/"6"', 7)


# -- $batch ------------------------------------------------------------------------------------------------
BATCH = (
    "--batch_abc\r\n"
    "Content-Type: multipart/mixed; boundary=changeset_xyz\r\n"
    "\r\n"
    "--changeset_xyz\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n"
    "\r\n"
    "POST https://org.example.com/api/data/v9.2/accounts HTTP/1.1\r\n"
    "Content-Type: application/json\r\n"
    "\r\n"
    '{"name": "A"}\r\n'
    "--changeset_xyz\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 2\r\n"
    "\r\n"
    "PATCH accounts(accountnumber='X') HTTP/1.1\r\n"
    "Content-Type: application/json\r\n"
    "If-Match: *\r\n"
    "\r\n"
    '{"name": "B"}\r\n'
    "--changeset_xyz--\r\n"
    "--batch_abc\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "GET /api/data/v9.2/accounts?$select=name HTTP/1.1\r\n"
    "Accept: application/json\r\n"
    "\r\n"
    "\r\n"
    "--batch_abc--\r\n"
)


def test_parse_batch_with_change_set_and_individual_get() -> None:
    items = parse_batch(BATCH.encode(), "multipart/mixed; boundary=batch_abc")
    assert len(items) == 2
    changeset, get = items
    assert isinstance(changeset, ChangeSet) and isinstance(get, BatchPart)
    post, patch = changeset.parts
    assert (post.method, post.url, post.content_id) == ("POST", "https://org.example.com/api/data/v9.2/accounts", "1")
    assert json.loads(post.body) == {"name": "A"}
    assert patch.headers["if-match"] == "*" and patch.url == "accounts(accountnumber='X')"
    assert (get.method, get.url, get.body) == ("GET", "/api/data/v9.2/accounts?$select=name", b"")


def test_parse_batch_accepts_bare_newlines_and_quoted_boundary() -> None:
    body = BATCH.replace("\r\n", "\n").encode()
    items = parse_batch(body, 'multipart/mixed; boundary="batch_abc"')
    assert isinstance(items[0], ChangeSet) and json.loads(items[0].parts[1].body) == {"name": "B"}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (BATCH, "application/json", "multipart/mixed"),
        (BATCH.replace("--batch_abc--", "--batch_abc-x"), "multipart/mixed; boundary=batch_abc", "closing boundary"),
        (BATCH.replace("application/http", "text/plain"), "multipart/mixed; boundary=batch_abc", "application/http"),
        (BATCH.replace("POST https", "GET https"), "multipart/mixed; boundary=batch_abc", "may not hold a GET"),
    ],
)
def test_bad_batches_are_query_errors(body: str, content_type: str, message: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_batch(body.encode(), content_type)
    assert message in err.value.message


def test_batch_over_1000_requests_is_refused() -> None:
    part = (
        "--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "GET accounts HTTP/1.1\r\n\r\n\r\n"
    )
    with pytest.raises(QueryError) as err:
        parse_batch((part * 1001 + "--b--\r\n").encode(), "multipart/mixed; boundary=b")
    assert "1000" in err.value.message
    assert len(parse_batch((part * 1000 + "--b--\r\n").encode(), "multipart/mixed; boundary=b")) == 1000


def test_render_batch_round_trips() -> None:
    created = PartResponse(204, {"OData-EntityId": f"https://x/accounts({GUID})"}, b"", "1")
    error = PartResponse(400, {"Content-Type": "application/json"}, b'{"error": {"code": "0x1", "message": "m"}}')
    content_type, body = render_batch([[created], error])
    assert content_type.startswith("multipart/mixed; boundary=batchresponse_")
    text = body.decode()
    assert "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1" in text
    assert "HTTP/1.1 204 No Content\r\n" in text and "HTTP/1.1 400 Bad Request\r\n" in text
    parsed = parse_batch_response(body, content_type)
    assert isinstance(parsed[0], list) and parsed[0][0].status == 204
    assert parsed[0][0].headers["odata-entityid"] == f"https://x/accounts({GUID})"
    assert isinstance(parsed[1], PartResponse) and json.loads(parsed[1].body)["error"]["code"] == "0x1"
