"""The Entra ID token stand-in over real HTTP: client-credentials tokens and the checks that read them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from standins.server import BackgroundServer
from standins.token import (
    DEFAULT_SIGNING_KEY,
    TOKEN_LIFETIME_S,
    create_app,
    identity_from_header,
    issue_token,
    object_id,
)

TENANT = "contoso-tenant"
SCOPE = "https://contoso.operations.dynamics.com/.default"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    srv = BackgroundServer(create_app())
    srv.start()
    try:
        with httpx.Client(base_url=srv.url) as client:
            yield client
    finally:
        srv.stop()


def form(**overrides: str | None) -> dict[str, str]:
    data = {
        "grant_type": "client_credentials",
        "client_id": "dualwrite",
        "client_secret": "dualwrite-secret",
        "scope": SCOPE,
    }
    data.update(overrides)  # type: ignore[arg-type]
    return {k: v for k, v in data.items() if v is not None}


def post(http: httpx.Client, **overrides: str | None) -> httpx.Response:
    return http.post(f"/{TENANT}/oauth2/v2.0/token", data=form(**overrides))


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_client_credentials_token_is_accepted(http: httpx.Client) -> None:
    response = post(http)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == TOKEN_LIFETIME_S
    identity = identity_from_header(f"Bearer {body['access_token']}", DEFAULT_SIGNING_KEY)
    assert identity is not None
    assert identity.client_id == "dualwrite"
    assert identity.object_id == object_id("dualwrite")
    assert identity.audience == "https://contoso.operations.dynamics.com"
    got = claims(body["access_token"])
    assert got["tid"] == TENANT and got["iss"] == f"https://sts.windows.net/{TENANT}/"
    assert got["exp"] - got["iat"] == TOKEN_LIFETIME_S


def test_each_client_has_its_own_stable_object_id(http: httpx.Client) -> None:
    demo = post(http, client_id="demo-user", client_secret="demo-secret").json()["access_token"]
    identity = identity_from_header(f"Bearer {demo}", DEFAULT_SIGNING_KEY)
    assert identity is not None and identity.object_id == object_id("demo-user") != object_id("dualwrite")


@pytest.mark.parametrize(
    ("overrides", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "stranger", "client_secret": "x"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": None}, 400, "unsupported_grant_type"),
        ({"scope": None}, 400, "invalid_request"),
        ({"client_id": None}, 400, "invalid_request"),
    ],
    ids=["wrong-secret", "unknown-client", "password-grant", "no-grant", "no-scope", "no-client-id"],
)
def test_bad_requests_are_refused(
    http: httpx.Client, overrides: dict[str, str | None], status: int, error: str
) -> None:
    response = post(http, **overrides)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["error_description"].startswith("AADSTS")
    assert "access_token" not in body


def test_a_json_body_is_refused(http: httpx.Client) -> None:
    response = http.post(f"/{TENANT}/oauth2/v2.0/token", json=form())
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_expired_and_tampered_tokens_are_rejected() -> None:
    now = time.time()
    token = issue_token("dualwrite", "https://x", TENANT, DEFAULT_SIGNING_KEY, now=now)
    header = f"Bearer {token}"
    assert identity_from_header(header, DEFAULT_SIGNING_KEY, now=now + TOKEN_LIFETIME_S - 1) is not None
    assert identity_from_header(header, DEFAULT_SIGNING_KEY, now=now + TOKEN_LIFETIME_S) is None
    assert identity_from_header(header, "some-other-key", now=now) is None

    head, payload, sig = token.split(".")
    forged = dict(claims(token), appid="admin", oid=object_id("admin"))
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert identity_from_header(f"Bearer {head}.{forged_payload}.{sig}", DEFAULT_SIGNING_KEY, now=now) is None
    assert identity_from_header(f"Bearer {head}.{payload}.{sig[:-2]}AA", DEFAULT_SIGNING_KEY, now=now) is None

    for bad in (None, "", token, f"Basic {token}", "Bearer a.b", "Bearer !!.??.**"):
        assert identity_from_header(bad, DEFAULT_SIGNING_KEY, now=now) is None


def test_custom_clients_and_signing_key() -> None:
    app = create_app(clients={"svc": "s3cret"}, signing_key="k2")
    srv = BackgroundServer(app)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url) as client:
            ok = post(client, client_id="svc", client_secret="s3cret").json()["access_token"]
            assert identity_from_header(f"Bearer {ok}", "k2") is not None
            assert identity_from_header(f"Bearer {ok}", DEFAULT_SIGNING_KEY) is None
            assert post(client).status_code == 401  # the default clients are not registered here
    finally:
        srv.stop()
