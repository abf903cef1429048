"""deploy/k8s/ validated with kubernetes-validate's bundled schemas (strict, with every proxy
pointed at a closed port so a download would fail), and what the manifests must say: each part
runs a real `mas-stream` subcommand, the API is probed on /healthz and /readyz and scaled by an
HPA, the workers are probed and scraped on their metrics ports, every part mounts the artifact
claim at MAS_DATA_DIR, only the API reads the admin token Secret, and REDIS_URL names the Redis
Service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from mas_stream.cli import COMMANDS
from mas_stream.probe import TARGETS
from tests.support.paths import ROOT

K8S = ROOT / "deploy" / "k8s"
OFFLINE = {variable: "http://127.0.0.1:9" for variable in ("HTTP_PROXY", "HTTPS_PROXY")}


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    found = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("kubernetes-validate not installed: pip install kubernetes-validate (dev)")
    return subprocess.run(
        [found, "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **OFFLINE, **{key.lower(): value for key, value in OFFLINE.items()}},
    )


def _manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (document["kind"], document["metadata"]["name"]): document
        for path in _manifests()
        for document in yaml.safe_load_all(path.read_text())
        if document
    }


def _container(kind: str, name: str) -> dict[str, Any]:
    (container,) = _resources()[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


ROLES = {"mas-api": "api", "mas-importance": "importance", "mas-trainer": "trainer"}


def test_every_manifest_is_valid_kubernetes_offline() -> None:
    checked = _validate(_manifests())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("passed") == len(_resources())


def test_a_misspelt_field_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "api.yaml"
    broken.write_text((K8S / "api.yaml").read_text().replace("readinessProbe:", "readynessProbe:"))
    checked = _validate([broken])
    assert checked.returncode != 0
    assert "readynessProbe" in checked.stdout + checked.stderr


def test_each_part_runs_a_real_subcommand_and_is_probed_where_it_listens() -> None:
    for deployment, role in ROLES.items():
        container = _container("Deployment", deployment)
        program, *arguments = container["command"]
        assert program == "mas-stream"
        module, _ = COMMANDS[tuple(arguments)]
        assert module == ("service.main" if role == "api" else f"worker.{role}"), arguments
        variable, default, path = TARGETS[role]
        port = int(_env(container).get(variable, {}).get("value", default))
        (declared,) = container["ports"]
        assert declared["containerPort"] == port, deployment
        annotations = _resources()[("Deployment", deployment)]["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port
        assert container["livenessProbe"]["httpGet"] == {"path": path, "port": declared["name"]}


def test_the_api_is_ready_on_readyz_and_scaled_by_an_hpa() -> None:
    api = _container("Deployment", "mas-api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = _resources()[("HorizontalPodAutoscaler", "mas-api")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mas-api",
    }
    assert "cpu" in api["resources"]["requests"], "the HPA's utilisation needs a CPU request"
    # Before the first model no replica is ready: uploads go through a Service that ignores it.
    assert _resources()[("Service", "mas-api-admin")]["spec"]["publishNotReadyAddresses"]


def test_only_the_api_reads_the_admin_token_secret() -> None:
    secret = _resources()[("Secret", "mas-stream-admin")]
    readers = {
        deployment
        for deployment in ROLES
        if "MAS_ADMIN_TOKEN" in _env(_container("Deployment", deployment))
    }
    assert readers == {"mas-api"}
    reference = _env(_container("Deployment", "mas-api"))["MAS_ADMIN_TOKEN"]["valueFrom"]
    assert reference["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert reference["secretKeyRef"]["key"] in secret["stringData"]


def test_every_part_mounts_the_artifact_claim_at_the_data_dir_and_finds_redis() -> None:
    resources = _resources()
    config = resources[("ConfigMap", "mas-stream")]["data"]
    claim = resources[("PersistentVolumeClaim", "mas-artifacts")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for deployment in ROLES:
        pod = resources[("Deployment", deployment)]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "mas-stream"}}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert mounts[config["MAS_DATA_DIR"]]["persistentVolumeClaim"]["claimName"] == (
            "mas-artifacts"
        )
        assert pod["securityContext"]["runAsUser"] == 10001
    redis = urlparse(config["REDIS_URL"])
    service = resources[("Service", redis.hostname or "")]
    assert service["spec"]["ports"][0]["port"] == redis.port
    assert ("StatefulSet", redis.hostname) in resources
