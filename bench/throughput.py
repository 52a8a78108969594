"""Throughput at the limits: every figure a ratio to a ceiling measured in the same run.

The stand-ins, the broker and the components run as their own processes (`LocalStack(processes=True)`).

- ceiling A: broker pass-through of the same Avro records (produce, then consume and decode; no target);
- ceiling B: each target stand-in's own bulk write rate from a direct client (no Kafka): Dataverse
  `CreateMultiple` of 1,000 accounts per call, F&O `$batch` of 200 customer POSTs per call;
- live sync each direction: new customers' change events published to the map topic at an offered
  load (100/s, 1,000/s, then as fast as the broker takes them), applied by the consumer process and
  seen in the target: records/s against min(A, B), p50/p99 change-to-visible (publish to the row
  being in the target's database, watched every 20 ms), target requests per record (every request the
  target stand-in answered meanwhile: only dualwrite's components call it then).

- throttled: F&O -> Dataverse as fast as possible against the Dataverse stand-in enforcing the
  documented per-user limits (requests, combined execution time with a cost per record, concurrency),
  scaled down in time: records/s against the rate those limits allow, with records lost, dead-lettered
  and the 429s met (a stack of its own, see `throttled`).

The events enter at the map topic (as both producers publish them), so the producers' own paths (F&O
data events, change-tracking polls) are not part of these figures. In the live runs the Dataverse
stand-in's limits are raised out of the way (bench/soak.py and the throttled run measure against them).

    .venv/bin/python bench/throughput.py                 # about 6 minutes
    .venv/bin/python bench/throughput.py --only throttled --op-cost-ms 20 --throttled-window-s 30
    .venv/bin/python bench/throughput.py --json throughput.json --seconds 10 --max-records 20000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import NewTopic

import schemas
from dualwrite import kafka, odata, registry
from dualwrite.dataverse import MAX_BULK, DataverseClient, LookupCache
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.publish import Publisher
from dualwrite.rows import resolve_lookups, select_columns, snapshot_event, source_row
from dualwrite.tablemap import TableMap
from standins import seed
from standins.token import DEFAULT_SIGNING_KEY, issue_token
from wiring.reconcile import dead_lettered_keys
from wiring.stack import CLIENT_ID, TENANT, LocalStack, eventually

COMPANY = "usmf"
LOADS = (100.0, 1000.0)


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


# -- events ------------------------------------------------------------------------------------------------
class Events:
    """New customers' change events of either side, made the way the producers make them."""

    def __init__(self, stack: LocalStack) -> None:
        self.m: TableMap = stack.maps["customers"]
        self.pub = {side: Publisher(stack.cfg, side, {"customers": self.m}) for side in ("fo", "dataverse")}
        client = DataverseClient(stack.cfg.dataverse)
        try:
            fields = list(schemas.record_fields("dataverse", "accounts", stack.cfg.schemas_dir))
            flt = f"accountnumber eq 'US-001' and _msdyn_company_value eq {LookupCache(client).company_id(COMPANY)}"
            rows = list(client.query("accounts", flt, select_columns(self.m, fields)))
            after = source_row(fields, rows[0], resolve_lookups(LookupCache(client), self.m, rows))
        finally:
            client.close()
        self.dv_template = self.pub["dataverse"].coerce("accounts", after)

    def make(self, side: str, prefix: str, n: int) -> list[ChangeEvent]:
        out = []
        for i in range(n):
            number = f"{prefix}{i:06d}"
            if side == "fo":
                raw = {**seed._customer(COMPANY, 1 + i % 25), "CustomerAccount": number, "OrganizationName": f"T {i}"}
                ev = snapshot_event(self.pub["fo"], self.m, raw, [COMPANY])
                assert ev is not None
                out.append(replace(ev, op=Op.CREATE))
            else:
                after = {**self.dv_template, "accountnumber": number, "name": f"T {i}"}
                out.append(
                    ChangeEvent(
                        Op.CREATE,
                        "accounts",
                        COMPANY,
                        record_key(COMPANY, [number]),
                        datetime.now(UTC),
                        Origin(Side.DATAVERSE, False, None),
                        after,
                        source_id=str(uuid.uuid4()),
                    )
                )
        return out

    def close(self) -> None:
        for p in self.pub.values():
            p.close()


