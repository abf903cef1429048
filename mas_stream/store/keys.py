"""Every Redis key the project uses, in one place, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "mas"

    @property
    def samples(self) -> str:
        return f"{self.prefix}:samples"

    @property
    def samples_dead(self) -> str:
        return f"{self.prefix}:samples:dead"

    def samples_producer(self, producer: str) -> str:
        """String: the last batch one forwarder process appended, so its retries apply once."""
        return f"{self.prefix}:samples:producer:{producer}"

    @property
    def importance_group(self) -> str:
        return "importance"

    @property
    def current_version(self) -> str:
        return f"{self.prefix}:models:current"

    @property
    def next_version(self) -> str:
        return f"{self.prefix}:models:next"

    @property
    def events(self) -> str:
        """Pub/sub channel: model activations."""
        return f"{self.prefix}:events"

    def omega_partials(self, version: int) -> str:
        """Hash: worker id -> encoded (sum, count) partial for one model version."""
        return f"{self.prefix}:omega:{version}:partials"

    def omega_task_counts(self, version: int) -> str:
        """Hash: task -> samples applied to Ω for one model version."""
        return f"{self.prefix}:omega:{version}:tasks"

    def worker_id_claim(self, worker_id: str) -> str:
        """Lock held by the one live importance worker that writes this Ω partial id."""
        return f"{self.prefix}:omega:worker:{worker_id}"

    def omega_revisions(self, version: int) -> str:
        """Hash: worker id -> how many commits wrote its partial (compare-and-set token)."""
        return f"{self.prefix}:omega:{version}:revisions"

    @property
    def omega_versions(self) -> str:
        """Set of versions that have Ω partials."""
        return f"{self.prefix}:omega:versions"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def jobs_group(self) -> str:
        return "trainers"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def job_index(self) -> str:
        """Sorted set of job ids by submission time."""
        return f"{self.prefix}:jobs:index"

    @property
    def tasks(self) -> str:
        """Hash: task name -> JSON metadata of its stored dataset."""
        return f"{self.prefix}:tasks"

    @property
    def part_faults(self) -> str:
        """Hash: "<part>@<host>" -> why that part cannot start (a restart would not fix it)."""
        return f"{self.prefix}:parts:faults"

    @property
    def metrics_targets(self) -> str:
        """Hash: "<part>@<host>" -> JSON {"role", "target": "host:port"} of its /metrics."""
        return f"{self.prefix}:parts:metrics"

    def task_claim(self, name: str) -> str:
        """String, set while one API process checks and stores a new task of this name."""
        return f"{self.prefix}:tasks:claim:{name}"
