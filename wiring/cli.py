"""The `dualwrite` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import click

from dualwrite.config import Config, load_config
from dualwrite.errors import DualWriteError

DEFAULT_STATE = Path(".dualwrite")


def _config(path: Path | None) -> Config:
    if path is None and (DEFAULT_STATE / "config.yaml").is_file():
        path = DEFAULT_STATE / "config.yaml"
    return load_config(path)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Kafka-native two-way sync between Dynamics 365 F&O and Dataverse."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get("DUALWRITE_TRACE") == "1":
        logging.getLogger("dualwrite.trace").setLevel(logging.DEBUG)


@cli.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE, show_default=True)
@click.option("--keep-data", is_flag=True, help="Keep the stand-ins' SQLite data from the last run.")
@click.option("--broker-port", type=int, default=0, help="Default: a free port.")
@click.option("--registry-port", type=int, default=0)
@click.option("--token-port", type=int, default=0)
@click.option("--fo-port", type=int, default=0)
@click.option("--dataverse-port", type=int, default=0)
@click.option("--fo-events-port", type=int, default=0)
def up(state_dir: Path, keep_data: bool, **ports: int) -> None:
    """Run the whole stack locally on embedded defaults until Ctrl-C."""
    from wiring.stack import LocalStack, Ports

    given = {k.removesuffix("_port"): v for k, v in ports.items()}
    stack = LocalStack(state_dir, Ports(**given), processes=True, keep_data=keep_data)  # type: ignore[arg-type]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.start_parts()
        stack.start_components()
        urls = stack.describe()
        click.echo("dualwrite is up:")
        for name, url in urls.items():
            if isinstance(url, dict):
                for sub, u in url.items():
                    click.echo(f"  {name + ' ' + sub:<32} {u}")
            else:
                click.echo(f"  {name:<32} {url}")
        click.echo(f"(also in {state_dir / 'stack.json'}; Ctrl-C stops everything)")
        died = stack.watch(stop)
        if died:
            raise DualWriteError(f"{died} exited unexpectedly; see {state_dir / (died + '.log')}")
    finally:
        stack.stop()
    click.echo("dualwrite stopped.")


@cli.command()
@click.argument(
    "component", type=click.Choice(["fo-producer", "dataverse-producer", "consumer"])
)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
def run(component: str, config_path: Path | None) -> None:
    """Run one component in the foreground (one Deployment each in production)."""
    from wiring.components import build, enabled_maps, prepare, run_until_signalled

    logging.getLogger().setLevel(logging.INFO)  # a service logs what it does; -v is for the CLI commands
    cfg = _config(config_path)
    maps = enabled_maps(cfg)
    prepare(cfg, maps)
    run_until_signalled(build(component, cfg, maps))


@cli.command()
@click.argument("kind", type=click.Choice(["fo", "dataverse", "registry", "token"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
@click.option("--db", default=None, help="SQLite file (default: in memory).")
@click.option("--seed/--no-seed", default=None, help="Load demo data (F&O and Dataverse).")
@click.option("--event-endpoint", multiple=True, help="F&O: URL that receives data events.")
@click.option("--settings", "settings_json", default="{}", help="More of the stand-in's settings, as JSON.")
def standin(
    kind: str, host: str, port: int, db: str | None, seed: bool | None, event_endpoint: tuple[str, ...],
    settings_json: str,
) -> None:
    """Serve one stand-in of an external system (for development and tests)."""
    from wiring.stack import serve_standin

    try:
        settings = json.loads(settings_json)
    except ValueError as exc:
        raise DualWriteError(f"--settings: not JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise DualWriteError("--settings: a JSON object of setting names and values")
    if db is not None and kind in ("fo", "dataverse", "registry"):
        settings["db_path"] = db
    if seed is not None and kind in ("fo", "dataverse"):
        settings["seed"] = seed
    if event_endpoint and kind == "fo":
        settings["event_endpoints"] = list(event_endpoint)
    try:
        serve_standin(kind, host, port, settings)
    except ValueError as exc:  # pydantic's ValidationError: a setting the stand-in does not know
        raise DualWriteError(f"--settings: {exc}") from None


def _name_width(names: Iterable[str]) -> int:
    """Column width for map names in tables: the longest name plus two spaces."""
    return max((len(n) for n in names), default=3) + 2


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Per map and direction: state, consumer lag, records applied, records in the DLQ."""
    from wiring.report import collect

    rows = collect(_config(config_path))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    w = _name_width(r["map"] for r in rows)
    header = f"{'map':<{w}}{'direction':<22}{'state':<10}{'lag':>8}{'applied':>10}{'skipped':>10}{'dlq':>8}"
    click.echo(header)
    for r in rows:
        note = f"  refers to paused: {', '.join(r['waits_on'])}" if r["waits_on"] else ""
        click.echo(
            f"{r['map']:<{w}}{r['direction']:<22}{r['state']:<10}{r['lag']:>8}{r['applied']:>10}"
            f"{r['skipped']:>10}{r['dlq']:>8}{note}"
        )


