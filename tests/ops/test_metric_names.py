"""Metric hygiene, read from what each process really exports: the API's registry and its
scrape-time collector (built on real Redis), and each worker's registry.

- no `mas_` name is exported by two processes (the API's Ω summary is `mas_model_*`, the
  importance worker's `mas_importance_*`), so a query never mixes two meanings;
- every labelled counter has a sample for each of its label values from the start, so
  increase() sees the first event and alerts have a series to read;
- ratios end in `_ratio`, and no size is left without its unit (`_size`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from mas_stream.store.keys import Keys
from service.app import build_runtime
from service.forwarder import DROP_REASONS
from service.metrics import RuntimeCollector, ServiceMetrics
from tests.e2e.test_dashboard import _declared, _worker_sources, _wrappers
from tests.support.api import api_settings
from worker import importance_metrics as importance_worker
from worker import trainer as trainer_worker
from worker.importance_metrics import DEAD_LETTER_REASONS

# Families whose values are fractions in [0, 1].
RATIOS = {
    "mas_model_task_accuracy_ratio",
    "mas_model_importance_layer_drift_ratio",
    "mas_importance_layer_drift_ratio",
    "mas_trainer_job_progress_ratio",
}


def _families(sources: Iterable[MetricWrapperBase | Metric]) -> list[Metric]:
    return [_declared(source)[0] for source in sources]


@pytest.fixture
def by_process(tmp_path: Path, redis_url: str, keys: Keys) -> dict[str, list[Metric]]:
    metrics = ServiceMetrics()
    runtime = build_runtime(api_settings(tmp_path, redis_url, keys), metrics.batch_rows.observe)
    try:
        collector = RuntimeCollector(
            runtime.served, runtime.forwarder, runtime.jobs, runtime.importance
        )
        api = [*_families(_wrappers(vars(metrics))), *collector.collect()]
    finally:
        runtime.redis.close()
    return {
        "api": api,
        "importance": _families(_worker_sources(importance_worker)),
        "trainer": _families(_worker_sources(trainer_worker)),
    }


def test_no_name_is_exported_by_two_processes(by_process: dict[str, list[Metric]]) -> None:
    owners: dict[str, set[str]] = {}
    for process, families in by_process.items():
        for family in families:
            if family.name.startswith("mas_"):
                owners.setdefault(family.name, set()).add(process)
    shared = {name: sorted(processes) for name, processes in owners.items() if len(processes) > 1}
    assert not shared
    assert {"mas_model_importance_layer_drift_ratio", "mas_importance_layer_drift_ratio"} <= set(
        owners
    )


def _label_values(families: list[Metric], name: str, label: str) -> set[str]:
    family = next(family for family in families if family.name == name)
    return {sample.labels[label] for sample in family.samples if sample.name.endswith("_total")}


def test_labelled_counters_start_with_every_label_value(
    by_process: dict[str, list[Metric]],
) -> None:
    assert _label_values(by_process["api"], "mas_samples_dropped", "reason") == set(DROP_REASONS)
    assert _label_values(by_process["importance"], "mas_importance_dead_lettered", "reason") == (
        set(DEAD_LETTER_REASONS)
    )
    assert _label_values(by_process["trainer"], "mas_trainer_jobs", "status") == {
        "succeeded",
        "failed",
        "canceled",
    }


def test_ratios_and_sizes_name_their_unit(by_process: dict[str, list[Metric]]) -> None:
    names = {family.name for families in by_process.values() for family in families}
    assert names >= RATIOS
    assert not {name for name in names if name.startswith("mas_") and "_size" in name}
    assert "mas_predict_batch_rows" in names
    assert not {name for name in names if "accuracy" in name or "drift" in name} - RATIOS
