"""The dashboard and the alert rules in a real Prometheus, scraping a real `mas-stream serve`.

The service (API, importance worker, trainer, embedded Redis) learns a first task, serves
traffic through /v1/predict and OIP, learns one new task and serves again; Prometheus scrapes
its three processes every second with deploy/prometheus.yml's jobs and loads deploy/alerts.yml.
Then every dashboard query and every alert expression is evaluated through the HTTP API: each
parses and returns data (an alert's thresholds turned into `bool`, so that it has data whether
it fires or not). `promtool` checks the shipped config and rules.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.demo import serve
from mas_stream.records.job import JobParams, JobStatus
from mas_stream.startup import free_port
from tests.e2e.test_dashboard import DASHBOARD, _panels
from tests.ops.prometheus import (
    DEPLOY,
    Prometheus,
    alert_rules,
    local_config,
    measured,
    require,
    running_prometheus,
)
from tests.support.waiting import wait_until

# Small and quick: one epoch, Ω from traffic after 50 rows, half the rows sampled (so both
# forwarded and sampled-out rows exist), every version activated (drift needs the second one).
SERVICE_ENV = {
    "MAS_EPOCHS": "1",
    "MAS_HIDDEN": "[32]",
    "MAS_MIN_TRAFFIC_SAMPLES": "50",
    "MAS_SAMPLE_RATE": "0.5",
    "MAS_RETENTION_MAX_DROP": "1",
    "MAS_MODEL_POLL_SECONDS": "1",
    "MAS_DEVICE": "cpu",
}
ROWS_PER_VERSION = 240


def _dashboard_queries() -> list[str]:
    panels = _panels(json.loads(DASHBOARD.read_text())["panels"])
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def _serve_traffic(client: ServiceClient, tasks: dict[str, np.ndarray]) -> None:
    """ROWS_PER_VERSION rows over the learned tasks through /v1/predict, and one OIP request."""
    for name, x in tasks.items():
        rows = np.resize(x, (ROWS_PER_VERSION // len(tasks), x.shape[1]))
        for start in range(0, len(rows), 20):
            client.predict(name, rows[start : start + 20])
    name, x = next(iter(tasks.items()))
    body = {
        "inputs": [
            {"name": "input", "shape": [4, 64], "datatype": "FP32", "data": x[:4].ravel().tolist()}
        ],
        "parameters": {"task": name},
    }
    assert client.http.post("/v2/models/mas/infer", json=body).status_code == 200


def _counted(client: ServiceClient, version: int) -> int:
    counts = {entry["version"]: entry["samples"] for entry in client.importance()["versions"]}
    return int(counts.get(version, 0))


def _learn(client: ServiceClient, name: str, x: np.ndarray, y: np.ndarray) -> int:
    job = client.submit_task(name, x, y, JobParams(epochs=1))
    finished = client.wait_for_job(job["job_id"], timeout=120)
    assert finished.status == JobStatus.SUCCEEDED, finished.error
    assert finished.result is not None and finished.result.activated
    return finished.result.version


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus after the service learned two tasks and served each version's traffic."""
    require("prometheus")
    tmp = tmp_path_factory.mktemp("ops")
    workers = {"mas-importance": free_port(), "mas-trainer": free_port()}
    env = {
        **SERVICE_ENV,
        "MAS_IMPORTANCE_METRICS_PORT": str(workers["mas-importance"]),
        "MAS_TRAINER_METRICS_PORT": str(workers["mas-trainer"]),
    }
    suite = load_suite("split-digits")
    tasks = {task.name: task for task in suite.tasks[:2]}
    with serve(tmp / "data", env) as service, ServiceClient(service.url) as client:
        ports = {**workers, "mas-api": int(service.url.rsplit(":", 1)[1])}
        with running_prometheus(local_config(ports), tmp) as prometheus:
            client.wait_until_live(timeout=60)
            served: dict[str, np.ndarray] = {}
            for name, task in tasks.items():
                version = _learn(client, name, task.x_train.numpy(), task.y_train.numpy())
                served[name] = task.x_test.numpy()
                wait_until(lambda v=version: client.models().served == v, timeout=10)
                _serve_traffic(client, served)
                wait_until(lambda v=version: _counted(client, v) >= 50, timeout=30)
            yield prometheus


def test_every_dashboard_and_alert_expression_parses_and_returns_data(
    scraped: Prometheus,
) -> None:
    expressions = {f"panel query {expr}": expr for expr in _dashboard_queries()}
    expressions |= {f"alert {rule['alert']}": measured(rule["expr"]) for rule in alert_rules()}
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [name for name, expr in expressions.items() if not scraped.query(expr)]
        return not empty

    try:
        wait_until(all_have_data, timeout=20, interval=1.0)
    except TimeoutError:
        pytest.fail("no data for:\n" + "\n".join(empty))
    drift = scraped.query("max by (layer) (mas_model_importance_layer_drift_ratio)")
    assert all(float(sample["value"][1]) > 0 for sample in drift), drift


def test_prometheus_loads_every_alert_and_evaluates_it_without_error(scraped: Prometheus) -> None:
    def evaluated() -> bool:
        return all(rule.get("lastEvaluation", "").startswith("20") for rule in scraped.rules())

    wait_until(evaluated, timeout=10, interval=0.5)
    loaded = {rule["name"]: rule for rule in scraped.rules() if rule["type"] == "alerting"}
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in loaded.values()), loaded
    for rule in loaded.values():
        assert {"summary", "description"} <= set(rule["annotations"]), rule["name"]
    # Nothing is wrong with this service, so the alerts on a loss do not fire.
    firing = {name for name, rule in loaded.items() if rule["state"] != "inactive"}
    assert not firing & {"MasRetentionDrop", "MasJobFailed", "MasRedisDown", "MasSamplesDropped"}


def test_measured_turns_every_threshold_into_a_value_and_leaves_matchers_alone() -> None:
    assert (
        measured('max(a{x=~"1"}) > 0.5 and on () b{y!="2"} >= -1')
        == 'max(a{x=~"1"}) > bool 0.5 and on () b{y!="2"} >= bool -1'
    )
    assert measured("up == 0") == "up == bool 0"


@pytest.mark.parametrize(
    "arguments",
    [
        ["check", "config", str(DEPLOY / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "alerts.yml")],
    ],
    ids=["config", "rules"],
)
def test_promtool_accepts_the_shipped_config_and_rules(arguments: list[str]) -> None:
    checked = subprocess.run(
        [require("promtool"), *arguments], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_rejects_a_rule_with_a_typo(tmp_path: Path) -> None:
    """The check above can fail: an expression that does not parse is refused."""
    broken = tmp_path / "alerts.yml"
    broken.write_text((DEPLOY / "alerts.yml").read_text().replace("> 0.5", "> > 0.5", 1))
    checked = subprocess.run(
        [require("promtool"), "check", "rules", str(broken)], capture_output=True, text=True
    )
    assert checked.returncode != 0
    assert "parse error" in checked.stdout + checked.stderr
