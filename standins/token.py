"""Stand-in of the Microsoft identity platform's OAuth2 client-credentials token endpoint.

`POST /{tenant}/oauth2/v2.0/token` with a form body (grant_type=client_credentials, client_id,
client_secret, scope) answers a signed JWT (HS256) as Entra ID does in shape: `token_type`,
`expires_in`, `ext_expires_in`, `access_token`. The F&O and Dataverse stand-ins read the caller's
identity (`oid`) from that token with `identity_from_header`.

Stand-in only, for tests of what a client does when the identity platform says no: `PUT
/_standin/lifetime` with `{"expires_in": s}` sets the lifetime of the tokens issued from then on;
`POST /_standin/refuse` with `{"status": 400, "error": ..., "error_description": ..., "retry_after": s}`
answers every token request so (Entra's error body, Retry-After when given) until `DELETE
/_standin/refuse`; `GET /_standin/stats` counts tokens issued and requests refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEFAULT_SIGNING_KEY = "dualwrite-standin-signing-key"
DEFAULT_CLIENTS = {"dualwrite": "dualwrite-secret", "dualwrite-2": "dualwrite-2-secret", "demo-user": "demo-secret"}
TOKEN_LIFETIME_S = 3599
_OID_NAMESPACE = uuid.UUID("6f1d3c64-2a4e-4a8e-9d0b-5b2f0d8c7e11")


def object_id(client_id: str) -> str:
    """The stable object id (user id in F&O and Dataverse stand-ins) of a client application."""
    return str(uuid.uuid5(_OID_NAMESPACE, client_id))


@dataclass(frozen=True)
class Identity:
    client_id: str
    object_id: str
    audience: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(
    client_id: str,
    audience: str,
    tenant: str,
    signing_key: str,
    now: float | None = None,
    lifetime_s: int = TOKEN_LIFETIME_S,
) -> str:
    now = time.time() if now is None else now
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + lifetime_s,
        "appid": client_id,
        "oid": object_id(client_id),
        "tid": tenant,
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(signing_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def identity_from_header(authorization: str | None, signing_key: str, now: float | None = None) -> Identity | None:
    """The identity in a `Bearer` header, or None when absent, malformed, badly signed or expired."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[len("Bearer ") :].strip()
    parts = token.split(".")
    if len(parts) != 3:
        return None
    expected = hmac.new(signing_key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, json.JSONDecodeError):
        return None
    if (time.time() if now is None else now) >= claims.get("exp", 0):
        return None
    return Identity(client_id=claims.get("appid", ""), object_id=claims.get("oid", ""), audience=claims.get("aud", ""))


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def create_app(
    clients: dict[str, str] | None = None, signing_key: str = DEFAULT_SIGNING_KEY, lifetime_s: int = TOKEN_LIFETIME_S
) -> Starlette:
    registered = dict(DEFAULT_CLIENTS if clients is None else clients)
    state: dict[str, Any] = {"lifetime_s": lifetime_s, "refuse": None, "issued": 0, "refused": 0}

    async def token(request: Request) -> JSONResponse:
        tenant = request.path_params["tenant"]
        refuse = state["refuse"]
        if refuse is not None:
            state["refused"] += 1
            answer = _error(refuse["status"], refuse["error"], refuse["error_description"])
            if refuse.get("retry_after") is not None:
                answer.headers["Retry-After"] = str(refuse["retry_after"])
            return answer
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return _error(400, "invalid_request", "AADSTS900144: The request body must be form-urlencoded.")
        form = await request.form()
        grant = form.get("grant_type")
        if grant != "client_credentials":
            return _error(400, "unsupported_grant_type", f"AADSTS70003: grant_type {grant!r} is not supported.")
        client_id, secret, scope = form.get("client_id"), form.get("client_secret"), form.get("scope")
        if not client_id or not isinstance(client_id, str):
            return _error(400, "invalid_request", "AADSTS900144: The request body must contain 'client_id'.")
        if not scope or not isinstance(scope, str):
            return _error(400, "invalid_request", "AADSTS900144: The request body must contain 'scope'.")
        if registered.get(client_id) != secret:
            return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        audience = scope.split()[0].removesuffix("/.default")
        lifetime = state["lifetime_s"]
        access = issue_token(client_id, audience, tenant, signing_key, lifetime_s=lifetime)
        state["issued"] += 1
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access}
        )

    async def refuse(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            state["refuse"] = None
            return JSONResponse({"refusing": False})
        body = await request.json()
        state["refuse"] = {
            "status": int(body.get("status", 400)),
            "error": str(body.get("error", "invalid_client")),
            "error_description": str(body.get("error_description", "AADSTS7000215: Invalid client secret provided.")),
            "retry_after": body.get("retry_after"),
        }
        return JSONResponse({"refusing": True, **state["refuse"]})

    async def lifetime(request: Request) -> JSONResponse:
        state["lifetime_s"] = int((await request.json())["expires_in"])
        return JSONResponse({"expires_in": state["lifetime_s"]})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"issued": state["issued"], "refused": state["refused"]})

    return Starlette(
        routes=[
            Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
            Route("/_standin/refuse", refuse, methods=["POST", "DELETE"]),
            Route("/_standin/lifetime", lifetime, methods=["PUT"]),
            Route("/_standin/stats", stats, methods=["GET"]),
        ]
    )
