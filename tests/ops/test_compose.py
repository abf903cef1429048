"""docker-compose.yml against the Compose Specification's schema (check-jsonschema's vendored
copy, no network) and the rules of the stack: only the API holds the admin token, Prometheus and
Grafana keep their data in volumes, Grafana's password comes from the environment and anonymous
access is off unless asked for, and Prometheus gets its rules file beside its config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            "check-jsonschema not installed: pip install check-jsonschema (a dev dependency)"
        )
    return subprocess.run(
        [found, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = _check_jsonschema(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    checked = _check_jsonschema(broken)
    assert checked.returncode != 0
    assert "healthchek" in checked.stdout + checked.stderr


def test_only_the_api_gets_the_admin_token() -> None:
    holders = {
        name
        for name, service in _services().items()
        if "MAS_ADMIN_TOKEN" in (service.get("environment") or {})
    }
    assert holders == {"api"}
    for worker in ("importance", "trainer"):
        assert "REDIS_URL" in _services()[worker]["environment"], worker


def _named_volume(service: dict[str, Any], target: str) -> str:
    mounts = {mount.split(":")[1]: mount.split(":")[0] for mount in service["volumes"]}
    source = mounts[target]
    assert not source.startswith("."), f"{target} is a bind mount: {source}"
    return source


def test_prometheus_and_grafana_keep_their_data_in_volumes() -> None:
    declared = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    services = _services()
    assert _named_volume(services["prometheus"], "/prometheus") in declared
    assert _named_volume(services["grafana"], "/var/lib/grafana") in declared
    assert "--storage.tsdb.path=/prometheus" in services["prometheus"]["command"]


def test_grafana_takes_its_password_from_the_environment_and_is_closed_by_default() -> None:
    environment = _services()["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS:-false}"


def test_prometheus_finds_the_rules_file_its_config_names() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    mounts = dict(
        (target, source)
        for source, target, *_ in (m.split(":") for m in _services()["prometheus"]["volumes"])
    )
    config_dir = Path("/etc/prometheus")
    assert mounts[str(config_dir / "prometheus.yml")] == "./deploy/prometheus.yml"
    for rules in config["rule_files"]:
        assert (ROOT / "deploy" / rules).is_file(), rules
        assert mounts[str(config_dir / rules)] == f"./deploy/{rules}"
