"""`dualwrite entities import`: fill the entity catalogue from a service's own metadata.

F&O: the CSDL of `<env>/data/$metadata`. Dataverse: `EntityDefinitions` (with Attributes, Keys and
the option values of choice columns), which carries alternate keys and option values that its
CSDL does not; a saved `$metadata` XML or EntityDefinitions JSON file works too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from dualwrite import odata
from dualwrite.auth import TokenProvider
from dualwrite.config import Config
from dualwrite.errors import ConfigError, DualWriteError
from schemas.catalogue import Entity, builtin_entities_dir, entity_sets_by_logical_name, load_catalogue
from schemas.metadata import fold_option_sets, import_into, load_metadata_text, parse_entity_definitions

API = "/api/data/v9.2"
OPTION_CASTS = ("PicklistAttributeMetadata", "StateAttributeMetadata")


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _client(cfg: Config | None, side: str, url: str) -> httpx.Client:
    if cfg is None:
        raise ConfigError("--from is a URL: give --config with the service's auth (or save the metadata to a file)")
    auth = cfg.fo.auth if side == "fo" else cfg.dataverse.auth
    return httpx.Client(auth=TokenProvider(auth, _origin(url)), timeout=60.0, headers={"Accept": "application/json"})


def _get(client: httpx.Client, url: str, what: str, **params: str) -> httpx.Response:
    resp = odata.request(client, "GET", url, what, params=params or None)
    odata.raise_for(resp.status_code, resp.text, resp.headers, what)
    return resp


def _json(resp: httpx.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise DualWriteError(f"{what}: the answer is not JSON ({resp.text[:80]!r})") from None


def fetch_fo(cfg: Config | None, url: str) -> str:
    """The CSDL of an F&O environment (`url` is the environment or its `$metadata`)."""
    if not url.rstrip("/").endswith("$metadata"):
        url = f"{_origin(url)}/data/$metadata"
    with _client(cfg, "fo", url) as client:
        return _get(client, url, "F&O $metadata").text


def fetch_dataverse(
    cfg: Config | None, url: str, sets: list[str], known: dict[str, Entity]
) -> list[dict[str, Any]]:
    """EntityDefinitions of the tables named by entity set (default: every table of the catalogue)."""
    base = f"{_origin(url)}{API}"
    with _client(cfg, "dataverse", url) as client:
        names = []
        for entity_set in sets or sorted(known):
            entity = known.get(entity_set)
            if entity is not None and entity.logical_name:
                names.append(entity.logical_name)
                continue
            found = _json(
                _get(
                    client,
                    f"{base}/EntityDefinitions",
                    f"Dataverse EntityDefinitions of {entity_set}",
                    **{"$filter": f"EntitySetName eq '{entity_set}'", "$select": "LogicalName"},
                ),
                "EntityDefinitions",
            ).get("value", [])
            if not found:
                raise ConfigError(f"Dataverse has no table with entity set {entity_set!r}")
            names.append(found[0]["LogicalName"])
        out = []
        for name in names:
            table = f"{base}/EntityDefinitions(LogicalName='{name}')"
            what = f"Dataverse EntityDefinitions({name})"
            definition = _json(_get(client, table, what, **{"$expand": "Attributes,Keys"}), what)
            for cast in OPTION_CASTS:
                options = _get(
                    client,
                    f"{table}/Attributes/Microsoft.Dynamics.CRM.{cast}",
                    f"{what} option values",
                    **{"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
                )
                definition = fold_option_sets(definition, _json(options, what))
            out.append(definition)
        return out


def import_entities(
    side: str,
    source: str,
    sets: list[str],
    into: Path | None,
    config: Callable[[], Config | None],
) -> list[str]:
    """Merge the metadata of `source` (a URL or a file) into the catalogue at `into`; the sets written.

    Without `sets`, the entity sets the catalogue already holds are updated; name new ones to add them."""
    into = into or builtin_entities_dir()
    catalogue = load_catalogue(into)
    known = {e.name: e for e in catalogue.entities(side)}
    lookups = entity_sets_by_logical_name(catalogue.entities("dataverse"))
    if is_url(source):
        if side == "fo":
            entities = load_metadata_text("fo", fetch_fo(config(), source))
        elif source.rstrip("/").endswith("$metadata"):
            with _client(config(), side, source) as client:
                entities = load_metadata_text(side, _get(client, source, "Dataverse $metadata").text, lookups)
        else:
            definitions = fetch_dataverse(config(), source, sets, known)
            lookups.update({d["LogicalName"]: d["EntitySetName"] for d in definitions if "EntitySetName" in d})
            entities = parse_entity_definitions(definitions, lookups)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"--from {source}: no such file (or give an http(s) URL)")
        entities = load_metadata_text(side, path.read_text(), lookups)
    if not sets:  # a whole $metadata holds every entity of the service: update the ones already catalogued
        sets = sorted(known.keys() & {e.name for e in entities})
    return import_into(into, side, entities, sets)
