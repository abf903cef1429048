"""One typed settings object for every process; read from MAS_* environment variables. A bad
variable stops the process with one line naming it as the user wrote it (`load_settings`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from mas.methods import Method
from mas_stream.startup import CannotStart

_FIELD_IN_SETTINGS_ERROR: Final = re.compile(r'field "(\w+)"')


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAS_", extra="ignore")

    # Where state lives.
    data_dir: Path = Field(Path("mas-data"), description="Artifacts, datasets, embedded Redis.")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "MAS_REDIS_URL"),
        description=(
            "External Redis (redis://, rediss://, unix://; a cluster: redis+cluster://, "
            "rediss+cluster://). Unset: embedded Redis."
        ),
    )
    key_prefix: str = Field(
        "mas",
        pattern=r"^[^{}]+$",
        description="Prefix of every Redis key this service owns, as their hash tag: {prefix}.",
    )

    # HTTP API.
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, ge=0, le=65535, description="API port.")
    admin_token: str | None = Field(None, description="Bearer token for mutating endpoints.")
    inference_token: str | None = Field(
        None, description="Bearer token /v1/predict and /v2 infer require; unset: open."
    )
    access_log: bool = Field(False, description="One log line per request (metrics count them).")
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Larger request bodies get 413.")
    max_batch: int = Field(256, description="Most rows in one micro-batched forward pass.")
    max_wait_ms: float = Field(0.0, description="Longest a request waits for batch-mates.")
    max_rows: int = Field(
        65536, ge=1, description="Most rows in one predict request; more get 413."
    )
    max_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Most bytes one upload's arrays may take; more: 413."
    )
    upload_memory_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1,
        description="Array bytes of all uploads in flight in one API process; more wait (503).",
    )
    torch_threads: int = Field(1, ge=1, description="Torch threads of the API's forward pass.")
    api_replicas: int = Field(
        1, ge=1, description="API processes `mas-stream serve` runs behind its one port."
    )
    model_poll_seconds: float = Field(5.0, description="Periodic check of the current version.")
    model_name: str = Field("mas", description="Model name in the Open Inference Protocol (/v2).")

    # Forwarding samples to the importance worker.
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of inputs forwarded.")
    sample_buffer: int = Field(10_000, description="Rows held in memory while Redis is slow.")
    forward_flush_ms: float = Field(
        20.0, ge=0.0, description="Longest sampled rows wait to share one stream write."
    )
    stream_maxlen: int = Field(
        1_000_000, description="Safety cap on the sample stream (trimmed as it is acknowledged)."
    )

    # Compute.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if present.")

    # Importance worker.
    importance_method: Method = Field(
        "exact",
        description="Ω estimator: per-sample (paper), batch formula, l-MAS, or per-output norm.",
    )
    serve_importance_workers: int = Field(
        1, ge=0, description="Importance workers `mas-stream serve` starts; 0: they run elsewhere."
    )
    importance_batch: int = Field(256, description="Samples per importance pass.")
    checkpoint_every: int = Field(1, description="Stream reads between Ω checkpoints.")
    importance_threads: int = Field(1, ge=1, description="Torch threads of the importance worker.")
    importance_linger_ms: float = Field(
        100.0, ge=0.0, description="Pause after a short read, so samples arrive in larger reads."
    )
    worker_nice: int = Field(
        10, ge=0, le=19, description="How much lower the workers' OS priority is than the API's."
    )
    claim_min_idle_ms: int = Field(30_000, description="Idle time before entries are reclaimed.")
    dead_letter_after: int = Field(5, description="Deliveries before an entry is dead-lettered.")
    importance_metrics_port: int = Field(
        9101, ge=0, le=65535, description="Importance worker /metrics; 0: off."
    )

    # Trainer.
    trainer_metrics_port: int = Field(
        9102, ge=0, le=65535, description="Trainer /metrics port; 0: off."
    )
    job_lease_ms: int = Field(30_000, description="A job not heartbeated this long is stale.")
    min_traffic_samples: int = Field(500, description="Fewer served samples: Ω from stored data.")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Ω_cons ← γ·Ω_cons + Ω_new.")
    mas_lambda: float = Field(
        1.0, ge=0.0, validation_alias=AliasChoices("MAS_LAMBDA"), description="Penalty strength."
    )
    epochs: int = Field(10, ge=1, description="Epochs per task unless the upload says otherwise.")
    batch_size: int = Field(64, ge=1, description="Training mini-batch size.")
    train_procs: int = Field(
        1, ge=1, description="Processes one job trains on (a torchrun DDP job); 1: in the trainer."
    )
    learning_rate: float = Field(0.01, gt=0.0, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0.0, description="SGD momentum.")
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of an upload kept out of training, per class."
    )
    retention_max_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="Largest drop on an earlier task to auto-activate."
    )
    model_spec: str | None = Field(
        None, description="Model spec (JSON, or @path to a JSON file); unset: the MLP of hidden."
    )
    hidden: list[int] = Field([256, 256], description="Hidden sizes of the default MLP trunk.")
    head_mode: Literal["per_task", "shared"] = Field(
        "per_task", description="One head per task, or one shared head (domain-incremental)."
    )
    shared_classes: int = Field(10, description="Classes of the shared head (head_mode=shared).")
    seed: int = Field(0, description="Seed of model initialisation and data order.")

    # Retention (the trainer prunes): what Redis keeps of past versions and finished jobs.
    keep_versions: int = Field(
        5, ge=1, description="Newest versions, and served version's ancestors, whose Ω is kept."
    )
    job_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0.0, description="Finished jobs older than this are pruned."
    )

    @field_validator("model_spec")
    @classmethod
    def _buildable(cls, value: str | None) -> str | None:
        """A spec that cannot be built stops the process at start, naming the spec's field.
        Building one needs torch, which is imported here, not with the settings: a process that
        reads no spec (the supervisor, with none set) never loads it."""
        if value is not None:
            from mas_stream.model_spec import load_spec

            load_spec(value)
        return value

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"


def load_settings(**overrides: Any) -> Settings:
    """The settings, or CannotStart with one line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = [_problem(item["loc"], item["msg"], item.get("input")) for item in error.errors()]
        raise CannotStart("\n".join(lines)) from None
    except SettingsError as error:
        # pydantic-settings decodes list settings (MAS_HIDDEN) as JSON before validating.
        found = _FIELD_IN_SETTINGS_ERROR.search(str(error))
        field = found.group(1) if found else "?"
        raise CannotStart(_problem((field,), f"is not valid JSON ({error.__cause__})")) from None


def variable_of(field: str) -> str:
    """The environment variable a field is read from, spelled as this environment has it (the
    names are case-insensitive); the first of its names when none is set."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices]
    elif info is None:
        names = [field]  # already a variable name: pydantic reports aliased fields by alias
    else:
        names = [f"{Settings.model_config.get('env_prefix', '')}{field}".upper()]
    written = {name.upper(): name for name in os.environ}
    return next((written[name.upper()] for name in names if name.upper() in written), names[0])


def _problem(location: tuple[int | str, ...], message: str, given: object = None) -> str:
    variable = variable_of(str(location[0]))
    value = os.environ.get(variable, given)
    item = "".join(f"[{part}]" for part in location[1:])
    where = f" item {item}:" if item else ""
    return f"invalid setting {variable}={value!r}:{where} {message}"
