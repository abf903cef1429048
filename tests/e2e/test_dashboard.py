"""The Grafana dashboard and the Prometheus config only name series the processes really export.

What is exported is read from the processes' own prometheus_client objects: the API's registry
and its scrape-time collector (built on real Redis, not served), and the registry each worker
serves. A renamed metric or label, or a panel with a typo, fails here naming the panel, instead
of showing an empty graph in production. The containers' health probes are checked against the
same ports.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from mas_stream.probe import probe_url
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from service.app import build_runtime
from service.metrics import RuntimeCollector, ServiceMetrics
from tests.support.api import api_settings
from tests.support.paths import ROOT
from worker import importance_metrics as importance_worker
from worker import trainer as trainer_worker

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mas-stream.json"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# The samples each metric type is written as: (suffix, labels it adds, cumulative).
SUFFIXES: dict[str, tuple[tuple[str, tuple[str, ...], bool], ...]] = {
    "counter": (("_total", (), True), ("_created", (), False)),
    "gauge": (("", (), False),),
    "histogram": (
        ("_bucket", ("le",), True),
        ("_count", (), True),
        ("_sum", (), True),
        ("_created", (), False),
    ),
    "summary": (
        ("", ("quantile",), False),
        ("_count", (), True),
        ("_sum", (), True),
        ("_created", (), False),
    ),
    "info": (("_info", (), False),),
}

_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_BRACES = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)?\s*\{(?P<matchers>[^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_NAME = re.compile(r"(?<![\w:.$])(?P<name>[a-zA-Z_:][\w:]*)\s*(?P<range>\[)?\s*(?P<call>\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "group_left", "group_right", "inf", "nan"}
)
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Series:
    """One exported sample name: the labels it carries, and whether it only ever grows (then
    it means something only through rate() or increase())."""

    labels: frozenset[str]
    cumulative: bool


class Term(NamedTuple):
    """One metric a query reads: the labels its matchers name, and whether it is read over a
    range (as rate() and increase() need)."""

    name: str
    labels: frozenset[str]
    ranged: bool


Declared = tuple[Metric, tuple[str, ...]]


def _declared(source: MetricWrapperBase | Metric) -> Declared:
    """A family as collected, with its label names. prometheus_client writes a labelled family's
    samples only once it has children and has no public accessor for label names, so they are
    read from the declaration."""
    family = source.collect()[0] if isinstance(source, MetricWrapperBase) else source
    return family, tuple(source._labelnames)


def _wrappers(namespace: dict[str, Any]) -> list[MetricWrapperBase]:
    return [value for value in namespace.values() if isinstance(value, MetricWrapperBase)]


def _worker_sources(module: ModuleType) -> list[MetricWrapperBase | Metric]:
    """The families the worker's registry serves, each taken from the module-level metric that
    declares it where there is one (it knows the label names); a metric the module declares
    outside that registry is not served, so it is left out."""
    declaring = {wrapper.collect()[0].name: wrapper for wrapper in _wrappers(vars(module))}
    return [declaring.get(family.name, family) for family in module.METRICS.collect()]


def _series(family: Metric, labelnames: tuple[str, ...]) -> dict[str, Series]:
    assert family.type in SUFFIXES, f"{family.name}: teach SUFFIXES the type {family.type!r}"
    return {
        family.name + suffix: Series(frozenset((*labelnames, *added)), cumulative)
        for suffix, added, cumulative in SUFFIXES[family.type]
    }


def _exports(declared: Iterable[Declared]) -> dict[str, Series]:
    """Every sample name any process writes; a name several processes wrote would carry the
    labels of all of them (tests/ops/test_metric_names.py keeps each name to one process)."""
    exports: dict[str, Series] = {}
    for family, labelnames in declared:
        for name, series in _series(family, labelnames).items():
            known = exports.get(name, series)
            exports[name] = Series(known.labels | series.labels, known.cumulative)
    return exports


def parse(expr: str) -> tuple[list[Term], set[str]]:
    """(metrics read, labels grouped on) of a PromQL expression. String literals are blanked
    first, so label values and regexes are never taken for names."""
    text = _STRING.sub('""', expr)
    grouping = {
        label.strip() for match in _GROUPING.finditer(text) for label in match[1].split(",")
    }
    text = _GROUPING.sub(" ", text)
    matchers: dict[str, set[str]] = defaultdict(set)

    def drop_braces(match: re.Match[str]) -> str:
        matchers[match["name"] or ""].update(_MATCHER.findall(match["matchers"]))
        return match["name"] or ""

    text = _BRACES.sub(drop_braces, text)
    terms = [
        Term(match["name"], frozenset(matchers[match["name"]]), match["range"] is not None)
        for match in _NAME.finditer(text)
        if match["call"] is None and match["name"].lower() not in _KEYWORDS
    ]
    return terms, grouping - {""}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_problems(panels: list[dict[str, Any]], exports: dict[str, Series]) -> list[str]:
    """One line per series, label or reading a query gets wrong, naming its panel."""
    problems = []
    for panel in _panels(panels):
        for target in panel.get("targets", []):
            terms, grouping = parse(target["expr"])
            used = grouping | set(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
            for term in terms:
                where = f"panel {panel['title']!r}: {term.name}"
                series = exports.get(term.name)
                if series is None:
                    problems.append(f"{where} is not exported by any process")
                    continue
                for label in sorted((used | term.labels) - series.labels - TARGET_LABELS):
                    problems.append(f"{where} has no label {label!r}")
                if series.cumulative and not term.ranged:
                    problems.append(f"{where} only grows: read it with rate() or increase()")
    return problems


def _metrics_port(service: dict[str, Any]) -> int | None:
    """The port the process a compose service runs serves /metrics on (None: not ours)."""
    match service.get("command"):
        case ["mas-stream", "api", *_]:
            field = "port"
        case ["mas-stream", "worker", "importance", *_]:
            field = "importance_metrics_port"
        case ["mas-stream", "worker", "trainer", *_]:
            field = "trainer_metrics_port"
        case _:
            return None
    variable = f"{Settings.model_config['env_prefix']}{field.upper()}"
    return int(service.get("environment", {}).get(variable, Settings.model_fields[field].default))


def _dashboard_panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]


@pytest.fixture
def declared(tmp_path: Path, redis_url: str, keys: Keys) -> list[Declared]:
    """Every family the API and the workers export. The API's runtime is built (not started) on
    real Redis, so the collector yields its Redis-backed families as a scrape would."""
    metrics = ServiceMetrics()
    runtime = build_runtime(api_settings(tmp_path, redis_url, keys), metrics.batch_rows.observe)
    try:
        collector = RuntimeCollector(
            runtime.served, runtime.forwarder, runtime.jobs, runtime.importance
        )
        sources = [
            *_wrappers(vars(metrics)),
            *collector.collect(),
            *_worker_sources(importance_worker),
            *_worker_sources(trainer_worker),
        ]
        return [_declared(source) for source in sources]
    finally:
        runtime.redis.close()


@pytest.fixture
def exports(declared: list[Declared]) -> dict[str, Series]:
    return _exports(declared)


def test_every_dashboard_query_reads_series_the_processes_export(
    exports: dict[str, Series],
) -> None:
    problems = dashboard_problems(_dashboard_panels(), exports)
    assert not problems, "\n".join(problems)


def test_every_alert_rule_reads_series_the_processes_export(exports: dict[str, Series]) -> None:
    """deploy/alerts.yml through the same check, each rule as a panel of its own."""
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    panels = [{"title": rule["alert"], "targets": [{"expr": rule["expr"]}]} for rule in rules]
    # Prometheus itself writes `up` for every target it scrapes.
    problems = dashboard_problems(panels, {**exports, "up": Series(frozenset(), False)})
    assert not problems, "\n".join(problems)


def test_a_typo_a_missing_label_or_a_raw_counter_is_reported_with_its_panel(
    exports: dict[str, Series],
) -> None:
    panels = [
        {"title": "Typo", "targets": [{"expr": "sum(rate(mas_http_request_total[1m]))"}]},
        {
            "title": "Row",
            "panels": [
                {
                    "title": "Nested",
                    "targets": [
                        {
                            "expr": 'sum by (path) (rate(mas_http_requests_total{verb="GET"}[5m]))',
                            "legendFormat": "{{route}} {{layer}}",
                        }
                    ],
                }
            ],
        },
        {"title": "Raw counter", "targets": [{"expr": 'mas_trainer_jobs_total{status="x"}'}]},
    ]
    assert dashboard_problems(panels, exports) == [
        "panel 'Typo': mas_http_request_total is not exported by any process",
        "panel 'Nested': mas_http_requests_total has no label 'layer'",
        "panel 'Nested': mas_http_requests_total has no label 'path'",
        "panel 'Nested': mas_http_requests_total has no label 'verb'",
        "panel 'Raw counter': mas_trainer_jobs_total only grows: read it with rate() or increase()",
    ]


def test_parse_ignores_functions_keywords_strings_and_ranges() -> None:
    terms, grouping = parse(
        'histogram_quantile(0.9, sum by (le, route) (rate(a_bucket{route=~"/v1/(x|y)"}'
        "[$__rate_interval]))) / ignoring(le) group_left sum(b offset 5m) > bool 1e3"
    )
    assert terms == [Term("a_bucket", frozenset({"route"}), True), Term("b", frozenset(), False)]
    assert grouping == {"le", "route"}


def test_sample_names_and_labels_are_what_prometheus_client_writes(
    declared: list[Declared],
) -> None:
    """SUFFIXES against the samples that exist now (unlabelled families, and the collector's)."""
    written = [(family, labelnames) for family, labelnames in declared if family.samples]
    assert {family.type for family, _ in written} >= {"counter", "gauge", "histogram"}
    for family, labelnames in written:
        predicted = _series(family, labelnames)
        for sample in family.samples:
            assert sample.name in predicted, f"{family.name} writes {sample.name}"
            assert set(sample.labels) == predicted[sample.name].labels, sample


def test_prometheus_scrapes_every_process_on_its_metrics_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    serving = {
        f"{name}:{port}"
        for name, service in compose["services"].items()
        if (port := _metrics_port(service))
    }
    scraped = {
        f"{name}:{config['port']}"
        for job in prometheus["scrape_configs"]
        for config in job["dns_sd_configs"]
        for name in config["names"]
    }
    assert scraped == serving


def _image_probe() -> list[str]:
    """The exec-form HEALTHCHECK command the Dockerfile gives every container of the image."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK\b.*?\bCMD\b(.*)$", dockerfile, re.MULTILINE)
    assert match is not None, "the Dockerfile has no HEALTHCHECK"
    return list(json.loads(match[1]))


def test_every_container_is_probed_on_the_port_its_process_serves() -> None:
    """A worker serves no HTTP API: probed like the API, on :8000, it would be marked unhealthy.
    Every probe is `python -m mas_stream.probe ROLE`, which asks the port the container's own
    environment gives ROLE."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image_probe = _image_probe()
    for name, service in compose["services"].items():
        if port := _metrics_port(service):
            test = service.get("healthcheck", {}).get("test", ["CMD", *image_probe])
            *_, module, role = test
            assert module == "mas_stream.probe", f"{name} is probed by {test}"
            environment = {key: str(value) for key, value in service["environment"].items()}
            url = probe_url(role, environment)
            assert url.startswith(f"http://127.0.0.1:{port}/"), f"{name} serves on {port}: {url}"


def test_panels_query_the_provisioned_datasource() -> None:
    provisioned = {
        source["uid"]
        for path in (DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    used = {panel["datasource"]["uid"] for panel in _panels(_dashboard_panels())}
    assert used <= provisioned
