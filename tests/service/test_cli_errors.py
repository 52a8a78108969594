"""Mistakes a user can make end with one clear line and a non-zero exit, never a stack trace."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from wiring.stack import Ports, local_config

pytestmark = pytest.mark.service


def dualwrite(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wiring.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def one_clear_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("dualwrite: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    ports = Ports(broker=1, registry=2, token=3, fo=4, dataverse=5, fo_events=6)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(local_config(ports)))
    return path


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_config_with_a_wrong_field_names_it(config_file: Path) -> None:
    raw = yaml.safe_load(config_file.read_text())
    raw["consumer"] = {"batch_sise": 10}
    config_file.write_text(yaml.safe_dump(raw))
    one_clear_line(dualwrite("run", "consumer", "--config", str(config_file)), "consumer.batch_sise")


def test_broker_that_is_not_there(config_file: Path) -> None:
    result = dualwrite("run", "consumer", "--config", str(config_file))
    one_clear_line(result, "no Kafka broker answered at 127.0.0.1:1")
    assert "rdkafka" not in result.stderr


def test_stand_in_port_taken(taken_port: int, tmp_path: Path) -> None:
    one_clear_line(dualwrite("standin", "fo", "--port", str(taken_port)), f"127.0.0.1:{taken_port}")
    result = dualwrite("up", "--state-dir", str(tmp_path / "s"), "--dataverse-port", str(taken_port))
    one_clear_line(result, f"--dataverse-port {taken_port}")


def test_missing_config_file(tmp_path: Path) -> None:
    one_clear_line(dualwrite("status", "--config", str(tmp_path / "nope.yaml")), "does not exist")