# -- watching the target's database -------------------------------------------------------------------------
class Watch:
    """First time each key with `prefix` is in the target's table (read-only, by rowid, every 20 ms)."""

    def __init__(self, db: str, table: str, column: str, prefix: str) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        self.sql = f'SELECT "__rowid", "{column}" FROM "{table}" WHERE "__rowid" > ? ORDER BY "__rowid"'
        self.prefix = prefix
        self.seen: dict[str, float] = {}
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.conn.execute(self.sql, (self.last,)).fetchall()
            now = time.perf_counter()
            for rowid, key in rows:
                self.last = max(self.last, rowid)
                if isinstance(key, str) and key.startswith(self.prefix):
                    self.seen.setdefault(key, now)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


# -- ceilings ------------------------------------------------------------------------------------------------
def ceiling_a(stack: LocalStack, events: Events, side: str, n: int) -> float:
    """Records/s to produce the same Avro records to a topic of the map's partitions and consume them back."""
    cfg = stack.cfg.kafka
    m = events.m
    topic = f"bench.ceiling-a.{side}.{uuid.uuid4().hex[:6]}"
    source = kafka.map_topics(cfg.topic_prefix, m)[side]
    admin = kafka.admin(cfg)
    parts = len(admin.list_topics(source, timeout=10).topics[source].partitions)
    for f in admin.create_topics([NewTopic(topic, parts, 1)]).values():
        f.result(15)
    serializer = events.pub[side].serializers[m.fo.entity_set if side == "fo" else "accounts"]
    evs = events.make(side, f"A{side[0].upper()}-", n)
    producer = kafka.producer(cfg)
    consumer = kafka.consumer(cfg, f"bench-{topic}")
    deserialize = registry.EventDeserializer(registry.client(stack.cfg.schema_registry))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])  # no group join timed
    start = time.perf_counter()
    for ev in evs:
        producer.produce(topic, key=ev.key.lower().encode(), value=serializer(source, ev.to_avro()))
        producer.poll(0)
    producer.flush(30)
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.2):
            if msg.error() is None:
                deserialize(topic, msg.value())
                got += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return got / elapsed


def ceiling_b_dataverse(stack: LocalStack, n: int) -> float:
    """Accounts/s by CreateMultiple (1,000 per call) from a client of its own, no Kafka."""
    url = stack.servers["dataverse"].url
    bearer = issue_token("bench-bulk", url, TENANT, DEFAULT_SIGNING_KEY)
    with httpx.Client(base_url=f"{url}/api/data/v9.2/", headers={"Authorization": f"Bearer {bearer}"}) as c:
        cid = c.get("cdm_companies", params={"$filter": f"cdm_companycode eq '{COMPANY}'"}).json()["value"][0]
        bind = f"/cdm_companies({cid['cdm_companyid']})"
        start = time.perf_counter()
        for s in range(0, n, 1000):
            targets = [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.account",
                    "accountnumber": f"BD-{i:06d}",
                    "name": f"B {i}",
                    "msdyn_company@odata.bind": bind,
                    "customertypecode": 1,  # outside the map's source filter (3): not synced to F&O meanwhile
                }
                for i in range(s, min(n, s + 1000))
            ]
            r = c.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}, timeout=120)
            r.raise_for_status()
        return n / (time.perf_counter() - start)


