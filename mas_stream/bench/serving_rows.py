"""What the serving benchmark measures: the servers (the service under which settings, or the
bare app) and the rows, each a request kind against one server with the baseline of its ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Server -> the MAS_* settings `mas-stream serve` runs with ("bare" is the baseline app).
TARGETS: Final[dict[str, dict[str, str]]] = {
    "bare": {},
    "service": {"MAS_SAMPLE_RATE": "1.0"},
    "service-no-forward": {"MAS_SAMPLE_RATE": "0"},
    "service-no-batch": {"MAS_SAMPLE_RATE": "1.0", "MAS_MAX_BATCH": "1", "MAS_MAX_WAIT_MS": "0"},
    # Forwarding on, no importance worker on this machine: the API's own cost of forwarding.
    "service-no-worker": {"MAS_SAMPLE_RATE": "1.0", "MAS_SERVE_IMPORTANCE_WORKERS": "0"},
    "service-2-replicas": {"MAS_SAMPLE_RATE": "1.0", "MAS_API_REPLICAS": "2"},
}


@dataclass(frozen=True)
class Row:
    name: str
    target: str
    request: str
    baseline: str
    about: str


ROWS: Final = (
    Row("bare-json", "bare", "bare-json", "bare-json", "bare app, POST /predict JSON"),
    Row("bare-bytes", "bare", "bare-bytes", "bare-bytes", "bare app, POST /predict-bytes float32"),
    Row("ping", "bare", "ping", "bare-json", "bare app, GET /ping (load generator ceiling)"),
    Row("v1-json", "service", "v1-json", "bare-json", "service, POST /v1/predict JSON"),
    Row("oip-json", "service", "oip-json", "bare-json", "service, OIP infer JSON"),
    Row("oip-binary", "service", "oip-binary", "bare-bytes", "service, OIP infer binary tensors"),
    Row(
        "v1-json-no-forward",
        "service-no-forward",
        "v1-json",
        "bare-json",
        "service, /v1/predict, MAS_SAMPLE_RATE=0",
    ),
    Row(
        "v1-json-no-worker",
        "service-no-worker",
        "v1-json",
        "bare-json",
        "service, /v1/predict, MAS_SERVE_IMPORTANCE_WORKERS=0",
    ),
    Row(
        "v1-json-2-replicas",
        "service-2-replicas",
        "v1-json",
        "bare-json",
        "service, /v1/predict, MAS_API_REPLICAS=2",
    ),
    Row(
        "v1-json-no-batch",
        "service-no-batch",
        "v1-json",
        "bare-json",
        "service, /v1/predict, MAS_MAX_BATCH=1 MAS_MAX_WAIT_MS=0",
    ),
)
ROW_NAMES: Final = tuple(row.name for row in ROWS)
# Rows also measured paced at half their highest throughput, for the latency a user sees there.
PACED_ROWS: Final = ("bare-json", "v1-json")
PACED_FRACTION: Final = 0.5
PACED_CONNECTIONS: Final = 16
