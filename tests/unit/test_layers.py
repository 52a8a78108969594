"""Use runs one way, downwards: wiring -> producers / consumers -> core (dualwrite, schemas, maps).

Producers and consumers never import each other, the core imports neither, and the stand-ins import
nothing of dualwrite but the entity catalogue and the tiny server helper; only the local stack
(`wiring/stack.py`) starts stand-ins. Checked by walking every import statement (also the ones
inside functions) with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
CORE = {"dualwrite", "schemas", "maps"}
FIRST_PARTY = CORE | {"producers", "consumers", "wiring", "standins"}
ALLOWED: dict[str, set[str]] = {
    "dualwrite": CORE,
    "schemas": CORE,
    "maps": CORE,
    "producers": CORE | {"producers"},
    "consumers": CORE | {"consumers"},
    "wiring": FIRST_PARTY,
    "standins": {"standins"},
}
# Single modules a package may use beyond its layer.
EXTRA: dict[str, set[str]] = {"standins": {"schemas", "schemas.catalogue", "dualwrite.server"}}
STANDIN_STARTERS = {"wiring/stack.py"}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from dualwrite import kafka` names the module dualwrite.kafka
            found.extend((node.lineno, f"{module}.{a.name}") for a in node.names if a.name != "*")
    return found


def violations(root: Path) -> list[str]:
    """Every import that goes upwards or sideways, as 'file:line: what'."""
    out = []
    for top, allowed in ALLOWED.items():
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            package = ".".join(path.relative_to(root).with_suffix("").parts[:-1]) or top
            for line, module in imported_modules(path, package):
                first = module.split(".")[0]
                if first not in FIRST_PARTY or first in allowed:
                    continue
                if first == "standins" and rel in STANDIN_STARTERS:
                    continue
                if any(module == m or module.startswith(m + ".") for m in EXTRA.get(top, set())):
                    continue
                if module.rsplit(".", 1)[0] in EXTRA.get(top, set()):
                    continue  # `from schemas.catalogue import Entity` also names schemas.catalogue.Entity
                out.append(f"{rel}:{line}: {top} imports {module}")
            if top == "wiring" and rel not in STANDIN_STARTERS:
                out.extend(
                    f"{rel}:{line}: only the local stack starts stand-ins, not {module}"
                    for line, module in imported_modules(path, package)
                    if module.split(".")[0] == "standins"
                )
    return sorted(set(out))


def test_the_tree_has_no_upward_or_sideways_import() -> None:
    assert violations(ROOT) == []


def test_the_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    for top in ALLOWED:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / "dualwrite" / "config.py").write_text("def f():\n    from consumers.loop import ConsumerLoop\n")
    (tmp_path / "consumers" / "loop.py").write_text("from producers import fo\n")
    (tmp_path / "standins" / "fo.py").write_text("from dualwrite.config import Config\nfrom dualwrite import server\n")
    (tmp_path / "wiring" / "cli.py").write_text("from standins import fo\n")
    (tmp_path / "producers" / "fo.py").write_text("from . import publish\nfrom ..consumers import target\n")
    found = violations(tmp_path)
    assert any(v.startswith("dualwrite/config.py:2: dualwrite imports consumers.loop") for v in found), found
    assert any(v.startswith("consumers/loop.py:1: consumers imports producers") for v in found), found
    assert any("standins imports dualwrite.config" in v for v in found), found
    assert not any("dualwrite.server" in v for v in found), found  # the server helper is allowed
    assert any("wiring/cli.py:1: only the local stack starts stand-ins" in v for v in found), found
    assert any("producers/fo.py:2: producers imports consumers" in v for v in found), found