def ceiling_b_fo(stack: LocalStack, n: int) -> float:
    """Customers/s by $batch of 200 POSTs (what F&O offers for many writes), no Kafka."""
    url = stack.servers["fo"].url
    bearer = issue_token("bench-bulk", url, TENANT, DEFAULT_SIGNING_KEY)
    with httpx.Client(headers={"Authorization": f"Bearer {bearer}"}, timeout=120) as c:
        start = time.perf_counter()
        for s in range(0, n, 200):
            batch = [
                odata.BatchPart(
                    "POST", "CustomersV3", {**seed._customer(COMPANY, 1 + i % 25), "CustomerAccount": f"BF-{i:06d}"}
                )
                for i in range(s, min(n, s + 200))
            ]
            ctype, payload = odata.build_batch(batch, "/data", atomic_each=False)
            r = c.post(f"{url}/data/$batch", content=payload, headers={"Content-Type": ctype})
            assert r.status_code < 300, r.text[:300]
        return n / (time.perf_counter() - start)


# -- live sync ------------------------------------------------------------------------------------------------
def publish_watched(
    stack: LocalStack, events: Events, side: str, rate: float | None, n: int, tag: str, timeout_s: float = 120.0
) -> tuple[float, dict[str, float], dict[str, float], int]:
    """Publish `n` new customers' events of `side` at `rate` per second (None: as fast as acknowledged) and
    wait until all are in the target: (start, publish time per key, first-seen time per key, target requests)."""
    towards = "dataverse" if side == "fo" else "fo"
    prefix = f"L{tag}-"
    evs = events.make(side, prefix, n)
    table, col = ("accounts", "accountnumber") if towards == "dataverse" else ("CustomersV3", "CustomerAccount")
    watch = Watch(stack.settings[towards]["db_path"], table, col, prefix)
    before = stack.stats(towards)["requests"]  # only dualwrite's components call the target meanwhile
    sent: dict[str, float] = {}
    chunk = 500 if rate is None else max(1, int(rate / 100))  # 10 ms worth of events per publish
    start = time.perf_counter()
    for i in range(0, n, chunk):
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        group = evs[i : i + chunk]
        t = time.perf_counter()
        events.pub[side].publish(group)
        for ev in group:
            sent[ev.key.split("|", 1)[1]] = t
    try:
        eventually(lambda: len(watch.seen) >= n, timeout_s=timeout_s, interval_s=0.1, what=f"{n} rows in {towards}")
    finally:
        watch.stop()
    return start, sent, watch.seen, stack.stats(towards)["requests"] - before


def live(stack: LocalStack, events: Events, side: str, rate: float | None, n: int, tag: str) -> dict[str, Any]:
    """Records/s, p50/p99 change-to-visible and target requests per record of `n` changes offered at `rate`."""
    start, sent, seen, requests = publish_watched(stack, events, side, rate, n, tag)
    offered_s = max(sent.values()) - start
    lat = [seen[k] - t for k, t in sent.items() if k in seen]
    span = max(seen.values()) - start
    return {
        "offered_per_s": rate if rate is not None else round(n / max(offered_s, 1e-3)),
        "records": n,
        "records_per_s": round(n / span, 1),
        "p50_ms": round(_pct(lat, 0.5) * 1000),
        "p99_ms": round(_pct(lat, 0.99) * 1000),
        "target_requests_per_record": round(requests / n, 4),
    }


def _seed_synced(stack: LocalStack) -> None:
    with stack.user_client("dataverse", "bench-watcher") as dv:
        eventually(
            lambda: dv.get("accounts", params={"$filter": "accountnumber eq 'US-001'"}).json()["value"],
            timeout_s=120, interval_s=0.5, what="the seed synced",
        )  # fmt: skip
    stack.settle(120)


def run(seconds: float, max_records: int, ceiling_records: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp),
            processes=True,
            dataverse_settings={"max_requests": 10**7},
            dataverse={"budget": {"requests": 10**7}},
        )
        try:
            _seed_synced(stack)
            events = Events(stack)
            try:
                return _measure(stack, events, seconds, max_records, ceiling_records)
            finally:
                events.close()
        finally:
            stack.stop()