@cli.group()
def dlq() -> None:
    """List and replay dead-lettered records."""


@dlq.command("list")
@click.argument("topic")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def dlq_list(topic: str, config_path: Path | None) -> None:
    """Show the records in a DLQ topic (e.g. dualwrite.fo.customersv3.dlq)."""
    from dualwrite import dlq as dead

    cfg = _config(config_path)
    for d in dead.read_all(cfg.kafka, topic):
        h = d.headers
        click.echo(
            f"{d.partition}/{d.offset} key={(d.key or b'').decode(errors='replace')} "
            f"map={h.get('dualwrite.map', '')} from={h.get('dualwrite.original.topic', '')}"
            f"[{h.get('dualwrite.original.partition', '')}]@{h.get('dualwrite.original.offset', '')} "
            f"attempts={h.get('dualwrite.attempts', '')} error={h.get('dualwrite.error.class', '')}: "
            f"{h.get('dualwrite.error.message', '')}"
        )


@dlq.command("replay")
@click.argument("topic")
@click.option("--offset", "offsets", type=int, multiple=True, help="Only these DLQ offsets (default: all).")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def dlq_replay(topic: str, offsets: tuple[int, ...], config_path: Path | None) -> None:
    """Send dead-lettered records back to their original topic to be applied again.

    The F&O events DLQ holds data-event payloads, not change events: each is translated again, with the
    current maps, and published to its map's topic; what is still malformed stays in the DLQ.
    """
    from dualwrite import dlq as dead
    from dualwrite import kafka
    from producers.fo import events_topic, replay_dead_events
    from wiring.components import enabled_maps

    cfg = _config(config_path)
    letters = [d for d in dead.read_all(cfg.kafka, topic) if not offsets or d.offset in offsets]
    if topic != kafka.dlq_topic(events_topic(cfg)):
        n = dead.replay(cfg.kafka, kafka.producer(cfg.kafka), letters)
        click.echo(f"replayed {n} record(s) from {topic}")
        return
    result = replay_dead_events(cfg, enabled_maps(cfg), letters)
    click.echo(
        f"replayed {result.published} event(s) from {result.records} record(s) of {topic} to the map topics"
        + (f" ({result.not_ours} not ours to sync)" if result.not_ours else "")
    )
    if result.malformed:
        click.echo(f"{len(result.malformed)} record(s) still malformed, left in the DLQ:")
        for offset, reason in result.malformed:
            click.echo(f"  offset {offset}: {reason}")


@cli.group("map")
def map_group() -> None:
    """Pause, resume and show table maps (the state lives in Kafka and survives restarts)."""


def _set_map_state(config_path: Path | None, names: tuple[str, ...], state: str) -> None:
    from dualwrite import control
    from wiring.components import enabled_maps

    cfg = _config(config_path)
    maps = enabled_maps(cfg)
    unknown = sorted(set(names) - set(maps))
    if unknown:
        raise DualWriteError(f"unknown map(s) {', '.join(unknown)}; known: {', '.join(sorted(maps))}")
    for name in names:
        control.set_state(cfg.kafka, name, state)
        click.echo(f"{name}: {state}")


