"""Tokens for F&O and Dataverse, added to each request as `Authorization: Bearer ...`.

Microsoft Entra ID (`tenant_id`): the azure-identity credential that `method` names (client secret, client
certificate, workload identity on AKS, managed identity); it caches the token and refreshes it before expiry.
A `token_url` (the local token stand-in, or any OAuth2 server) gets the client-credentials grant spoken
directly and the token cached here: azure-identity only talks HTTPS to an Entra-shaped authority.

A token that cannot be had (4xx: wrong or expired secret; 429: throttled; 5xx; unreachable; no managed
identity yet) is an `AuthError`, retryable: the caller waits and tries again, and no record is dead-lettered
for it. The provider itself backs off between attempts (or waits as long as Retry-After says), so a refusing
endpoint is not asked again by every request, and keeps using the current token while it is valid.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from azure import identity
from azure.core.exceptions import AzureError, ClientAuthenticationError

from dualwrite.config import OAuth
from dualwrite.errors import AuthError, ConfigError

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
EARLY_REFRESH_S = 60.0  # refresh this long before expiry (half the lifetime for short-lived tokens)


@dataclass(frozen=True)
class Token:
    value: str
    lifetime_s: float  # seconds from now until it expires


class TokenSource(Protocol):
    """Where tokens come from; `caches` says whether it keeps and refreshes them itself."""

    caches: bool

    def fetch(self, scope: str) -> Token:
        """A token for `scope`, or AuthError saying why not."""
        ...


class TokenProvider(httpx.Auth):
    """An httpx auth flow that adds `Authorization: Bearer ...`, refreshing the token when needed."""

    def __init__(self, cfg: OAuth, resource_url: str, source: TokenSource | None = None) -> None:
        self._scope = cfg.scope or f"{resource_url.rstrip('/')}/.default"
        self._source = source or token_source(cfg)
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: AuthError | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid token; AuthError (with `retry_after`) when none can be had now."""
        with self._lock:
            now = time.monotonic()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                self._refresh(now)
            except AuthError:
                if self._token is not None and now < self._expires_at - 5:
                    return self._token  # still good for a while; a later call tries the refresh again
                raise
            assert self._token is not None
            return self._token

    def _refresh(self, now: float) -> None:
        if self._last_error is not None and now < self._retry_at:
            left = self._retry_at - now
            raise AuthError(f"{self._last_error} (next attempt in {left:.1f} s)", left, self._last_error.status)
        try:
            token = self._source.fetch(self._scope)
        except AuthError as exc:
            self._failures += 1
            backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.0)
            wait = exc.retry_after if exc.retry_after is not None else backoff
            self._retry_at = now + wait
            self._last_error = exc
            raise AuthError(str(exc), wait, exc.status) from None
        lifetime = token.lifetime_s
        self._token = token.value
        self._expires_at = now + lifetime
        # A caching source (azure-identity) is asked every time: it answers from its cache and refreshes itself.
        self._refresh_at = now if self._source.caches else now + lifetime - min(EARLY_REFRESH_S, lifetime / 2)
        self._failures, self._last_error = 0, None

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._refresh_at = 0.0

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            self.invalidate()
            request.headers["Authorization"] = f"Bearer {self.token()}"
            yield request


def token_source(cfg: OAuth) -> TokenSource:
    """The configured source: the plain endpoint for `token_url`, else the azure-identity credential of `method`."""
    if cfg.token_url is not None:
        return TokenEndpoint(cfg)
    return EntraCredential(cfg)


