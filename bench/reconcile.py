"""Reconcile at scale: F&O customers bulk-loaded into the F&O stand-in and copied to Dataverse by the initial
sync, then `dualwrite reconcile customers --json` run as its own process, at each size in turn (the rows are
added to the same stack). Prints per size the reconcile's time, its peak RSS (of that process alone), the
requests it made of each side and what it found; peak RSS that stays flat as rows grow is the point.

    .venv/bin/python bench/reconcile.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from schemas.catalogue import load_catalogue
from standins import fo as fo_standin
from standins import seed
from standins.store import Store
from wiring.initial_sync import InitialSync, MapProgress
from wiring.stack import LocalStack


def load_customers(stack: LocalStack, start: int, end: int) -> None:
    """Customers number `start` to `end` (exclusive), half in each company, straight into the F&O stand-in."""
    if stack.processes:  # the stand-in is a process of its own: its SQLite file, opened here too
        store = Store(stack.settings["fo"]["db_path"], load_catalogue(None).entities("fo"))
    else:
        store = stack.servers["fo"].server.server.config.app.state.store  # type: ignore[attr-defined]
    entity = store.entity("CustomersV3")
    rows: list[dict[str, Any]] = []
    for i in range(start, end):
        company = "usmf" if i % 2 == 0 else "demf"
        values = seed._customer(company, 26 + i // 2)  # realistic rows, after the 25 seeded per company
        values["CustomerAccount"] = f"{'US' if company == 'usmf' else 'DE'}-B{i:07d}"
        values.update({f.name: fo_standin.empty_value(f) for f in entity.fields if f.name not in values})
        rows.append(values)
        if len(rows) == 10_000:
            store.insert_many(entity, rows, seed.SYSTEM_USER)
            rows = []
    if rows:
        store.insert_many(entity, rows, seed.SYSTEM_USER)
    if stack.processes:
        store.conn.close()


def initial_sync(stack: LocalStack, names: list[str] | None) -> None:
    last = {"at": 0.0}

    def show(p: MapProgress) -> None:
        if p.name == "customers" and (time.monotonic() - last["at"] > 15 or p.finished):
            last["at"] = time.monotonic()
            print(f"  initial sync {p.name}: {p.done:,}/{p.total or 0:,} {p.rate:,.0f} rows/s", flush=True)

    InitialSync(stack.config, stack.maps, page=1000).run(names, show)
    stack.settle(timeout_s=1800)


def peak_rss_mib(pid: int) -> float | None:
    """The high-water mark of a live process's own resident memory (VmHWM), in MiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def reconcile(config: Path, out: Path) -> tuple[dict[str, Any], float, float]:
    """Run `dualwrite reconcile customers --json` as a child process: (its report, seconds, peak RSS in MiB).

    The peak is the child's own VmHWM, read every 20 ms while it runs (it only grows). Not `ru_maxrss` from
    wait4: Linux keeps there the resident size of the memory the child had before its exec, which is this
    bench's, stand-ins and all (a copy of them at the fork), so it grew with the rows loaded here."""
    started = time.monotonic()
    peak = 0.0
    with out.open("w") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-m", "wiring.cli", "reconcile", "customers", "--json", "--config", str(config)],
            stdout=stdout,
        )
        while child.poll() is None:
            peak = max(peak, peak_rss_mib(child.pid) or 0.0)
            time.sleep(0.02)
    seconds = time.monotonic() - started
    if child.returncode not in (0, 1):
        raise SystemExit(f"reconcile exited {child.returncode}")
    return json.loads(out.read_text()), seconds, peak


def run(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp),
            fo_producer={"snapshot_on_start": False, "catchup_interval_s": 0},
            dataverse_settings={"max_requests": 10**9},
        )
        try:
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(stack.cfg.model_dump(mode="json")))
            loaded = 0
            results = []
            for size in sizes:
                t = time.monotonic()
                load_customers(stack, loaded, size)
                print(f"loaded {size - loaded:,} more F&O customers in {time.monotonic() - t:.1f}s", flush=True)
                t = time.monotonic()
                initial_sync(stack, None if loaded == 0 else ["customers"])
                print(f"initial sync to Dataverse in {time.monotonic() - t:.1f}s", flush=True)
                loaded = size
                report, seconds, rss = reconcile(config, Path(tmp) / f"reconcile-{size}.json")
                (customers,) = report["maps"]
                results.append((size, customers, seconds, rss, report["requests"]))
                print(
                    f"reconcile of {customers['fo_rows']:,} F&O / {customers['dataverse_rows']:,} Dataverse rows: "
                    f"{seconds:.1f}s, peak RSS {rss:,.0f} MiB, requests F&O {report['requests']['fo']:,} "
                    f"Dataverse {report['requests']['dataverse']:,}; equal {customers['equal']:,}, "
                    f"drift {customers['drift']:,}",
                    flush=True,
                )
            print()
            print(
                f"{'customers':>10} {'F&O rows':>10} {'DV rows':>10} {'equal':>10} {'drift':>6} {'seconds':>8} "
                f"{'rows/s':>8} {'peak RSS MiB':>13} {'F&O req':>8} {'DV req':>7}"
            )
            for size, c, seconds, rss, req in results:
                print(
                    f"{size:>10,} {c['fo_rows']:>10,} {c['dataverse_rows']:>10,} {c['equal']:>10,} {c['drift']:>6,} "
                    f"{seconds:>8.1f} {c['fo_rows'] / seconds:>8,.0f} {rss:>13,.0f} {req['fo']:>8,} "
                    f"{req['dataverse']:>7,}"
                )
        finally:
            stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="Customer counts, ascending, comma-separated.")
    args = parser.parse_args()
    run([int(s) for s in args.sizes.split(",")])