def _measure(
    stack: LocalStack, events: Events, seconds: float, max_records: int, ceiling_records: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"ceiling_a": {}, "ceiling_b": {}}
    for side in ("fo", "dataverse"):
        out["ceiling_a"][side] = round(ceiling_a(stack, events, side, ceiling_records), 1)
    live_runs: dict[str, list[dict[str, Any]]] = {}
    for side in ("fo", "dataverse"):
        runs = []
        for k, rate in enumerate([*LOADS, None]):
            n = max_records if rate is None else int(rate * seconds)
            runs.append(live(stack, events, side, rate, n, f"{side[0]}{k}"))
            for _ in range(2):  # the echoes of these writes (change tracking, data events) applied before the next run
                time.sleep(2)
                stack.settle(180)
        live_runs[side] = runs
    # Last: the rows written here are changes the stack then syncs, which would load the live runs.
    out["ceiling_b"]["dataverse"] = round(ceiling_b_dataverse(stack, ceiling_records), 1)
    out["ceiling_b"]["fo"] = round(ceiling_b_fo(stack, ceiling_records), 1)
    for side, towards in (("fo", "dataverse"), ("dataverse", "fo")):
        name = f"{side}_to_{towards}"
        ceiling = min(out["ceiling_a"][side], out["ceiling_b"][towards])
        runs = live_runs[side]
        for r in runs:
            r["ratio_to_ceiling"] = round(r["records_per_s"] / ceiling, 3)
        at_max = runs[-1]
        out[name] = {
            "ceiling": ceiling,
            "runs": runs,
            "ratio_to_ceiling": at_max["ratio_to_ceiling"],
            "p99_ms_at_1000": runs[1]["p99_ms"],
        }
    return out


# -- against the service-protection limits -------------------------------------------------------------------
def throttled(window_s: float, cost_ms: float, windows: int) -> dict[str, Any]:
    """F&O -> Dataverse against the Dataverse stand-in enforcing the documented per-user limits scaled to a
    `window_s` window (6,000 requests and 1,200,000 ms of execution per 300 s, same rates; 52 concurrent),
    each created record charged `cost_ms` of execution time. The limit-allowed rate is the lower of the
    execution time per second over `cost_ms` and the requests per second times the records one
    CreateMultiple carries. The first window is the limit's burst (an empty window takes a whole window's
    worth at once), so records/s is measured over the `windows` windows after it, while the backlog lasts;
    the components (one application user, default shares) start `window_s` before, their start-up out of
    the window."""
    scale = window_s / 300
    max_requests = max(1, round(6000 * scale))
    max_execution_ms = 1_200_000 * scale
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.start(
            Path(tmp),
            processes=True,
            dataverse_settings={
                "window_s": window_s,
                "max_requests": max_requests,
                "max_execution_ms": max_execution_ms,
                "operation_cost_ms": cost_ms,
            },
            dataverse={"budget": {"requests": max_requests, "window_s": window_s}},
        )
        try:
            _seed_synced(stack)
            per_request = min(MAX_BULK, stack.cfg.consumer.batch_size)
            allowed = min(max_execution_ms / window_s / cost_ms, max_requests / window_s * per_request)
            # The limit is checked before a request and charged after it: a window may end one request's
            # charge over the limit, so the stand-in lets at most this through in the long run.
            upper = (max_execution_ms + cost_ms * per_request) / window_s / cost_ms
            n = int(max_execution_ms / cost_ms + allowed * (windows + 1.5) * window_s)
            time.sleep(window_s)
            events = Events(stack)
            try:
                before = stack.stats("dataverse")
                start, _, seen, requests = publish_watched(
                    stack, events, "fo", None, n, "thr", timeout_s=3 * n / allowed + 120
                )
                after = stack.stats("dataverse")
            finally:
                events.close()
            # (the backlog lasts beyond t1 unless the sync beat the limit: then measured up to its end)
            t0, t1 = start + window_s, min(start + (windows + 1) * window_s, max(seen.values()))
            steady = sum(1 for t in seen.values() if t0 < t <= t1) / (t1 - t0)
            topic = kafka.map_topics(stack.cfg.kafka.topic_prefix, events.m)["fo"]
            dead = {k for k in dead_lettered_keys(stack.cfg, [topic]) if "lthr-" in k}
            user = CLIENT_ID
            executed = after.get("executed_ms", {}).get(user, 0.0) - before.get("executed_ms", {}).get(user, 0.0)
            span = max(seen.values()) - start
            return {
                "window_s": window_s,
                "max_requests": max_requests,
                "max_execution_ms": max_execution_ms,
                "operation_cost_ms": cost_ms,
                "allowed_per_s": round(allowed, 1),
                "allowed_with_overshoot_per_s": round(upper, 1),
                "records": n,
                "records_per_s": round(steady, 1),
                "ratio_to_allowed": round(steady / allowed, 3),
                "lost": n - len(seen),
                "dead_lettered": len(dead),
                "throttled_429s": after["throttled"].get(user, 0) - before["throttled"].get(user, 0),
                "target_requests_per_record": round(requests / n, 4),
                # of the most the limit lets through over the run: a window's worth at once, then its rate
                "execution_used": round(executed / (max_execution_ms * (1 + span / window_s)), 3),
            }
        finally:
            stack.stop()


