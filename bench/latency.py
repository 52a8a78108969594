"""Change-to-appearance latency, each direction: N sequential edits on one side, timed until the other
side shows them (polled every 5 ms over the stand-ins' real APIs). Prints median, p95 and max.

    .venv/bin/python bench/latency.py --changes 50
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from wiring.stack import LocalStack


def _wait(probe: Any, timeout_s: float = 30.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if probe():
            return time.perf_counter() - start
        time.sleep(0.005)
    raise TimeoutError("change did not arrive")


def _summary(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p95 = s[max(0, int(len(s) * 0.95) - 1)]
    return (
        f"{name}: n={len(s)} median={statistics.median(s) * 1000:.0f} ms p95={p95 * 1000:.0f} ms "
        f"max={s[-1] * 1000:.0f} ms"
    )


def run(changes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # The measuring client polls every 5 ms; lift the per-user service-protection limit for it.
        stack = LocalStack.start(Path(tmp), dataverse_settings={"max_requests": 10**9})
        try:
            fo, dv = stack.user_client("fo"), stack.user_client("dataverse")
            cid = ""
            deadline = time.monotonic() + 60
            while not cid and time.monotonic() < deadline:
                rows = dv.get("cdm_companies", params={"$filter": "cdm_companycode eq 'usmf'"}).json()["value"]
                cid = rows[0]["cdm_companyid"] if rows else ""
                time.sleep(0.1)
            _wait(lambda: len(dv.get("accounts", params={"$select": "accountid"}).json()["value"]) >= 50, 60)
            acc = dv.get(
                "accounts", params={"$filter": f"accountnumber eq 'US-001' and _msdyn_company_value eq {cid}"}
            ).json()["value"][0]
            to_dv, to_fo = [], []
            rng = random.Random(7)  # edits arrive at random moments, not in step with the poll loop
            for i in range(changes):
                time.sleep(rng.uniform(0, 0.5))
                name = f"Latency F&O {i}"
                r = fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')", json={"OrganizationName": name})
                r.raise_for_status()
                to_dv.append(
                    _wait(
                        lambda name=name: (
                            dv.get(f"accounts({acc['accountid']})", params={"$select": "name"}).json()["name"] == name
                        )
                    )
                )
            # Both systems keep whole seconds and a same-second edit on both sides is a tie that F&O
            # wins (conflict policy): start the Dataverse edits in a later second than the last F&O one.
            time.sleep(1.1)
            for i in range(changes):
                time.sleep(rng.uniform(0, 0.5))
                name = f"Latency CRM {i}"
                dv.patch(f"accounts({acc['accountid']})", json={"name": name}).raise_for_status()
                to_fo.append(
                    _wait(
                        lambda name=name: (
                            fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')").json()["OrganizationName"]
                            == name
                        )
                    )
                )
            print(_summary("F&O -> Dataverse", to_dv))
            print(_summary("Dataverse -> F&O", to_fo))
            print(
                f"writes by dualwrite: F&O {stack.writes_by('fo', 'dualwrite')}, "
                f"Dataverse {stack.writes_by('dataverse', 'dualwrite')}"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    run(parser.parse_args().changes)
