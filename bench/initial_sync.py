"""Initial sync at scale: N F&O customers bulk-loaded into the F&O stand-in, then `dualwrite sync initial
customers` run as its own process, copying them to Dataverse through the real broker, consumer and
Dataverse stand-in, every part its own process (`LocalStack(processes=True)`). Prints per size the time,
rows/s, Dataverse requests per row and the peak RSS (VmHWM, read every 50 ms) of each process; flat peaks
as the rows grow are the point. Each size runs on a stack of its own.

    .venv/bin/python bench/initial_sync.py --sizes 10000,100000
    .venv/bin/python bench/initial_sync.py --sizes 1000000 --json initial-1m.json   # about 25 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from reconcile import load_customers, peak_rss_mib

from wiring.stack import CLIENT_ID, LocalStack


class Peaks:
    """The highest VmHWM seen of each named process, polled every `every_s`."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.05) -> None:
        self.pids = dict(pids)
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.peak.setdefault(name, 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.pids.items()):
                self.peak[name] = max(self.peak[name], peak_rss_mib(pid) or 0.0)
            self._stop.wait(0.05)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        return {k: round(v, 1) for k, v in self.peak.items()}


def _sync(config: Path, names: list[str], log: Path, peaks: Peaks | None) -> None:
    """`dualwrite sync initial NAMES` as a child process, its output in `log`; a line of it every 30 s."""
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "wiring.cli", "sync", "initial", *names, "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if peaks is not None:
            peaks.add("sync-initial", child.pid)
        last = time.monotonic()
        while child.poll() is None:
            time.sleep(0.2)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                lines = log.read_text().strip().splitlines()
                print(f"  {lines[-1] if lines else '...'}", flush=True)
    if child.returncode != 0:
        raise SystemExit(f"sync initial exited {child.returncode}:\n{log.read_text()[-3000:]}")


def one(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp),
            processes=True,
            fo_producer={"snapshot_on_start": False, "catchup_interval_s": 0},
            dataverse_settings={"max_requests": 10**9},
            dataverse={"budget": {"requests": 10**9}},
        )
        try:
            config = Path(tmp) / "config.yaml"
            # The other maps first (companies, groups, terms the customers refer to), untimed.
            _sync(config, [], Path(tmp) / "initial-sync-all.log", None)
            t = time.monotonic()
            load_customers(stack, 0, size)
            print(f"loaded {size:,} F&O customers in {time.monotonic() - t:.1f}s", flush=True)
            stack.settle(300)
            pids = {f"standin-{k}": s.pid for k, s in stack.servers.items()}
            pids.update({name: c.pid for name, c in stack.components.items()})
            assert stack.broker is not None
            pids["broker"] = stack.broker.pid
            peaks = Peaks(pids)
            before = stack.stats("dataverse")
            log = Path(tmp) / "initial-sync.log"
            started = time.monotonic()
            _sync(config, ["customers"], log, peaks)
            seconds = time.monotonic() - started
            rss = peaks.stop()
            after = stack.stats("dataverse")
            with stack.user_client("dataverse", "bench-counter") as dv:
                flt = "startswith(accountnumber,'US-B') or startswith(accountnumber,'DE-B')"
                got = dv.get("accounts", params={"$filter": flt, "$count": "true", "$top": "0"}).json()
            requests = after["requests_by"].get(CLIENT_ID, 0) - before["requests_by"].get(CLIENT_ID, 0)
            return {
                "customers": size,
                "in_dataverse": got.get("@odata.count"),
                "seconds": round(seconds, 1),
                "rows_per_s": round(size / seconds),
                "dataverse_requests_per_row": round(requests / size, 4),
                "peak_rss_mib": rss,
                "summary": log.read_text().strip().splitlines()[-2:],
            }
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="Customer counts, comma-separated.")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        r = one(size)
        results.append(r)
        print(json.dumps(r), flush=True)
    names = list(results[0]["peak_rss_mib"])
    print()
    print(
        f"{'customers':>10} {'in DV':>10} {'seconds':>8} {'rows/s':>7} {'DV req/row':>10}  peak RSS MiB: "
        + ", ".join(names)
    )
    for r in results:
        print(
            f"{r['customers']:>10,} {r['in_dataverse'] or 0:>10,} {r['seconds']:>8.1f} {r['rows_per_s']:>7,} "
            f"{r['dataverse_requests_per_row']:>10}  " + ", ".join(f"{r['peak_rss_mib'][n]:,.0f}" for n in names)
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