@map_group.command("pause")
@click.argument("names", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def map_pause(names: tuple[str, ...], config_path: Path | None) -> None:
    """Stop applying these maps; their changes wait in Kafka."""
    _set_map_state(config_path, names, "paused")


@map_group.command("resume")
@click.argument("names", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def map_resume(names: tuple[str, ...], config_path: Path | None) -> None:
    """Apply these maps again, catching up in order."""
    _set_map_state(config_path, names, "running")


@map_group.command("status")
@click.argument("names", nargs=-1)
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def map_status(names: tuple[str, ...], config_path: Path | None) -> None:
    """Each map's state, and the paused maps it waits on."""
    from dualwrite import control
    from dualwrite.order import dependency_order, waits_on
    from wiring.components import enabled_maps

    cfg = _config(config_path)
    maps = enabled_maps(cfg)
    states = control.read_states(cfg.kafka)
    paused = {m for m, st in states.items() if st.get("state") == "paused"}
    w = _name_width(maps)
    for name in dependency_order(maps):
        if names and name not in names:
            continue
        state = "paused" if name in paused else "running"
        blocked = waits_on(maps, name, paused)
        note = f"  (refers to paused: {', '.join(blocked)})" if blocked else ""
        click.echo(f"{name:<{w}}{state}{note}")


@cli.group("sync")
def sync_group() -> None:
    """Initial sync of existing rows."""


@sync_group.command("initial")
@click.argument("names", nargs=-1)
@click.option("--config", "config_path", type=click.Path(path_type=Path))
@click.option("--restart", is_flag=True, help="Start a new run instead of resuming an unfinished one.")
def sync_initial(names: tuple[str, ...], config_path: Path | None, restart: bool) -> None:
    """Copy existing rows of MAPs (default: all) from their master side, in dependency order; resumable."""
    import time as _time
    import uuid as _uuid

    from wiring.components import enabled_maps, prepare
    from wiring.initial_sync import InitialSync, MapProgress

    cfg = _config(config_path)
    maps = enabled_maps(cfg)
    unknown = sorted(set(names) - set(maps))
    if unknown:
        raise DualWriteError(f"unknown map(s) {', '.join(unknown)}; known: {', '.join(sorted(maps))}")
    prepare(cfg, maps)
    sync = InitialSync(cfg, maps, run_id=_uuid.uuid4().hex[:12] if restart else None)
    click.echo(f"initial sync run {sync.run_id}, order: {' -> '.join(sync.order(list(names) or None))}")
    tty = sys.stdout.isatty()
    shown = {"at": 0.0}
    name_w = _name_width(maps)

    def show(p: MapProgress) -> None:
        now = _time.monotonic()
        if not tty and p.finished is None and now - shown["at"] < 2:
            return
        shown["at"] = now
        total = p.total or 0
        width = 24
        filled = int(width * min(1.0, p.done / total)) if total else width
        eta = "" if p.eta_s is None or p.finished else f"  {p.eta_s:,.0f}s left"
        bar = "#" * filled + "." * (width - filled)
        line = f"{p.name:<{name_w}}[{bar}] {p.done:>9,}/{total:<9,} {p.rate:>9,.0f} rows/s{eta}"
        if p.finished is not None:
            click.echo(("\r" if tty else "") + line + "  done")
        else:
            click.echo(("\r" + line) if tty else line, nl=not tty)

    try:
        results = sync.run(list(names) or None, show)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: run {sync.run_id} stopped; `dualwrite sync initial` resumes it", err=True)
        raise
    click.echo(f"{'map':<{name_w}}{'rows':>10}{'resumed at':>12}{'dead-lettered':>15}{'seconds':>10}{'rows/s':>10}")
    for p in results:
        secs = (p.finished or _time.monotonic()) - p.started
        click.echo(
            f"{p.name:<{name_w}}{p.done:>10,}{p.resumed_at:>12,}{p.dead_lettered:>15,}{secs:>10.1f}{p.rate:>10,.0f}"
        )


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--company", "companies", multiple=True, help="Only this company (repeatable; default: all enabled).")
@click.option("--repair", is_flag=True, help="Publish the winning side's change event of each drifted row.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def reconcile(
    names: tuple[str, ...], companies: tuple[str, ...], repair: bool, as_json: bool, config_path: Path | None
) -> None:
    """Compare both sides of MAPs (default: all); exit 1 while drift is left (found, and not repaired)."""
    from wiring.components import enabled_maps, prepare
    from wiring.reconcile import Progress, Reconciler, table

    cfg = _config(config_path)
    maps = enabled_maps(cfg)
    unknown = sorted(set(names) - set(maps))
    if unknown:
        raise DualWriteError(f"unknown map(s) {', '.join(unknown)}; known: {', '.join(sorted(maps))}")
    strangers = sorted({c.lower() for c in companies} - set(cfg.companies))
    if strangers:
        raise DualWriteError(f"--company {', '.join(strangers)}: not in the config's companies ({cfg.companies})")
    prepare(cfg, maps)
    tty = sys.stderr.isatty()
    name_w = _name_width(maps)

    def show(p: Progress) -> None:
        if not tty:
            return
        total = max(p.total or 0, p.compared)
        filled = int(24 * p.compared / total) if total else 24
        bar = "#" * filled + "." * (24 - filled)
        line = f"\r{p.map:<{name_w}}[{bar}] {p.compared:>9,}/{total:<9,}"
        click.echo(line + ("  done\n" if p.finished else ""), nl=False, err=True)

    rec = Reconciler(cfg, maps, [c.lower() for c in companies] or None, repair, on_progress=show)
    report = rec.run(list(names) or None)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        for line in table(report, name_w):
            click.echo(line)
    if report.remaining:
        sys.exit(1)


@cli.command()
@click.option("--changes", type=click.IntRange(min=100), default=5000, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=10), default=60.0, show_default=True, help="Over how long.")
@click.option("--seed", type=int, default=None, help="The schedule's seed (default: random, printed).")
@click.option("--freeze-max-s", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--state-dir", type=click.Path(path_type=Path), help="Keep the stack's files and logs here.")
def chaos(changes: int, seconds: float, seed: int | None, freeze_max_s: float, state_dir: Path | None) -> None:
    """Changes on both sides under crashes, outages, throttling and poison; exit 1 if the oracle finds a fault."""
    import random

    from wiring.chaos import run

    seed = random.randrange(1_000_000) if seed is None else seed
    sys.exit(run(changes, seconds, seed, state_dir, freeze_max_s))


@cli.group("entities")
def entities_group() -> None:
    """The entity catalogue (fields, types, keys) that schemas are generated from."""


@entities_group.command("import")
@click.option("--side", type=click.Choice(["fo", "dataverse"]), required=True)
@click.option("--from", "source", required=True, help="Service URL, or a saved $metadata / EntityDefinitions file.")
@click.option("--set", "sets", multiple=True, help="Entity set to import (default: the ones already catalogued).")
@click.option("--into", type=click.Path(path_type=Path), help="Catalogue directory (default: schemas/entities).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="For the service's auth.")
def entities_import(side: str, source: str, sets: tuple[str, ...], into: Path | None, config_path: Path | None) -> None:
    """Merge a service's metadata into the catalogue; then run `python -m schemas.generate`."""
    from wiring.entities import import_entities

    written = import_entities(side, source, list(sets), into, lambda: _config(config_path))
    for name in written:
        click.echo(f"{side} {name}: imported")
    click.echo(f"{len(written)} entity set(s) written; regenerate the schemas: python -m schemas.generate")


@cli.command("maps")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
def maps_cmd(config_path: Path | None) -> None:
    """List the enabled table maps in the order they run."""
    from dualwrite.order import dependency_order
    from wiring.components import enabled_maps

    maps = enabled_maps(_config(config_path))
    w = _name_width(maps)
    for name in dependency_order(maps):
        m = maps[name]
        click.echo(f"{name:<{w}}{m.fo.entity_set} <-> {m.dataverse.entity_set}  ({len(m.fields)} fields)")


def main() -> None:
    """Entry point: DualWriteError ends with one clear line and exit code 2, never a stack trace."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DualWriteError as exc:
        click.echo(f"dualwrite: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # process boundary: one line, the details in the log at -v
        logging.getLogger("dualwrite").debug("unexpected failure", exc_info=True)
        click.echo(f"dualwrite: unexpected error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
