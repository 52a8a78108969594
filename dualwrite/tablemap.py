"""Table maps: the YAML files a user edits (`maps/*.yaml`), loaded into typed, validated models."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dualwrite.errors import ConfigError

_T = TypeVar("_T")
_DERIVED: dict[tuple[int, str], tuple[Any, Any]] = {}


def derived(m: Any, what: str, build: Callable[[], _T]) -> _T:
    """A value derived from a table map alone (maps are frozen), built once per map instead of per record:
    the consumer asks for a map's field pairs several times for every change. Never mutate what it returns."""
    hit = _DERIVED.get((id(m), what))
    if hit is not None and hit[0] is m:
        value: _T = hit[1]
        return value
    value = build()
    _DERIVED[(id(m), what)] = (m, value)
    return value


class Direction(StrEnum):
    BOTH = "<->"
    TO_DATAVERSE = "->"
    TO_FO = "<-"

    def carries(self, towards: str) -> bool:
        """Whether a field with this direction is written when syncing towards `towards` ('fo'/'dataverse')."""
        if self is Direction.BOTH:
            return True
        return (self is Direction.TO_DATAVERSE) == (towards == "dataverse")


# Spellings a user may copy from Microsoft's templates or type by hand.
_DIRECTION_ALIASES = {
    "<->": "<->",
    "↔": "<->",
    "=": "<->",
    "><": "<->",
    "->": "->",
    "→": "->",
    ">": "->",
    ">>": "->",
    "<-": "<-",
    "←": "<-",
    "<": "<-",
    "<<": "<-",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lookup(_Strict):
    """A Dataverse lookup column: the related row is found by `key` (and the company when `company`)."""

    entity_set: str
    key: str
    company: bool = False
    map: str | None = Field(default=None, description="The map that syncs the related rows (an ordering hint).")


class FieldMap(_Strict):
    fo: str | None = None
    dataverse: str | None = None
    dir: Direction
    values: dict[str, Any] | None = None
    default: Any = None
    lookup: Lookup | None = None

    @field_validator("dir", mode="before")
    @classmethod
    def _direction(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip() in _DIRECTION_ALIASES:
            return _DIRECTION_ALIASES[v.strip()]
        raise ValueError(f"unknown direction {v!r}; use <->, -> or <-")

    @model_validator(mode="after")
    def _consistent(self) -> FieldMap:
        if self.fo is None and self.dataverse is None:
            raise ValueError("a field pair needs 'fo', 'dataverse' or both")
        if self.fo is None and (self.dir is not Direction.TO_DATAVERSE or self.default is None):
            raise ValueError(f"{self.dataverse}: a Dataverse-only field is a constant: dir '->' and a default")
        if self.dataverse is None and (self.dir is not Direction.TO_FO or self.default is None):
            raise ValueError(f"{self.fo}: an F&O-only field is a constant: dir '<-' and a default")
        if self.values is not None:
            inverse = {_hashable(v) for v in self.values.values()}
            if len(inverse) != len(self.values):
                raise ValueError(f"{self.fo}: value map is not one-to-one, so it cannot be reversed")
        return self


class FoSide(_Strict):
    entity_set: str
    event_entity: str
    key: list[str]
    company_field: str | None = Field(
        default="dataAreaId", description="The legal-entity field; null for a global (shared) entity."
    )
    filter: dict[str, Any] = Field(default_factory=dict)
    modified_on: str | None = Field(
        default=None, description="Field holding the row's last change time (for conflicts towards F&O)."
    )
    modified_by: str | None = Field(default=None, description="Field holding the user who last changed the row.")
    topic: str | None = Field(
        default=None, description="Topic name suffix when two maps read the same entity set (split by filter)."
    )


class DataverseSide(_Strict):
    entity_set: str
    primary_key: str
    key: list[str]
    company_lookup: str | None = None
    company_field: str | None = None
    filter: dict[str, Any] = Field(default_factory=dict)
    topic: str | None = None

    @model_validator(mode="after")
    def _company(self) -> DataverseSide:
        if self.company_lookup is not None and self.company_field is not None:
            raise ValueError("set at most one of company_lookup (company-specific table) or company_field")
        return self


class Conflict(_Strict):
    """What wins a true conflict: both sides changed the same field of a record to different values
    since the last state they agreed on (see README, Conflicts).

    `last-writer-wins` takes the later change by the sides' change times (F&O on a tie);
    `source-of-truth` always takes the named side's. Written `conflict: last-writer-wins` or
    `conflict: {source-of-truth: fo}` (the long form `{policy: ..., source_of_truth: ...}` works too).
    """

    policy: Literal["last-writer-wins", "source-of-truth"] = "last-writer-wins"
    source_of_truth: Literal["fo", "dataverse"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"policy": v}
        if isinstance(v, dict) and "window_s" in v:
            raise ValueError(
                "window_s is gone: conflicts are decided by what each side had seen, not by a time window; "
                "remove it"
            )
        if isinstance(v, dict) and "source-of-truth" in v:
            rest = {k: x for k, x in v.items() if k != "source-of-truth"}
            return {"policy": "source-of-truth", "source_of_truth": v["source-of-truth"], **rest}
        return v


class TableMap(_Strict):
    name: str
    description: str = ""
    fo: FoSide
    dataverse: DataverseSide
    conflict: Conflict = Conflict()
    initial_sync_master: Literal["fo", "dataverse"] = "fo"
    fields: list[FieldMap]

    @model_validator(mode="after")
    def _keys_mapped(self) -> TableMap:
        dv_company = self.dataverse.company_lookup or self.dataverse.company_field
        if (self.fo.company_field is None) != (dv_company is None):
            raise ValueError(
                "a global map has fo.company_field: null and no dataverse company_lookup/company_field; "
                "a company-specific map has both"
            )
        if self.conflict.policy == "source-of-truth" and self.conflict.source_of_truth is None:
            raise ValueError("conflict.policy source-of-truth needs conflict.source_of_truth: fo or dataverse")
        if not self.writes_to("dataverse") and not self.writes_to("fo"):
            raise ValueError("the map has no field to write")
        two_way = self.writes_to("dataverse") and self.writes_to("fo")
        pairs = {(f.fo, f.dataverse) for f in self.fields if f.dir is Direction.BOTH or not two_way}
        for fo_key, dv_key in zip(self.fo.key, self.dataverse.key, strict=False):
            if (fo_key, dv_key) not in pairs:
                how = "two-way (<->)" if two_way else "as a field pair"
                raise ValueError(f"key fields {fo_key} and {dv_key} must be mapped {how}")
        for side in ("fo", "dataverse"):
            if self.initial_sync_master == side and not self.writes_to("dataverse" if side == "fo" else "fo"):
                raise ValueError(f"initial_sync_master is {side}, but the map writes nothing from {side}")
        if len(self.fo.key) != len(self.dataverse.key):
            raise ValueError("fo.key and dataverse.key must have the same number of fields")
        return self

    @property
    def company_specific(self) -> bool:
        return self.fo.company_field is not None

    def writes_to(self, side: str) -> bool:
        """Whether any field pair carries values towards `side` (a one-way map writes one side only)."""
        return any(f.dir.carries(side) for f in self.fields if (f.fo if side == "fo" else f.dataverse))

    def fields_towards(self, side: str) -> list[FieldMap]:
        return derived(self, f"towards {side}", lambda: [f for f in self.fields if f.dir.carries(side)])

    def depends_on(self) -> set[str]:
        """Maps whose rows this map's rows refer to (lookups), besides the companies map."""
        return {f.lookup.map for f in self.fields if f.lookup is not None and f.lookup.map is not None}


def _hashable(v: Any) -> Any:
    return v if not isinstance(v, list | dict) else repr(v)


def builtin_maps_dir() -> Path:
    return Path(str(resources.files("maps")))


def load_map(path: Path) -> TableMap:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a table map is a YAML mapping")
    try:
        return TableMap.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def load_maps(directory: Path | None = None, names: list[str] | None = None) -> dict[str, TableMap]:
    """Load every `*.yaml` map in `directory` (the built-in maps by default), keeping `names` if given."""
    directory = directory or builtin_maps_dir()
    if not directory.is_dir():
        raise ConfigError(f"maps_dir: {directory} is not a directory")
    loaded: dict[str, TableMap] = {}
    for path in sorted(directory.glob("*.yaml")):
        m = load_map(path)
        if m.name in loaded:
            raise ConfigError(f"{path}: map name {m.name!r} is used twice")
        loaded[m.name] = m
    if names is not None:
        unknown = sorted(set(names) - set(loaded))
        if unknown:
            raise ConfigError(f"maps: unknown map(s) {', '.join(unknown)}; known: {', '.join(sorted(loaded))}")
        loaded = {n: loaded[n] for n in names}
        for m in loaded.values():
            missing = sorted(d for d in m.depends_on() if d not in loaded)
            if missing:
                raise ConfigError(
                    f"maps: map {m.name} looks rows up through map(s) {', '.join(missing)}, which are not enabled; "
                    "enable them too (or leave maps unset for all)"
                )
    return loaded