class TokenEndpoint:
    """The OAuth2 client-credentials grant against `token_url`, written out (the stand-in speaks plain HTTP)."""

    caches = False

    def __init__(self, cfg: OAuth) -> None:
        self._cfg = cfg

    def fetch(self, scope: str) -> Token:
        url, client = str(self._cfg.token_url), self._cfg.client_id
        form = {
            "grant_type": "client_credentials",
            "client_id": client or "",
            "client_secret": self._cfg.client_secret or "",
            "scope": scope,
        }
        try:
            resp = httpx.post(url, data=form, timeout=15.0)
        except httpx.HTTPError as exc:
            raise AuthError(f"auth: token endpoint {url} unreachable for client {client!r}: {exc}") from None
        body = _json(resp)
        token, lifetime = body.get("access_token"), _seconds(body.get("expires_in", 3599))
        if resp.status_code == 200 and isinstance(token, str) and token and lifetime is not None:
            return Token(token, lifetime)
        error = " ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
        detail = _redact(error or resp.text[:200] or "no token in the answer", self._cfg)
        raise AuthError(
            f"auth: token request for client {client!r} refused by {url} ({resp.status_code}): {detail}",
            _seconds(resp.headers.get("retry-after")),
            resp.status_code,
        )


class EntraCredential:
    """An azure-identity credential for Microsoft Entra ID; it keeps the token and refreshes it before expiry."""

    caches = True

    def __init__(self, cfg: OAuth, credential: Any = None) -> None:
        self._cfg = cfg
        self._credential = credential or _credential(cfg)

    def fetch(self, scope: str) -> Token:
        who = f"{self._cfg.method} client {self._cfg.client_id or '(from the environment)'!r}"
        try:
            got = self._credential.get_token(scope)
        except ClientAuthenticationError as exc:  # refused, or no identity available (CredentialUnavailableError)
            status, retry_after = _response_facts(exc)
            detail = _redact(_first_line(exc), self._cfg)
            raise AuthError(
                f"auth: Entra ID gave no token to {who} for {scope}: {detail}", retry_after, status
            ) from None
        except AzureError as exc:  # unreachable, timeouts, 5xx after azure-core's own retries
            status, retry_after = _response_facts(exc)
            detail = _redact(_first_line(exc), self._cfg)
            raise AuthError(f"auth: Entra ID unreachable for {who}: {detail}", retry_after, status) from None
        return Token(got.token, max(0.0, got.expires_on - time.time()))


def _credential(cfg: OAuth) -> Any:
    """The azure-identity credential of `cfg.method`; ConfigError naming the section when it cannot be made."""
    extra: dict[str, Any] = {"authority": cfg.authority} if cfg.authority else {}
    try:
        if cfg.method == "client-secret":
            assert cfg.tenant_id and cfg.client_id and cfg.client_secret  # checked by the config
            return identity.ClientSecretCredential(cfg.tenant_id, cfg.client_id, cfg.client_secret, **extra)
        if cfg.method == "certificate":
            assert cfg.tenant_id and cfg.client_id and cfg.certificate_path
            return identity.CertificateCredential(
                cfg.tenant_id,
                cfg.client_id,
                certificate_path=str(cfg.certificate_path),
                password=cfg.certificate_password,
                **extra,
            )
        if cfg.method == "workload-identity":
            # Unset fields come from what the AKS workload identity webhook injects (AZURE_TENANT_ID,
            # AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST).
            return identity.WorkloadIdentityCredential(
                tenant_id=cfg.tenant_id,
                client_id=cfg.client_id,
                token_file_path=str(cfg.token_file) if cfg.token_file else None,
                **extra,
            )
        return identity.ManagedIdentityCredential(client_id=cfg.client_id)  # None: the system-assigned identity
    except (ValueError, OSError) as exc:
        raise ConfigError(f"auth ({cfg.method}): {exc}") from None


def _response_facts(exc: Any) -> tuple[int | None, float | None]:
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) or {}
    return (status if isinstance(status, int) else None), _seconds(headers.get("retry-after"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _redact(text: str, cfg: OAuth) -> str:
    # An answer that echoes the form (a misconfigured proxy) must not put a secret in a log or a DLQ header.
    for secret in (cfg.client_secret, cfg.certificate_password):
        if secret:
            text = text.replace(secret, "***")
    return text


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None
