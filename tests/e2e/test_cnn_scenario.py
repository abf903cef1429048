"""The built-in CNN end to end: `mas-stream serve` with MAS_MODEL_SPEC naming a CNN on [1, 28, 28]
images, and the permuted-MNIST-5k scenario sent through it as images (uploads, traffic and the
scoring requests): four tasks, unlabeled traffic between them, every served row counted in Ω.
With MAS task 0 is retained; with λ = 0 (the retention gate open) it is forgotten.

The protocol is sized for CI: two epochs per task, less traffic than the MLP scenario, one head
per task (the service's default) on a 32-unit bottleneck, which the tasks must share."""

from __future__ import annotations

import json

import pytest

from mas_stream.client import ServiceClient
from mas_stream.demo import fresh_service
from mas_stream.scenario import ScenarioReport, run_scenario

pytestmark = pytest.mark.slow

INPUT_SHAPE = [1, 28, 28]
CNN_SPEC = {"family": "cnn", "input_shape": INPUT_SHAPE, "channels": [16, 32], "hidden": [32]}
CNN_ENV = {
    "MAS_MODEL_SPEC": json.dumps(CNN_SPEC),
    "MAS_EPOCHS": "2",
    # Both runs serve every version, so they differ in λ alone.
    "MAS_RETENTION_MAX_DROP": "1",
    "MAS_MODEL_POLL_SECONDS": "1",
}
FIRST_TRAFFIC = 500


def scenario(env: dict[str, str]) -> ScenarioReport:
    with fresh_service({**CNN_ENV, **env}) as service, ServiceClient(service.url) as client:
        client.wait_until_live(timeout=120)
        report = run_scenario(
            client,
            tasks=4,
            first_traffic=FIRST_TRAFFIC,
            traffic_per_task=150,
            input_shape=INPUT_SHAPE,
        )
        metadata = client.http.get("/v2/models/mas").json()
        assert metadata["inputs"][0]["shape"] == [-1, *INPUT_SHAPE]
        print(f"task0 drop {report.drop('task0'):.4f}:", [s.accuracy for s in report.stages])
        return report


def test_cnn_with_mas_retains_task0_and_counts_every_served_row() -> None:
    report = scenario({})
    assert [stage.job.result.omega.source for stage in report.stages[1:]] == ["traffic"] * 3
    counted = {int(v["version"]): int(v["samples"]) for v in report.importance["versions"]}
    assert counted == dict(report.rows_served)
    assert report.rows_served[report.stages[0].job.result.version] >= FIRST_TRAFFIC
    assert report.drop("task0") <= 0.03, [stage.accuracy for stage in report.stages]


def test_cnn_without_the_penalty_forgets_task0() -> None:
    report = scenario({"MAS_LAMBDA": "0"})
    assert report.drop("task0") >= 0.10, [stage.accuracy for stage in report.stages]