def table(out: dict[str, Any]) -> str:
    lines: list[str] = []
    if "ceiling_a" in out:
        lines += [
            "ceiling A (broker pass-through, records/s): " + ", ".join(f"{s} {v}" for s, v in out["ceiling_a"].items()),
            "ceiling B (target bulk writes, records/s):  " + ", ".join(f"{s} {v}" for s, v in out["ceiling_b"].items()),
            "",
            f"{'direction':20} {'offered/s':>9} {'records/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'req/rec':>8}",
        ]
        for name in ("fo_to_dataverse", "dataverse_to_fo"):
            for r in out[name]["runs"]:
                lines.append(
                    f"{name:20} {r['offered_per_s']:>9} {r['records_per_s']:>9} {r['ratio_to_ceiling']:>6} "
                    f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r['target_requests_per_record']:>8}"
                )
            lines.append(f"{'':20} ceiling min(A, B) = {out[name]['ceiling']}")
    if "throttled" in out:
        t = out["throttled"]
        lines += [
            "",
            f"throttled F&O->Dataverse (limits per {t['window_s']:g} s: {t['max_requests']} requests, "
            f"{t['max_execution_ms']:,.0f} ms execution, {t['operation_cost_ms']:g} ms per record):",
            f"  allowed {t['allowed_per_s']} records/s (at most {t['allowed_with_overshoot_per_s']} with one "
            "request's overshoot per window);",
            f"  measured {t['records_per_s']} records/s "
            f"(ratio {t['ratio_to_allowed']}); {t['records']} records, lost {t['lost']}, "
            f"dead-lettered {t['dead_lettered']}, 429s {t['throttled_429s']}, "
            f"requests/record {t['target_requests_per_record']}, execution limit used {t['execution_used']}",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("all", "live", "throttled"), default="all")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the 100/s and 1,000/s runs")
    ap.add_argument("--max-records", type=int, default=5000, help="records of the as-fast-as-possible run")
    ap.add_argument("--ceiling-records", type=int, default=10000)
    ap.add_argument("--throttled-window-s", type=float, default=30.0, help="the limits' window, scaled from 300 s")
    ap.add_argument("--op-cost-ms", type=float, default=20.0, help="execution time charged per record written")
    ap.add_argument("--throttled-windows", type=int, default=3, help="windows measured after the burst one")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if args.only in ("all", "live"):
        out.update(run(args.seconds, args.max_records, args.ceiling_records))
    if args.only in ("all", "throttled"):
        out["throttled"] = throttled(args.throttled_window_s, args.op_cost_ms, args.throttled_windows)
    print(table(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
