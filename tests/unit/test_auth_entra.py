"""Entra ID tokens through azure-identity: the credential `method` names, its own caching, and refusals that
stay retryable `AuthError`s (never a dead letter), backed off between attempts.

The round trip runs azure-identity's real ClientSecretCredential against a fake Entra on loopback HTTPS (a
self-signed certificate made here; azure-identity refuses plain HTTP authorities, which is why `token_url`
keeps the hand-written client for the local stand-in).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure import identity
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from dualwrite.auth import EntraCredential, TokenEndpoint, TokenProvider, token_source
from dualwrite.config import OAuth
from dualwrite.errors import AuthError, ConfigError, RetryableError

TENANT = "00000000-0000-0000-0000-00000000000a"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class FakeEntra:
    """The two endpoints MSAL uses for client credentials: OpenID metadata and the v2 token endpoint."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = _self_signed(tmp)
        self.token_requests = 0
        self.refuse: tuple[int, dict[str, str]] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                base = f"https://127.0.0.1:{fake.port}/{TENANT}"
                self._json(
                    200,
                    {
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "issuer": f"{base}/v2.0",
                    },
                )

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.token_requests += 1
                if fake.refuse is not None:
                    self._json(*fake.refuse)
                else:
                    self._json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "entra-token"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def credential(self) -> identity.ClientSecretCredential:
        return identity.ClientSecretCredential(
            TENANT,
            "dualwrite-app",
            "the-secret",
            authority=f"https://127.0.0.1:{self.port}",
            disable_instance_discovery=True,
            connection_verify=str(self.cert),
        )


@pytest.fixture()
def entra(tmp_path: Path) -> Iterator[FakeEntra]:
    fake = FakeEntra(tmp_path)
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def entra_cfg(**kw: Any) -> OAuth:
    return OAuth(**{"tenant_id": TENANT, "client_id": "dualwrite-app", "client_secret": "the-secret", **kw})


def test_azure_identity_caches_the_token_and_a_refusal_is_a_retryable_auth_error(entra: FakeEntra) -> None:
    cfg = entra_cfg()
    provider = TokenProvider(cfg, "https://contoso.crm.dynamics.com", EntraCredential(cfg, entra.credential()))
    assert provider.token() == "entra-token"
    assert provider.token() == "entra-token"
    assert entra.token_requests == 1, "azure-identity's cache should answer the second call"

    entra.refuse = (401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."})
    refused = TokenProvider(cfg, "https://contoso.operations.dynamics.com", EntraCredential(cfg, entra.credential()))
    with pytest.raises(AuthError) as caught:
        refused.token()
    assert isinstance(caught.value, RetryableError) and caught.value.retry_after is not None
    assert "AADSTS7000215" in str(caught.value) and "the-secret" not in str(caught.value)
    asked = entra.token_requests
    with pytest.raises(AuthError, match="next attempt in"):
        refused.token()
    assert entra.token_requests == asked, "backed off: the refusing endpoint is not asked again at once"


class Flaky:
    """A credential that answers, then refuses (as Entra does when a secret is rotated or it throttles)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"t{self.calls}", int(dt.datetime.now(dt.UTC).timestamp()) + 3600)


def test_every_call_asks_the_credential_and_a_failing_refresh_keeps_the_valid_token() -> None:
    cfg, flaky = entra_cfg(), Flaky()
    provider = TokenProvider(cfg, "https://contoso.crm.dynamics.com", EntraCredential(cfg, flaky))
    assert provider.token() == "t1" and provider.token() == "t2"  # the caching is the credential's, not ours
    flaky.fail = ClientAuthenticationError("AADSTS50196: the-secret looped")
    assert provider.token() == "t2", "a token valid for an hour is still used while Entra refuses"
    provider.invalidate()
    with pytest.raises(AuthError) as caught:
        provider.token()
    assert "***" in str(caught.value) and "the-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"tenant_id": TENANT, "client_id": "c", "client_secret": "s"}, identity.ClientSecretCredential),
        ({"method": "workload-identity", "tenant_id": TENANT, "client_id": "c"}, identity.WorkloadIdentityCredential),
        ({"method": "managed-identity"}, identity.ManagedIdentityCredential),
        ({"method": "managed-identity", "client_id": "user-assigned"}, identity.ManagedIdentityCredential),
    ],
)
def test_the_method_chooses_the_credential(fields: dict[str, Any], kind: type, tmp_path: Path) -> None:
    if fields.get("method") == "workload-identity":
        (tmp_path / "token").write_text("projected-service-account-token")
        fields = {**fields, "token_file": tmp_path / "token"}
    source = token_source(OAuth(**fields))
    assert isinstance(source, EntraCredential) and isinstance(source._credential, kind)


def test_certificate_credential_reads_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    both = tmp_path / "both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    source = token_source(OAuth(method="certificate", tenant_id=TENANT, client_id="c", certificate_path=both))
    assert isinstance(source, EntraCredential) and isinstance(source._credential, identity.CertificateCredential)
    with pytest.raises(ConfigError, match="certificate"):
        token_source(OAuth(method="certificate", tenant_id=TENANT, client_id="c", certificate_path=tmp_path / "no"))


def test_token_url_keeps_the_plain_client_and_only_with_a_secret() -> None:
    plain = OAuth(token_url="http://127.0.0.1:1/t/oauth2/v2.0/token", client_id="c", client_secret="s")
    assert isinstance(token_source(plain), TokenEndpoint)
    with pytest.raises(ValueError, match="only with method client-secret"):
        OAuth(method="managed-identity", token_url="http://127.0.0.1:1/t/oauth2/v2.0/token")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"client_id": "c", "client_secret": "s"}, "tenant_id"),
        ({"tenant_id": TENANT, "client_secret": "s"}, "client_id"),
        ({"tenant_id": TENANT, "client_id": "c"}, "client_secret"),
        ({"method": "certificate", "tenant_id": TENANT, "client_id": "c"}, "certificate_path"),
    ],
)
def test_each_method_names_the_field_it_lacks(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        OAuth(**fields)


def test_workload_identity_without_tenant_or_token_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="workload-identity"):
        token_source(OAuth(method="workload-identity"))
