"""The product end to end: `mas-stream serve` (embedded Redis, API, both workers, supervised) on a
real socket, four permuted-MNIST tasks POSTed one after another with unlabeled traffic between
them. With MAS the first task is retained; with λ = 0 (and the retention gate open, so every
version is served) it is forgotten."""

from __future__ import annotations

import pytest

from mas_stream.client import ServiceClient
from mas_stream.demo import fresh_service
from mas_stream.scenario import SERVICE_ENV, ScenarioReport, run_scenario

pytestmark = pytest.mark.slow

SCENARIO_ENV = {**SERVICE_ENV, "MAS_MODEL_POLL_SECONDS": "1"}


def scenario(env: dict[str, str]) -> tuple[ScenarioReport, str]:
    with fresh_service({**SCENARIO_ENV, **env}) as service, ServiceClient(service.url) as client:
        client.wait_until_live(timeout=120)
        report = run_scenario(client, tasks=4, first_traffic=2000, traffic_per_task=500)
        print(f"task0 drop {report.drop('task0'):.4f}:", [s.accuracy for s in report.stages])
        return report, client.metrics_text()


def test_mas_retains_task0_and_every_served_row_is_counted() -> None:
    report, metrics = scenario({})
    for stage in report.stages:
        assert any(0.0 < p < 1.0 for p in stage.progress_seen), (stage.task, stage.progress_seen)
        assert stage.job.result.activated, stage.job.result.reason
    sources = [stage.job.result.omega.source for stage in report.stages[1:]]
    assert sources == ["traffic"] * 3
    counted = {int(v["version"]): int(v["samples"]) for v in report.importance["versions"]}
    assert counted == dict(report.rows_served)
    assert report.rows_served[report.stages[0].job.result.version] >= 2000
    assert report.drop("task0") <= 0.03, [stage.accuracy for stage in report.stages]
    for series in ("mas_model_importance_layer_mean", "mas_model_importance_layer_drift_ratio"):
        assert series in metrics


def test_without_the_penalty_task0_is_forgotten() -> None:
    report, _ = scenario({"MAS_LAMBDA": "0", "MAS_RETENTION_MAX_DROP": "1"})
    assert report.drop("task0") >= 0.10, [stage.accuracy for stage in report.stages]
