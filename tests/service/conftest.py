"""Service tests: a real tansu broker and the stand-ins on free loopback ports, stopped even on failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dualwrite.tablemap import builtin_maps_dir
from standins.harness import LocalStack


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
