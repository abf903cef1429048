"""Debian's `prometheus` on a loopback port, for tests that evaluate PromQL for real.

    with running_prometheus(config_yaml, tmp_path) as prometheus:
        prometheus.query("up")                    # the API's result list

The config is written to `tmp_path`; the TSDB lives there too. The server is stopped (SIGTERM,
then SIGKILL) when the block ends.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mas_stream.startup import free_port
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

DEPLOY = ROOT / "deploy"
# A comparison with a number, not part of =~ or !~: where `bool` goes to make a filter a 0/1 value.
_COMPARISON = re.compile(r"(?<![=!<>~])(>=|<=|==|!=|>|<)(?![=~])\s*(?=-?\d)")


def require(binary: str) -> str:
    """The binary's path, or the test is skipped naming how to get it."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(
            f"{binary} not installed: apt-get install prometheus (make setup does, as root)"
        )
    return path


def measured(expr: str) -> str:
    """The expression with every threshold comparison turned into a 0/1 value (`> bool 0.5`):
    it returns a series wherever the alert has data to decide on, firing or not."""
    return _COMPARISON.sub(lambda match: f"{match[1]} bool ", expr)


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def local_config(ports: dict[str, int], interval: str = "1s") -> str:
    """deploy/prometheus.yml with each job's DNS names replaced by the loopback port of the
    process it scrapes (by job name), a short interval, and the rules file by absolute path."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return yaml.safe_dump(config)


@dataclass(frozen=True)
class Prometheus:
    url: str
    config: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query's result; raises with Prometheus's error when it does not parse."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return list(body["data"]["result"])

    def rules(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]


@contextmanager
def running_prometheus(config: str, tmp_path: Path) -> Iterator[Prometheus]:
    binary = require("prometheus")
    path = tmp_path / "prometheus.yml"
    path.write_text(config)
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, "prometheus exited; see its log above"
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        yield Prometheus(url, path)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
