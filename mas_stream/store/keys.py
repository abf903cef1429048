"""Every Redis key the project uses, in one place, under one prefix.

Every name starts with the prefix as a hash tag, `{mas}:samples`: Redis Cluster then hashes only
the tag, so all keys of one service share one slot, and the Lua scripts and transactions that
touch several of them stay legal there. Consumer group names are not keys and carry no tag."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "mas"

    def key(self, suffix: str) -> str:
        """The key `suffix` names under this service's hash tag."""
        return f"{{{self.prefix}}}:{suffix}"

    @property
    def layout(self) -> str:
        """String: set once this Redis holds the hash-tagged layout (see key_migration)."""
        return self.key("layout")

    @property
    def samples(self) -> str:
        return self.key("samples")

    @property
    def samples_dead(self) -> str:
        return self.key("samples:dead")

    def samples_producer(self, producer: str) -> str:
        """String: the last batch one forwarder process appended, so its retries apply once."""
        return self.key(f"samples:producer:{producer}")

    @property
    def importance_group(self) -> str:
        return "importance"

    @property
    def current_version(self) -> str:
        return self.key("models:current")

    @property
    def next_version(self) -> str:
        return self.key("models:next")

    @property
    def withdrawn_versions(self) -> str:
        """Set: versions a delete has taken away, or is taking; the activation script refuses
        them. Numbers are never reused, so a deleted version's stays."""
        return self.key("models:withdrawn")

    @property
    def events(self) -> str:
        """Pub/sub channel: model activations. A cluster client subscribes on the node of its
        slot, which is the one holding the keys; PUBLISH reaches every node anyway."""
        return self.key("events")

    def omega_partials(self, version: int) -> str:
        """Hash: worker id -> encoded (sum, count) partial for one model version."""
        return self.key(f"omega:{version}:partials")

    def omega_task_counts(self, version: int) -> str:
        """Hash: task -> samples applied to Ω for one model version."""
        return self.key(f"omega:{version}:tasks")

    def worker_id_claim(self, worker_id: str) -> str:
        """Lock held by the one live importance worker that writes this Ω partial id."""
        return self.key(f"omega:worker:{worker_id}")

    def omega_revisions(self, version: int) -> str:
        """Hash: worker id -> how many commits wrote its partial (compare-and-set token)."""
        return self.key(f"omega:{version}:revisions")

    @property
    def omega_versions(self) -> str:
        """Set of versions that have Ω partials."""
        return self.key("omega:versions")

    @property
    def jobs(self) -> str:
        return self.key("jobs")

    @property
    def jobs_group(self) -> str:
        return "trainers"

    def job(self, job_id: str) -> str:
        return self.key(f"job:{job_id}")

    @property
    def job_index(self) -> str:
        """Sorted set of job ids by submission time."""
        return self.key("jobs:index")

    @property
    def tasks(self) -> str:
        """Hash: task name -> JSON metadata of its stored dataset."""
        return self.key("tasks")

    @property
    def part_faults(self) -> str:
        """Hash: "<part>@<host>" -> why that part cannot start (a restart would not fix it)."""
        return self.key("parts:faults")

    @property
    def metrics_targets(self) -> str:
        """Hash: "<part>@<host>" -> JSON {"role", "target": "host:port"} of its /metrics."""
        return self.key("parts:metrics")

    def task_claim(self, name: str) -> str:
        """String, set while one API process checks and stores a new task of this name."""
        return self.key(f"tasks:claim:{name}")
