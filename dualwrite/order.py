"""The order maps run in: a map after every map whose rows it refers to; cycles are reported."""

from __future__ import annotations

from dualwrite.errors import ConfigError
from dualwrite.tablemap import TableMap

COMPANIES_MAP = "companies"


def _dependencies(maps: dict[str, TableMap]) -> dict[str, set[str]]:
    deps: dict[str, set[str]] = {}
    for name, m in maps.items():
        needs = {d for d in m.depends_on() if d in maps}
        if name != COMPANIES_MAP and COMPANIES_MAP in maps and m.dataverse.company_lookup is not None:
            needs.add(COMPANIES_MAP)
        deps[name] = needs - {name}
    return deps


def waits_on(maps: dict[str, TableMap], name: str, paused: set[str]) -> list[str]:
    """The paused maps that `name` refers to, directly or through other maps."""
    deps = _dependencies(maps)
    seen: set[str] = set()
    todo = list(deps.get(name, ()))
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(deps.get(d, ()))
    return sorted(seen & paused)


def dependency_order(maps: dict[str, TableMap]) -> list[str]:
    deps = _dependencies(maps)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"maps refer to each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for d in sorted(deps[name]):
            visit(d, path + [name])
        state[name] = "done"
        order.append(name)

    for name in sorted(maps):
        visit(name, [])
    return order
