"""``deploy/`` is valid, offline: no container engine or cluster runs here.

The Kubernetes manifests are validated against the Kubernetes JSON schemas that
``kubernetes-validate`` ships (strict: an unknown field is an error), the Compose file against the
Compose specification's schema (``tests/schemas/compose-spec.json``, from compose-spec/compose-spec,
Apache-2.0: ``tests/schemas/compose-spec.LICENSE``), nginx's configuration with ``nginx -t``, and
every ``nexus.toml`` with ``nexus config check``. The topology itself runs for real in
``tests/test_replicas_e2e.py`` (with ``deploy/nginx/nexus-proxy.conf``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from nexus_core.testing import FakeBackend
from nexus_server.testing import running_server
from tests.conftest import NEXUS, gateway_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
#: The oldest Kubernetes the manifests are meant for (autoscaling/v2 and policy/v1 are GA there).
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object ``kubectl apply -k deploy/kubernetes`` creates, by (kind, name)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in _documents(KUBERNETES / name):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _nexus_toml_of_configmap() -> str:
    text: str = _resources()[("ConfigMap", "nexus-config")]["data"]["nexus.toml"]
    return text


def _pod(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = resources[("Deployment", "nexus")]["spec"]["template"]["spec"]
    return spec


def test_every_manifest_is_applied_by_the_kustomization() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    resources = _resources()
    kinds = {kind for kind, _ in resources}
    assert {"ConfigMap", "Secret", "Deployment", "Service", "StatefulSet"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for doc in resources.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_manifest_with_a_mistake_is_refused() -> None:
    """The validator does catch what a typo would break (so the test above can fail)."""
    deployment = _resources()[("Deployment", "nexus")]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    unknown = json.loads(json.dumps(deployment))
    unknown["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_pods_probe_paths_that_exist_and_outlast_the_drain() -> None:
    resources = _resources()
    pod = _pod(resources)
    (container,) = pod["containers"]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    liveness = container["livenessProbe"]["httpGet"]["path"]
    assert (readiness, liveness) == ("/health/ready", "/health")
    # The paths answer on a real server: 200 with a healthy backend.
    backend = FakeBackend("a")
    with backend.running(), running_server(gateway_config(backend)) as server:
        for path in (readiness, liveness):
            assert httpx.get(server.base_url.removesuffix("/v1") + path).status_code == 200
    # Graceful termination: the preStop pause and then the whole drain fit in the grace period.
    config = tomllib.loads(_nexus_toml_of_configmap())
    drain = config["server"]["drain_timeout_seconds"]
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    # The port the probes use is the one Nexus listens on.
    assert container["ports"][0]["containerPort"] == config["server"]["port"]


def test_the_objects_refer_to_each_other() -> None:
    resources = _resources()
    deployment = resources[("Deployment", "nexus")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources[("Service", "nexus")]["spec"]["selector"].items() <= labels.items()
    pdb = resources[("PodDisruptionBudget", "nexus")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < deployment["spec"]["replicas"]
    hpa = resources[("HorizontalPodAutoscaler", "nexus")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nexus"}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] > pdb["minAvailable"]
    pod = _pod(resources)
    (container,) = pod["containers"]
    # CPU utilisation is measured against the request: without one the autoscaler does nothing.
    assert container["resources"]["requests"]["cpu"]
    assert pod["volumes"][0]["configMap"]["name"] == "nexus-config"
    assert container["envFrom"][0]["secretRef"]["name"] == "nexus-keys"
    secret = resources[("Secret", "nexus-keys")]["stringData"]
    config = tomllib.loads(_nexus_toml_of_configmap())
    environment = {e["name"]: e.get("value") for e in container["env"]} | secret
    assert config["state"]["redis_url_env"] in environment
    assert config["auth"]["admin_key_env"] in environment
    assert {k["key_env"] for k in config["auth"]["keys"]} <= environment.keys()
    # The admin API answers to the Service's name (clients in the cluster call it by it).
    assert resources[("Service", "nexus")]["metadata"]["name"] in config["server"]["allowed_hosts"]
    redis = resources[("StatefulSet", "redis")]["spec"]
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendfsync") + 1] == "always"


def _config_check(text: str, environment: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")} | environment
    result = subprocess.run(
        [NEXUS, "config", "check", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "in Redis ($NEXUS_REDIS_URL)" in result.stdout


def test_the_configmaps_nexus_toml_passes_config_check(tmp_path: Path) -> None:
    secrets = {"NEXUS_ADMIN_KEY": "admin", "NEXUS_TEAM_KEY": "team"}
    _config_check(
        _nexus_toml_of_configmap(), {"NEXUS_REDIS_URL": "redis://redis:6379/0", **secrets}, tmp_path
    )


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft7Validator)
    # The schema catches a mistake (a misspelt key).
    broken = json.loads(json.dumps(compose))
    broken["services"]["nexus"]["stop_grace_periods"] = "45s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)

    services = compose["services"]
    assert set(services) == {"nexus", "redis", "nginx"}
    nexus = services["nexus"]
    assert nexus["deploy"]["replicas"] == 3
    assert (DEPLOY / nexus["build"]["context"] / nexus["build"]["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendfsync") + 1] == "always"
    # The mounted nexus.toml passes `nexus config check`, with the variables compose sets.
    config = tomllib.loads((DEPLOY / "nexus.toml").read_text())
    environment = dict.fromkeys(nexus["environment"], "x") | {
        "NEXUS_REDIS_URL": nexus["environment"]["NEXUS_REDIS_URL"]
    }
    _config_check((DEPLOY / "nexus.toml").read_text(), environment, tmp_path)
    # Graceful stop outlasts the drain; nginx's fixed address is the trusted proxy.
    assert (
        int(nexus["stop_grace_period"].removesuffix("s"))
        > config["server"]["drain_timeout_seconds"]
    )
    nginx_address = services["nginx"]["networks"]["nexus"]["ipv4_address"]
    assert config["server"]["trusted_proxies"] == [nginx_address]


def test_the_nginx_configuration_is_valid() -> None:
    """``nginx -t`` on deploy/nginx/nginx.conf, in a prefix of its own, the upstream on loopback.

    The compose service name ``nexus`` does not resolve here: it is replaced with 127.0.0.1, and
    the files' absolute paths with the prefix; nothing else changes.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs nginx-light")
        pytest.skip("nginx is not installed")
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "server nexus:8000" in text
    assert "include /etc/nginx/nexus-proxy.conf;" in text
    with tempfile.TemporaryDirectory(prefix="nexus-nginx-check-") as directory:
        prefix = Path(directory)
        shutil.copyfile(DEPLOY / "nginx" / "nexus-proxy.conf", prefix / "nexus-proxy.conf")
        text = text.replace("server nexus:8000", "server 127.0.0.1:8000")
        text = re.sub("/etc/nginx/|/tmp/", f"{prefix}/", text)
        (prefix / "nginx.conf").write_text(text)
        result = subprocess.run(
            [binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr
        # And a broken one is refused (so the check above can fail).
        (prefix / "nexus-proxy.conf").write_text("proxy_next_upstream sometimes;\n")
        broken = subprocess.run(
            [binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert broken.returncode != 0
