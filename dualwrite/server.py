"""Serve an ASGI app (a stand-in, the F&O receiver) on a port, in the foreground or on a background thread."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from dualwrite.errors import ConfigError

# Query parameters that carry a credential: the receiver's ?code=, and anything named like a secret or a token.
_CREDENTIAL = re.compile(r"(?i)([?&](?:code|[^=&]*secret[^=&]*|[^=&]*token[^=&]*)=)[^&\s\"]*")


class RedactCredentials(logging.Filter):
    """Masks credentials in the query strings of uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_CREDENTIAL.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _redact_access_log() -> None:
    # access_log=False only holds while "uvicorn.access" has no handler: uvicorn logs whenever one is there
    # (a logging config of the deployment, a test capturing logs), so its lines are masked whatever happens.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in access.filters):
        access.addFilter(RedactCredentials())


@dataclass(frozen=True)
class Tls:
    """HTTPS files (PEM); with `client_ca`, only clients presenting a certificate it signed get in (mutual TLS)."""

    certfile: Path
    keyfile: Path | None = None
    client_ca: Path | None = None


_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()
_RANDOM = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, for a server of the local stack to bind a moment later.

    Chosen outside the kernel's ephemeral range: a port from bind-to-0 is one the kernel also hands to
    outgoing connections, and the running stack makes many, so one of them could take it first. Never
    the same port twice in one process.
    """
    low, high = _ephemeral_range()
    candidates = [(10000, low - 1)] if low - 1 >= 10000 + 1000 else []
    candidates += [(high + 1, 65535)] if high + 1000 <= 65535 else []
    if not candidates:  # the whole range is ephemeral: fall back to what the kernel picks
        with socket.socket() as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _PORTS_LOCK:
        for _ in range(1000):
            first, last = _RANDOM.choice(candidates)
            port = _RANDOM.randint(first, last)
            if port in _HANDED_OUT:
                continue
            with socket.socket(family, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise ConfigError(f"no free port on {host} outside the ephemeral range {low}-{high}")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port fails at start with a clear message instead of inside uvicorn."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then, else every answer waits ~40 ms (Nagle).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def server_config(app: object, tls: Tls | None = None) -> uvicorn.Config:
    """uvicorn's config, loaded now so that unreadable TLS files fail at start with a ConfigError naming them."""
    # No access log: a sender that puts a secret in the query string (?code=) must not see it written down.
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on"}
    if tls is not None:
        options.update(
            ssl_certfile=str(tls.certfile),
            ssl_keyfile=str(tls.keyfile) if tls.keyfile else None,
            ssl_ca_certs=str(tls.client_ca) if tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
        )
    config = uvicorn.Config(app, **options)  # type: ignore[arg-type]
    _redact_access_log()
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(f) for f in (tls.certfile, tls.keyfile, tls.client_ca) if f) if tls else "?"
        raise ConfigError(f"TLS: cannot load the certificate, key or client CA ({files}): {exc}") from None
    return config


class BackgroundServer:
    """A uvicorn server on its own thread; used by tests and by processes that serve beside other work."""

    def __init__(self, app: object, host: str = "127.0.0.1", port: int = 0, tls: Tls | None = None) -> None:
        config = server_config(app, tls)
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.scheme = "https" if tls else "http"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name=f"http-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve_forever(app: object, host: str, port: int, tls: Tls | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn installs those handlers)."""
    config = server_config(app, tls)
    sock = bind_socket(host, port)
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
