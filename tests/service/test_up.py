"""`dualwrite up` as a user runs it: one command, every part reachable, SIGTERM stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from wiring.stack import eventually

pytestmark = pytest.mark.service


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_up_starts_everything_writes_stack_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / ".dualwrite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wiring.cli", "up", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    children: list[int] = []
    try:
        stack_file = state / "stack.json"
        eventually(stack_file.exists, timeout_s=90, interval_s=0.2, what="stack.json")
        urls = json.loads(stack_file.read_text())
        children = _children(proc.pid)
        assert len(children) == 8  # broker, 4 stand-ins, 2 producers, the consumer
        host, port = urls["kafka_bootstrap"].split(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert httpx.get(f"{urls['schema_registry']}/subjects").json()  # schemas registered at start-up
        for name, url in urls["metrics"].items():
            assert "dualwrite_" in httpx.get(url).text, name
        token = httpx.post(
            urls["token_endpoint"],
            data={
                "grant_type": "client_credentials",
                "client_id": "demo-user",
                "client_secret": "demo-secret",
                "scope": "api://x/.default",
            },
        ).json()["access_token"]
        dv = httpx.Client(base_url=urls["dataverse"], headers={"Authorization": f"Bearer {token}"})
        eventually(
            lambda: len(dv.get("accounts", params={"$select": "accountnumber"}).json()["value"]) >= 50,
            timeout_s=60,
            interval_s=0.2,
            what="the seeded customers in Dataverse",
        )
        status = subprocess.run(
            [sys.executable, "-m", "wiring.cli", "status"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert status.returncode == 0 and "customers" in status.stdout, status.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "dualwrite is up" in out and "dualwrite stopped." in out
    time.sleep(0.5)
    assert [c for c in children if _alive(c)] == []
