"""`dualwrite chaos`: many changes on both sides under crashes, outages, throttling and poison, then an
oracle from the systems' own APIs.

A local stack (every component and stand-in in its own process) syncs customers while people create,
update, delete and re-create them on both sides. The records are of three kinds, so that the oracle
can be exact where the truth is known:

- *F&O-owned* and *Dataverse-owned*: only that side's people touch them (creates, updates, deletes and
  re-creates of one key); at the end both sides must hold exactly the owner's last value (or no row
  after a last delete);
- *contested*: people on both sides update them at random moments (true conflicts); at the end both
  sides must agree on one of the two sides' last values.

Meanwhile, on a schedule drawn from the seed: components are killed with SIGKILL and restarted, the
broker is frozen (SIGSTOP) and thawed, the customers map is paused and resumed, a second consumer
joins the group and leaves it (rebalances), and the target stand-ins answer dualwrite's requests with
5xx (before or after doing the work), bursts of 429 with `Retry-After`, slow answers and dropped
connections. One change in a hundred is poison instead: bytes that are not Avro on a map topic, or a
malformed data event posted to the receiver.

The oracle: every record as above; `dualwrite reconcile` finds no drift; the dead-letter topics
gained exactly the poison, each with its reason; dualwrite's writes stay within the changes made
(no loops), and stop once the changes do (no echoes). A summary table, exit 1 on any failure, and
the seed printed so that the same schedule can be run again.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from dualwrite import control, kafka
from dualwrite.server import free_port
from wiring.stack import CLIENT_ID, HOST, LocalStack, ProcessPart

MAP = "customers"
COMPANY = "usmf"
PEOPLE = 10  # Dataverse users the people act as (each with its own service-protection limit)
COMPONENTS = ("fo-producer", "dataverse-producer", "consumer")


@dataclass
class Record:
    key: str
    kind: str  # "fo", "dataverse" (the owner) or "contested"
    exists: bool = False
    dv_id: str | None = None  # the Dataverse row id, for the owner's (or contested) updates there
    last: dict[str, tuple[float, str | None]] = field(default_factory=dict)  # side -> (time, value; None: deleted)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    poison: Counter[str] = field(default_factory=Counter)
    # Poison by id: acknowledged as sent (it must be in a DLQ), or with an unknown outcome (a dropped
    # connection, a 503 after the receiver may have dead-lettered it: it may be in a DLQ, once).
    poison_sent: set[int] = field(default_factory=set)
    poison_maybe: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: Counter[str], name: str, n: int = 1) -> None:
        with self.lock:
            what[name] += n


def _faults(dataverse: bool, seed: int, scale: float) -> dict[str, Any]:
    return {
        "callers": [CLIENT_ID],
        "api_prefix": "/api/data" if dataverse else "/data",
        "error_rate": 0.05,
        "throttle_rate": 0.003,
        "throttle_burst_s": 2.0 * scale,
        "retry_after_s": 1,
        "slow_rate": 0.02,
        "slow_s": 0.5,
        "drop_rate": 0.01,
        "seed": seed,
        "dataverse": dataverse,
    }


class Chaos:
    def __init__(self, changes: int, seconds: float, seed: int, state_dir: Path, freeze_max_s: float) -> None:
        self.changes = changes
        self.seconds = seconds
        self.seed = seed
        self.rng = random.Random(seed)
        self.state_dir = state_dir
        self.freeze_max_s = freeze_max_s
        self.tally = Tally()
        self.stack: LocalStack | None = None
        self.records: list[Record] = []
        self.cid = ""
        self.group_id = ""  # customer group 10 of the company in Dataverse
        self._stop = threading.Event()
        self._restarting: set[str] = set()
        self._frozen = threading.Lock()
        self.extra_consumer: ProcessPart | None = None
        self.dlq_duplicates: dict[str, int] = {}

    # -- set-up ------------------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        self.stack = LocalStack.start(
            self.state_dir,
            processes=True,
            # F&O's business events go out from several tasks: events of different records in any order
            fo_settings={"faults": _faults(False, self.seed, 1.0), "event_concurrency": 8},
            dataverse_settings={"faults": _faults(True, self.seed + 1, 1.0)},
            # The injected fault rates are far above a real service's: a streak of them is retried longer.
            consumer={"retry": {"max_attempts": 20}},
        )
        return self.stack

    @property
    def s(self) -> LocalStack:
        assert self.stack is not None
        return self.stack

    def config_path(self) -> Path:
        path = self.state_dir / "chaos-config.yaml"
        if not path.exists():
            path.write_text(yaml.safe_dump(self.s.cfg.model_dump(mode="json")))
        return path

    def wait_seeded(self, timeout_s: float = 180) -> None:
        dv = self.s.user_client("dataverse", "chaos-oracle")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = dv.get("cdm_companies", params={"$filter": f"cdm_companycode eq '{COMPANY}'"}).json().get("value")
            if rows:
                self.cid = rows[0]["cdm_companyid"]
                groups = dv.get(
                    "msdyn_customergroups",
                    params={"$filter": f"msdyn_groupid eq '10' and _msdyn_company_value eq {self.cid}"},
                ).json()["value"]
                if groups and len(self._dv_rows("US-")) >= 20:
                    self.group_id = groups[0]["msdyn_customergroupid"]
                    return
            time.sleep(1)
        raise RuntimeError("the seeded customers did not reach Dataverse")

    def make_records(self, n: int) -> None:
        kinds = ("fo", "dataverse", "contested")
        self.records = [Record(f"CH-{i:05d}", kinds[i % 3]) for i in range(n)]
        fo = self.s.user_client("fo", "chaos-person")
        for r in self.records:  # the contested ones exist from the start, made in F&O
            if r.kind == "contested":
                self._fo_create(fo, r, f"start {r.key}")
        deadline = time.monotonic() + 120
        contested = {r.key: r for r in self.records if r.kind == "contested"}
        while time.monotonic() < deadline:
            rows = self._dv_rows("CH-")
            if all(k in rows for k in contested):
                for k, r in contested.items():
                    r.dv_id = rows[k][0]
                return
            time.sleep(1)
        raise RuntimeError("the contested customers did not reach Dataverse")

    # -- reading both sides (as the oracle's own users) ----------------------------------------------------
    def _dv_rows(self, prefix: str) -> dict[str, tuple[str, str]]:
        flt = f"startswith(accountnumber,'{prefix}') and _msdyn_company_value eq {self.cid}"
        rows = _pages(self.s.user_client("dataverse", "chaos-oracle"), "accounts", "accountid,accountnumber,name", flt)
        return {r["accountnumber"]: (r["accountid"], r["name"]) for r in rows}

    def _fo_rows(self, prefix: str) -> dict[str, str]:
        flt = f"dataAreaId eq '{COMPANY}' and startswith(CustomerAccount,'{prefix}')"
        rows = _pages(self.s.user_client("fo", "chaos-oracle"), "CustomersV3", "CustomerAccount,OrganizationName", flt)
        return {r["CustomerAccount"]: r["OrganizationName"] for r in rows}

    # -- people's changes ------------------------------------------------------------------------------------
    def _fo_create(self, fo: httpx.Client, r: Record, value: str) -> None:
        body = {
            "dataAreaId": COMPANY,
            "CustomerAccount": r.key,
            "OrganizationName": value,
            "CustomerGroupId": "10",
            "SalesCurrencyCode": "USD",
            "PartyType": "Organization",
        }
        resp = fo.post("CustomersV3", json=body)
        resp.raise_for_status()
        r.exists = True

    def _fo_url(self, r: Record) -> str:
        return f"CustomersV3(dataAreaId='{COMPANY}',CustomerAccount='{r.key}')"

    def _dv_create(self, dv: httpx.Client, r: Record, value: str) -> None:
        body = {
            "accountnumber": r.key,
            "name": value,
            "customertypecode": 3,
            "msdyn_company@odata.bind": f"/cdm_companies({self.cid})",
            "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
            "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({self.group_id})",
        }
        resp = dv.post("accounts", json=body, headers={"Prefer": "return=representation"})
        resp.raise_for_status()
        r.dv_id = resp.json()["accountid"]
        r.exists = True

    def change(self, r: Record, n: int, fo: httpx.Client, dv: httpx.Client) -> None:
        """One person's change of a record (the caller holds its lock)."""
        side = r.kind if r.kind != "contested" else self.rng.choice(("fo", "dataverse"))
        value = f"{side[:2]} {n}"
        if not r.exists:
            op = "create"
        elif r.kind != "contested" and self.rng.random() < 0.08:
            op = "delete"
        else:
            op = "update"
        at = time.time()
        if side == "fo":
            if op == "create":
                self._fo_create(fo, r, value)
            elif op == "delete":
                fo.delete(self._fo_url(r)).raise_for_status()
            else:
                fo.patch(self._fo_url(r), json={"OrganizationName": value}).raise_for_status()
        else:
            if op == "create":
                self._dv_create(dv, r, value)
            elif op == "delete":
                dv.delete(f"accounts({r.dv_id})").raise_for_status()
            else:
                dv.patch(f"accounts({r.dv_id})", json={"name": value}).raise_for_status()
        r.last[side] = (at, None if op == "delete" else value)
        if op == "delete":
            r.exists = False
        self.tally.count(self.tally.ops, f"{side} {op}")

    def people(self, worker: int, workers: int, rate: float, deadline: float) -> None:
        fo = self.s.user_client("fo", f"chaos-person-{worker}")
        dvs = [self.s.user_client("dataverse", f"chaos-person-{worker}-{i}") for i in range(PEOPLE)]
        mine = self.records[worker::workers]
        rng = random.Random(self.seed * 1000 + worker)
        n, start = 0, time.monotonic()
        quota = self.changes // workers
        while n < quota and not self._stop.is_set():
            due = start + n / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if now > deadline + 60:
                self.tally.errors.append(f"worker {worker} could not make its changes in time ({n} of {quota})")
                return
            seq = n * workers + worker
            n += 1
            if rng.random() < 0.01:
                try:
                    self.poison(seq)
                except Exception as exc:  # noqa: BLE001 - e.g. the receiver is being restarted
                    self.tally.count(self.tally.poison, f"poison not delivered ({type(exc).__name__})")
                    with self.tally.lock:
                        self.tally.poison_maybe.add(seq)  # the request may have arrived before its answer broke
                continue
            r = rng.choice(mine)
            with r.lock:
                try:
                    self.change(r, seq, fo, dvs[n % PEOPLE])
                except httpx.HTTPError as exc:
                    self.tally.count(self.tally.ops, "person's change refused")
                    if len(self.tally.errors) < 20:
                        self.tally.errors.append(f"a person's change of {r.key} failed: {exc}")

    # -- poison ---------------------------------------------------------------------------------------------
    def poison(self, n: int) -> None:
        if n % 2 == 0:
            topic = kafka.map_topics(self.s.cfg.kafka.topic_prefix, self.s.maps[MAP])["fo"]
            p = kafka.producer(self.s.cfg.kafka, linger_ms=0)
            kafka.deliver(p, [kafka.Record(topic, b"\x00not avro " + str(n).encode(), f"poison-{n}".encode())])
            self.tally.count(self.tally.poison, "not Avro")
            with self.tally.lock:
                self.tally.poison_sent.add(n)
            return
        event = {
            "MessageName": "Update",
            "PrimaryEntityName": "mserp_custcustomerv3entity",
            "CorrelationId": f"chaos-poison-{n}",
            "InputParameters": 7,  # not a list of parameters
        }
        resp = httpx.post(self.s.event_url, json=[event], timeout=30)
        dead = int(resp.json().get("dead_lettered", 0)) if resp.status_code in (200, 202) else 0
        if dead:
            self.tally.count(self.tally.poison, "malformed data event")
        else:
            self.tally.count(self.tally.poison, f"data event answered {resp.status_code}")
        with self.tally.lock:
            (self.tally.poison_sent if dead else self.tally.poison_maybe).add(n)

    # -- faults ------------------------------------------------------------------------------------------------
    def schedule(self, seconds: float) -> list[tuple[float, str, Any]]:
        """The faults of the run, drawn from the seed: (second, kind, argument)."""
        out: list[tuple[float, str, Any]] = []
        t = self.rng.uniform(4, 8)
        while t < seconds:
            out.append((t, "kill", self.rng.choice(COMPONENTS)))
            t += self.rng.uniform(6, 14)
        t = self.rng.uniform(8, 15)
        while t < seconds:
            out.append((t, "freeze", self.rng.uniform(1, self.freeze_max_s)))
            t += self.rng.uniform(20, 35)
        t = self.rng.uniform(10, 20)
        while t < seconds:
            out.append((t, "pause", self.rng.uniform(2, 6)))
            t += self.rng.uniform(30, 50)
        t = self.rng.uniform(12, 25)
        while t < seconds:
            out.append((t, "rebalance", self.rng.uniform(8, 15)))
            t += self.rng.uniform(35, 60)
        return sorted(out, key=lambda f: f[0])

    def inject(self, kind: str, arg: Any) -> None:
        self.tally.count(self.tally.faults, kind if kind != "kill" else f"kill {arg}")
        if kind == "kill":
            self.restart(arg)
        elif kind == "freeze":
            with self._frozen:
                assert self.s.broker is not None
                os.kill(self.s.broker.pid, signal.SIGSTOP)
                try:
                    time.sleep(arg)
                finally:
                    os.kill(self.s.broker.pid, signal.SIGCONT)
        elif kind == "pause":
            with self._frozen:  # the control topic needs the broker
                control.set_state(self.s.cfg.kafka, MAP, "paused")
            time.sleep(arg)
            with self._frozen:
                control.set_state(self.s.cfg.kafka, MAP, "running")
        elif kind == "rebalance":
            self.second_consumer(arg)

    def restart(self, name: str) -> None:
        if name in self._restarting:
            return
        self._restarting.add(name)
        try:
            part = self.s.components.pop(name, None)
            if part is not None:
                part.kill()
            for _ in range(5):
                try:
                    self.s.start_components((name,), timeout_s=90)
                    return
                except Exception as exc:  # noqa: BLE001 - e.g. not ready while the broker is frozen: again
                    self.tally.errors.append(f"restart of {name}: {exc}")
                    stuck = self.s.components.pop(name, None)
                    if stuck is not None:
                        stuck.kill()
        finally:
            self._restarting.discard(name)

    def second_consumer(self, seconds: float) -> None:
        args = [sys.executable, "-m", "wiring.cli", "run", "consumer", "--config", str(self.config_path())]
        env = {
            "DUALWRITE__OPS__PORT": str(free_port(HOST)),
            "DUALWRITE__CONSUMER__STATE_DIR": str(self.state_dir / "consumer-2-state"),
        }
        part = ProcessPart("consumer-2", args, self.state_dir, 0, env)
        self.extra_consumer = part
        time.sleep(seconds)
        # It leaves by crashing: the group waits out its session. (Not by a clean stop: tansu 0.6 wedges a group
        # whose leader sends LeaveGroup while the group is rebalancing: its `Forming` state keeps the departed
        # leader, and every member that joins after it gets that leader and REBALANCE_IN_PROGRESS from SyncGroup
        # for good. Real Kafka elects a new leader. The draw stays, so that a seed replays the same schedule.)
        self.rng.random()
        part.kill()
        self.extra_consumer = None

    def faults(self, plan: list[tuple[float, str, Any]], start: float) -> None:
        threads: list[threading.Thread] = []
        for at, kind, arg in plan:
            while time.monotonic() < start + at:
                if self._stop.wait(0.1):
                    break
            if self._stop.is_set():
                break
            t = threading.Thread(target=self._guard, args=(kind, arg), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(120)

    def _guard(self, kind: str, arg: Any) -> None:
        try:
            self.inject(kind, arg)
        except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported
            self.tally.errors.append(f"injecting {kind} failed: {exc!r}")

    # -- the oracle ----------------------------------------------------------------------------------------------
    def dlq_counts(self, ids: dict[int, int] | None = None) -> dict[str, int]:
        """Distinct dead letters per DLQ topic; `ids` gathers how often each chaos poison id is among them."""
        c = kafka.consumer(self.s.cfg.kafka, f"{self.s.cfg.kafka.topic_prefix}.chaos.{self.seed}")
        try:
            topics = [t for t in c.list_topics(timeout=10).topics if t.endswith(".dlq")]
        finally:
            c.close()
        out: dict[str, int] = {}
        for t in topics:
            distinct: set[Any] = set()
            msgs = list(kafka.read_to_end(self.s.cfg.kafka, t, idle_s=1.0))
            for m in msgs:
                headers = dict(m.headers() or [])
                if "dualwrite.error.message" not in headers:
                    self.tally.errors.append(f"a dead letter in {t} without its reason header")
                # A consumer killed after dead-lettering and before its commit dead-letters the record again
                # (at least once): the same original record, counted once.
                where = tuple(headers.get(f"dualwrite.original.{k}") for k in ("topic", "partition", "offset"))
                if where[0] and where in distinct:
                    continue
                distinct.add(where if where[0] else hash(m.value()))
                if ids is not None:
                    pid = poison_id(m.key(), m.value())
                    ids[pid] = ids.get(pid, 0) + 1
            out[t] = len(distinct)
            self.dlq_duplicates[t] = len(msgs) - len(distinct)
        return out

    def converged(self) -> list[str]:
        """What is wrong with the records now (empty: every record as the oracle expects)."""
        fo, dv = self._fo_rows("CH-"), {k: v[1] for k, v in self._dv_rows("CH-").items()}
        wrong = []
        for r in self.records:
            a, b = fo.get(r.key), dv.get(r.key)
            if r.kind == "contested":
                allowed = {v for _, v in r.last.values()} or {f"start {r.key}"}
                if a != b or a not in allowed:
                    choices = ", ".join(sorted(map(repr, allowed)))
                    wrong.append(f"{r.key} (contested): F&O {a!r}, Dataverse {b!r}, allowed {choices}")
            elif r.last:
                want = r.last[r.kind][1]
                if a != want or b != want:
                    wrong.append(f"{r.key} ({r.kind}-owned): F&O {a!r}, Dataverse {b!r}, last written {want!r}")
        return wrong

    def writes(self) -> dict[str, int]:
        return {side: self.s.writes_by(side, CLIENT_ID) for side in ("fo", "dataverse")}

    def requests(self) -> dict[str, dict[str, int]]:
        """dualwrite's own requests to each stand-in ($batch counted once) and the 429s it got."""
        out = {}
        for side in ("fo", "dataverse"):
            stats = self.s.stats(side)
            out[side] = {
                "requests": int(stats.get("requests_by", {}).get(CLIENT_ID, 0)),
                "throttled": int(stats.get("throttled", {}).get(CLIENT_ID, 0)),
            }
        return out

    def reconcile(self) -> tuple[int, Any]:
        args = [sys.executable, "-m", "wiring.cli", "reconcile", MAP, "--json", "--config", str(self.config_path())]
        res = subprocess.run(args, capture_output=True, text=True, timeout=600)
        try:
            report = json.loads(res.stdout)
        except json.JSONDecodeError:
            report = res.stderr[-2000:]
        return res.returncode, report

    def injected_by_standins(self) -> dict[str, dict[str, int]]:
        out = {}
        for side in ("fo", "dataverse"):
            out[side] = httpx.get(f"{self.s.servers[side].url}/_standin/faults", timeout=10).json()
        return out


def _pages(client: httpx.Client, entity_set: str, select: str, flt: str) -> list[dict[str, Any]]:
    """Every row of a query, following the server's pages."""
    out: list[dict[str, Any]] = []
    url: str | None = entity_set
    params: dict[str, str] | None = {"$select": select, "$filter": flt}
    with client:
        while url:
            body = client.get(url, params=params).json()
            out.extend(body.get("value", []))
            url, params = body.get("@odata.nextLink"), None
    return out


def run(changes: int, seconds: float, seed: int, state_dir: Path | None = None, freeze_max_s: float = 10.0) -> int:
    """Run the chaos; print the summary; 0 when the oracle found nothing wrong, else 1."""
    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="dualwrite-chaos-") as tmp:
            return run(changes, seconds, seed, Path(tmp), freeze_max_s)
    t0 = time.monotonic()
    chaos = Chaos(changes, seconds, seed, state_dir, freeze_max_s)
    print(f"dualwrite chaos: {changes} changes over {seconds:g} s, seed {seed}", flush=True)
    stack = chaos.start()
    summary: dict[str, Any] = {"seed": seed, "changes": changes}
    failures: list[str] = []
    try:
        chaos.wait_seeded()
        chaos.make_records(max(30, min(3000, changes // 20)))
        ids_before: dict[int, int] = {}
        dlq_before = chaos.dlq_counts(ids_before)
        writes_before = chaos.writes()
        requests_before = chaos.requests()
        plan = chaos.schedule(seconds)
        workers = 4
        start = time.monotonic()
        deadline = start + seconds
        people = [
            threading.Thread(target=chaos.people, args=(w, workers, changes / workers / seconds, deadline), daemon=True)
            for w in range(workers)
        ]
        faults = threading.Thread(target=chaos.faults, args=(plan, start), daemon=True)
        for t in (*people, faults):
            t.start()
        for t in people:
            t.join()
        changes_s = time.monotonic() - start
        chaos._stop.set()
        faults.join(180)
        for name in COMPONENTS:  # every component runs again for the catch-up
            part = stack.components.get(name)
            if part is None or not part.alive():
                chaos.restart(name)
        # Catch-up: every record as the oracle expects, within a bound.
        settle_start = time.monotonic()
        wrong = chaos.converged()
        while wrong and time.monotonic() - settle_start < max(180.0, seconds):
            time.sleep(2)
            wrong = chaos.converged()
        summary["settle_s"] = round(time.monotonic() - settle_start, 1)
        failures += [f"record: {w}" for w in wrong[:20]]
        if len(wrong) > 20:
            failures.append(f"... and {len(wrong) - 20} more records wrong")
        # No echoes: once the consumer applied everything (the records can agree before the last retries of
        # a backlog are through, and those may still write), the writes stop.
        try:
            chaos.s.settle(timeout_s=max(120.0, seconds / 2))
        except AssertionError as exc:
            failures.append(f"the consumer did not catch up after the records agreed: {exc}")
        quiet = chaos.writes()
        time.sleep(10)
        still = chaos.writes()
        if still != quiet:
            failures.append(f"writes went on with no change to sync: {quiet} -> {still}")
        writes = {k: still[k] - writes_before[k] for k in still}
        requests = {
            side: {k: n - requests_before[side][k] for k, n in counts.items()}
            for side, counts in chaos.requests().items()
        }
        ops = chaos.tally.ops
        made = {s: sum(v for k, v in ops.items() if k.startswith(s[:2])) for s in ("fo", "dataverse")}
        # Each change is written to the other side at most once, plus a write back per true conflict and
        # the retries of writes whose answer a fault lost; a loop would write without bound.
        for side, other in (("dataverse", "fo"), ("fo", "dataverse")):
            bound = 2 * made[other] + 50
            if writes[side] > bound:
                failures.append(f"{writes[side]} writes to {side} for {made[other]} changes on {other}: a loop?")
        code, report = chaos.reconcile()
        summary["reconcile_exit"] = code
        if code != 0:
            failures.append(f"reconcile found drift: {json.dumps(report)[:1500]}")
        ids_after: dict[int, int] = {}
        dlq_after = chaos.dlq_counts(ids_after)
        dlq_new = {t: n - dlq_before.get(t, 0) for t, n in dlq_after.items() if n - dlq_before.get(t, 0)}
        failures += dlq_failures(ids_before, ids_after, chaos.tally.poison_sent, chaos.tally.poison_maybe)
        failures += [f"run: {e}" for e in chaos.tally.errors if not e.startswith("restart of")]
        summary.update(
            {
                "changes_made": dict(sorted(ops.items())),
                "changes_seconds": round(changes_s, 1),
                "faults": dict(sorted(chaos.tally.faults.items())),
                "faults_by_standins": chaos.injected_by_standins(),
                "poison": dict(chaos.tally.poison),
                "dlq_new": dlq_new,
                "dlq_duplicates": {t: n for t, n in chaos.dlq_duplicates.items() if n},
                "writes": writes,
                # requests per change: dualwrite's requests to a side (polls included) per change made on the other
                "requests": requests,
                "requests_per_change": {
                    side: round(requests[side]["requests"] / max(1, made[other]), 3)
                    for side, other in (("dataverse", "fo"), ("fo", "dataverse"))
                },
                "records": len(chaos.records),
                "wrong_records": len(wrong),
                "restarts_retried": sum(1 for e in chaos.tally.errors if e.startswith("restart of")),
            }
        )
    except Exception as exc:  # noqa: BLE001 - the run itself broke: a failure, with the seed
        failures.append(f"the run broke: {exc!r}")
    finally:
        chaos._stop.set()
        if chaos.extra_consumer is not None:
            chaos.extra_consumer.kill()
        stack.stop()
    summary["duration_s"] = round(time.monotonic() - t0, 1)
    summary["failures"] = failures
    (state_dir / "chaos-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print(summary)
    if failures:
        print(f"FAILED (seed {seed}; run again with --seed {seed})", flush=True)
        for f in failures:
            print(f"  - {f}", flush=True)
        return 1
    print(f"passed (seed {seed})", flush=True)
    return 0


_POISON_ID = re.compile(rb"^(?:chaos-)?poison-(\d+)$|chaos-poison-(\d+)")
NOT_POISON = -1


def poison_id(key: bytes | None, value: bytes | None) -> int:
    """The chaos poison id of a dead letter (its key, or the CorrelationId in a dead data event); -1: not poison."""
    for text in (key or b"", value or b""):
        match = _POISON_ID.search(text)
        if match:
            return int(match.group(1) or match.group(2))
    return NOT_POISON


def dlq_failures(before: dict[int, int], after: dict[int, int], sent: set[int], maybe: set[int]) -> list[str]:
    """What is wrong with the dead letters the run added: every poison acknowledged as sent is there exactly
    once, one whose outcome is unknown at most once, and nothing else is (no record that is not poison)."""
    new = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    out = []
    missing = sorted(sent - set(new))
    if missing:
        out.append(f"{len(missing)} poison record(s) acknowledged as sent are in no DLQ: ids {missing[:10]}")
    twice = sorted(k for k, n in new.items() if n > 1 and k != NOT_POISON)
    if twice:
        out.append(f"poison dead-lettered more than once (distinct records): ids {twice[:10]}")
    stray = sorted(k for k in new if k not in sent and k not in maybe and k != NOT_POISON)
    if stray:
        out.append(f"dead letters of poison ids never sent: {stray[:10]}")
    if new.get(NOT_POISON):
        out.append(f"{new[NOT_POISON]} dead letter(s) that are not poison: a good change was dead-lettered")
    return out


def _print(summary: dict[str, Any]) -> None:
    for k, v in summary.items():
        if k == "failures":
            continue
        print(f"{k:22} {json.dumps(v, default=str) if isinstance(v, dict | list) else v}", flush=True)
