"""Initial-sync rate: N extra F&O customers (bulk-loaded into the F&O stand-in), copied to Dataverse by
`InitialSync` through the real broker, consumer and Dataverse stand-in. Prints rows/s per map.

    .venv/bin/python bench/initial_sync.py --customers 100000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from wiring.initial_sync import InitialSync, MapProgress
from wiring.stack import LocalStack


def load_customers(stack: LocalStack, n: int) -> None:
    """`n` bulk-loaded F&O customers (the same rows as bench/reconcile.py)."""
    from reconcile import load_customers as load

    load(stack, 0, n)


def run(customers: int, page: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp), fo_producer={"snapshot_on_start": False}, dataverse_settings={"max_requests": 10**9}
        )
        try:
            started = time.monotonic()
            load_customers(stack, customers)
            print(f"loaded {customers:,} F&O customers in {time.monotonic() - started:.1f}s")
            last = {"at": 0.0}

            def show(p: MapProgress) -> None:
                if time.monotonic() - last["at"] > 10 or p.finished:
                    last["at"] = time.monotonic()
                    print(f"  {p.name}: {p.done:,}/{p.total or 0:,} {p.rate:,.0f} rows/s", flush=True)

            results = InitialSync(stack.config, stack.maps, page=page).run(None, show)
            for p in results:
                secs = (p.finished or time.monotonic()) - p.started
                print(
                    f"{p.name:<16} rows={p.done:>8,} seconds={secs:>7.1f} rate={p.rate:>8,.0f} rows/s "
                    f"dead-lettered={p.dead_lettered}"
                )
            dv = stack.user_client("dataverse")
            got = dv.get("accounts", params={"$count": "true", "$top": "0"}).json().get("@odata.count")
            writes = stack.writes_by("dataverse", "dualwrite")
            print(f"accounts in Dataverse: {got}; Dataverse writes by dualwrite: {writes:,}")
            print(
                f"peak RSS of this process (stand-ins + components): "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    run(args.customers, args.page)
