"""Soak at a steady load against the documented service-protection limits, counting requests.

`--rate` edits per second on each side (one field of one of `--customers` customers per edit: F&O
renames the first half, Dataverse the second, so that each edit's arrival can be timed), for
`--seconds`. The Dataverse stand-in enforces the application user's limit (6,000 requests per 300 s;
`--window-s` scales the window down with the limit, same rate). People edit as their own users
(their requests are not dualwrite's). At the end: both sides equal, and per direction the p50/p99
change-to-visible, Dataverse requests per change by dualwrite's user, 429s answered to it, and the
longest stall (the longest time an edit waited to be seen).

    .venv/bin/python bench/soak.py --rate 17 --seconds 300
    .venv/bin/python bench/soak.py --rate 50 --seconds 300 --json soak50.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from wiring.stack import CLIENT_ID, LocalStack

COMPANY = "usmf"
PEOPLE = 10  # Dataverse users the people edit as (each with a limit of its own)


class Watch:
    """Polls both sides every `every_s` (one query each, as the watcher's own user) and records when each
    value is first seen."""

    def __init__(self, stack: LocalStack, cid: str, every_s: float = 0.1) -> None:
        self.fo = stack.user_client("fo", "soak-watcher")
        self.dv = stack.user_client("dataverse", "soak-watcher")
        self.cid = cid
        self.every_s = every_s
        self.seen: dict[tuple[str, str], float] = {}  # (side, value) -> first time seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rows(self) -> tuple[dict[str, str], dict[str, str]]:
        fo = self.fo.get(
            "CustomersV3",
            params={"$filter": f"dataAreaId eq '{COMPANY}'", "$select": "CustomerAccount,OrganizationName"},
        ).json()["value"]
        dv = self.dv.get(
            "accounts", params={"$filter": f"_msdyn_company_value eq {self.cid}", "$select": "accountnumber,name"}
        ).json()["value"]
        return (
            {r["CustomerAccount"]: r["OrganizationName"] for r in fo},
            {r["accountnumber"]: r["name"] for r in dv},
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fo, dv = self.rows()
            except Exception:  # noqa: BLE001 - a watcher read that failed is tried again
                time.sleep(self.every_s)
                continue
            now = time.perf_counter()
            for side, rows in (("fo", fo), ("dataverse", dv)):
                for value in rows.values():
                    self.seen.setdefault((side, value), now)
            self._stop.wait(self.every_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def run(rate: float, seconds: float, customers: int, window_s: float, seed: int, budget: bool = True) -> dict[str, Any]:
    limit = round(6000 * window_s / 300)
    # --no-budget: the components believe in a limit far above the stand-in's (no governor, as before it)
    planned = limit if budget else 10**9
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp),
            processes=True,
            dataverse_settings={"max_requests": limit, "window_s": window_s},
            dataverse={"budget": {"requests": planned, "window_s": window_s}},
            dataverse_producer={"poll_interval_s": 1.0, "idle_poll_interval_s": 3.0},  # the defaults
        )
        try:
            return _soak(stack, rate, seconds, customers, window_s, limit, seed)
        finally:
            stack.stop()


def _soak(
    stack: LocalStack, rate: float, seconds: float, customers: int, window_s: float, limit: int, seed: int
) -> dict[str, Any]:
    fo = stack.user_client("fo", "soak-person")
    people = [stack.user_client("dataverse", f"soak-person-{i}") for i in range(PEOPLE)]
    dv = people[0]
    deadline = time.monotonic() + 120
    cid = ""
    while not cid and time.monotonic() < deadline:
        rows = dv.get("cdm_companies", params={"$filter": f"cdm_companycode eq '{COMPANY}'"}).json()["value"]
        cid = rows[0]["cdm_companyid"] if rows else ""
        time.sleep(0.2)
    keys = [f"US-{i:03d}" for i in range(1, customers + 1)]
    watch = Watch(stack, cid)
    while time.monotonic() < deadline:  # the initial rows are there on both sides
        fo_rows, dv_rows = watch.rows()
        if all(k in dv_rows for k in keys) and all(k in fo_rows for k in keys):
            break
        time.sleep(0.5)
    ids = {
        r["accountnumber"]: r["accountid"]
        for r in dv.get(
            "accounts", params={"$filter": f"_msdyn_company_value eq {cid}", "$select": "accountnumber,accountid"}
        ).json()["value"]
    }
    before = stack.stats("dataverse")
    watch.start()
    rng = random.Random(seed)
    half = len(keys) // 2
    sent: dict[str, list[tuple[str, float]]] = {"fo": [], "dataverse": []}  # side edited -> (value, time)
    last: dict[str, str] = {}
    start = time.perf_counter()
    n = 0
    errors = 0
    while (now := time.perf_counter()) - start < seconds:
        due = start + n / (2 * rate)
        if due > now:
            time.sleep(due - now)
        side = "fo" if n % 2 == 0 else "dataverse"
        key = rng.choice(keys[:half] if side == "fo" else keys[half:])
        value = f"soak {side} {n}"
        t = time.perf_counter()
        try:
            if side == "fo":
                fo.patch(
                    f"CustomersV3(dataAreaId='{COMPANY}',CustomerAccount='{key}')", json={"OrganizationName": value}
                ).raise_for_status()
            else:
                people[n % PEOPLE].patch(f"accounts({ids[key]})", json={"name": value}).raise_for_status()
            sent[side].append((value, t))
            last[key] = value
        except Exception:  # noqa: BLE001 - a person's edit refused is counted, not synced
            errors += 1
        n += 1
    edits_done = time.perf_counter()
    converged_s = float("nan")
    while time.perf_counter() - edits_done < max(60.0, window_s):
        fo_rows, dv_rows = watch.rows()
        if all(fo_rows.get(k) == v and dv_rows.get(k) == v for k, v in last.items()):
            converged_s = time.perf_counter() - edits_done
            break
        time.sleep(0.2)
    watch.stop()
    after = stack.stats("dataverse")
    requests = after.get("requests_by", {}).get(CLIENT_ID, 0) - before.get("requests_by", {}).get(CLIENT_ID, 0)
    throttled = after.get("throttled", {}).get(CLIENT_ID, 0) - before.get("throttled", {}).get(CLIENT_ID, 0)
    out: dict[str, Any] = {
        "rate_per_direction": rate,
        "seconds": seconds,
        "window_s": window_s,
        "limit": limit,
        "edits": n - errors,
        "edit_errors": errors,
        "converged_after_s": round(converged_s, 2),
        "dataverse_requests": requests,
        "dataverse_requests_per_change": round(requests / max(1, n - errors), 3),
        "dataverse_requests_per_s": round(requests / seconds, 2),
        "limit_per_s": round(limit / window_s, 2),
        "throttled_429": throttled,
    }
    for side, towards in (("fo", "dataverse"), ("dataverse", "fo")):
        lat = [watch.seen[(towards, v)] - t for v, t in sent[side] if (towards, v) in watch.seen]
        out[f"{side}_to_{towards}"] = {
            "changes": len(sent[side]),
            "seen": len(lat),  # the rest were overwritten before a watcher poll saw them
            "p50_ms": round(_pct(lat, 0.5) * 1000),
            "p99_ms": round(_pct(lat, 0.99) * 1000),
            "max_ms": round(max(lat, default=float("nan")) * 1000),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=17.0, help="edits per second on each side")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--window-s", type=float, default=300.0, help="the limit's window (scaled with the limit)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-budget", action="store_true", help="components ignore the limit (for comparison)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    out = run(args.rate, args.seconds, args.customers, args.window_s, args.seed, not args.no_budget)
    for k, v in out.items():
        print(f"{k:34} {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
