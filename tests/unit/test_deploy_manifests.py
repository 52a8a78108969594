"""deploy/ against the code it deploys: the components `wiring.components.NAMES` holds, Strimzi's v1 API, the topic
settings, the overlays' configs, and the generated files. `bash deploy/check` runs the real validators on top."""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dualwrite.config import load_config
from wiring.components import NAMES

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.parent for p in (DEPLOY / "kubernetes" / "overlays").glob("*/kustomization.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_strimzi_resource_uses_the_v1_api() -> None:
    resources = docs(DEPLOY / "strimzi" / "topics.yaml") + docs(DEPLOY / "strimzi" / "user.yaml")
    assert resources and {r["apiVersion"] for r in resources} == {"kafka.strimzi.io/v1"}


def test_status_topic_forgets_gone_pods_and_state_topic_is_co_partitioned() -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs(DEPLOY / "strimzi" / "topics.yaml")}
    status = topics["dualwrite.status"]["config"]
    assert status["cleanup.policy"] == "compact,delete" and status["retention.ms"] > 0
    assert topics["dualwrite.state"]["partitions"] == topics["dualwrite.fo.customersv3"]["partitions"]
    assert all(t["replicas"] == 3 and t["config"]["min.insync.replicas"] == 2 for t in topics.values())


def test_generator_takes_prefix_namespace_and_cluster(tmp_path: Path) -> None:
    module = runpy.run_path(str(DEPLOY / "strimzi" / "generate_topics.py"))
    out = tmp_path / "topics.yaml"
    assert (
        module["main"](["--prefix", "acme", "--namespace", "kafka-prod", "--cluster", "prod", "--out", str(out)]) == 0
    )
    generated = docs(out)
    assert {d["metadata"]["namespace"] for d in generated} == {"kafka-prod"}
    assert {d["metadata"]["labels"]["strimzi.io/cluster"] for d in generated} == {"prod"}
    assert all(d["spec"]["topicName"].startswith("acme.") for d in generated)
    assert "acme.state" in {d["spec"]["topicName"] for d in generated}


def test_the_kafka_user_has_only_the_acls_dualwrite_uses() -> None:
    [user] = docs(DEPLOY / "strimzi" / "user.yaml")
    acls = {
        (a["resource"]["type"], a["resource"].get("name")): set(a["operations"])
        for a in user["spec"]["authorization"]["acls"]
    }
    assert acls == {
        ("topic", "dualwrite."): {"Describe", "Read", "Write"},
        ("group", "dualwrite."): {"Describe", "Read"},
    }


def test_prometheus_rule_is_generated_from_the_rules_file_and_every_alert_has_a_runbook() -> None:
    assert runpy.run_path(str(DEPLOY / "prometheus" / "generate_rule.py"))["main"](["--check"]) == 0
    checks = runpy.run_path(str(DEPLOY / "checks.py"))
    assert checks["check_runbooks"]() == []
    alerts = [
        r["alert"]
        for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    tests = (DEPLOY / "prometheus" / "tests.yml").read_text()
    assert [a for a in alerts if f"alertname: {a}\n" not in tests] == [], "every alert has a promtool unit test"


def test_component_absent_alert_names_every_component() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"][0]["rules"]
    [absent] = [r for r in rules if r.get("alert") == "DualwriteComponentAbsent"]
    assert all(f'absent(up{{job="dualwrite-{name}-metrics"}})' in absent["expr"] for name in NAMES)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_config_is_a_valid_dualwrite_config(overlay: Path) -> None:
    config = overlay / "config.yaml"
    if not config.exists():
        pytest.skip("an overlay of an overlay (its config is the parent's)")
    env = {"DUALWRITE__FO__AUTH__CLIENT_SECRET": "x", "DUALWRITE__DATAVERSE__AUTH__CLIENT_SECRET": "x"}
    cfg = load_config(config, env)
    assert cfg.consumer.state_dir == Path("/var/lib/dualwrite/state")
    assert cfg.fo.auth.token_url is None and cfg.fo.auth.tenant_id, "production talks to Entra through azure-identity"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl for kubectl kustomize")
@pytest.mark.parametrize("overlay", ["prod", "dev", "prod-initial-sync"])
def test_overlay_deploys_exactly_the_components_with_a_hashed_config(overlay: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    deployments = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Deployment"}
    assert sorted(deployments) == sorted(f"dualwrite-{n}" for n in NAMES)
    [config] = [
        d["metadata"]["name"] for d in objects if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})
    ]
    assert config.startswith("dualwrite-config-"), "configMapGenerator's hash rolls the pods on a change"
    for name in NAMES:
        pod = deployments[f"dualwrite-{name}"]["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"][:2] == ["run", name]
        assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {config}
    pdbs = {d["metadata"]["name"]: d["spec"] for d in objects if d["kind"] == "PodDisruptionBudget"}
    assert all(spec == {"maxUnavailable": 1, "selector": spec["selector"]} for spec in pdbs.values()) and len(
        pdbs
    ) == len(NAMES)
    services = {d["metadata"]["name"] for d in objects if d["kind"] == "Service"}
    assert {f"dualwrite-{n}-metrics" for n in NAMES} <= services
    if overlay.startswith("prod"):
        pods = [d["spec"]["template"] for d in deployments.values()]
        assert all(p["metadata"]["labels"]["azure.workload.identity/use"] == "true" for p in pods)
        [sa] = [d for d in objects if d["kind"] == "ServiceAccount"]
        assert "azure.workload.identity/client-id" in sa["metadata"]["annotations"]
    if overlay.endswith("initial-sync"):
        [job] = [d for d in objects if d["kind"] == "Job"]
        assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["sync", "initial"]
