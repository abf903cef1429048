"""Importance worker: turns the samples the service forwarded into Ω, each sample exactly once.

Per loop: take over entries a dead consumer left pending, read new ones, compute per-sample
importance grouped by (model version, task) at that version's parameters, add it to this worker's
in-memory partial of the version, and every few reads commit partials and acknowledgements in one
atomic step (`OmegaStore.commit`), then trim the entries every group has acknowledged, so the
stream holds only its backlog. Entries that cannot be decoded, whose importance overflows, or
that keep failing, go to the dead-letter stream with the reason. Several workers share one
consumer group; Ω is their merged partials.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import redis
import torch

from mas.accumulator import ImportanceAccumulator, all_finite
from mas.importance import importance_sums
from mas.model import MultiHeadNet
from mas_stream.bootstrap import every, run_worker
from mas_stream.records.omega import PartialCheckpoint
from mas_stream.records.sample import CorruptSample, Sample, StreamEntry
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.omega_summary import OmegaSummarizer
from mas_stream.store.reconnect import Reconnect
from mas_stream.store.redis_server import RedisClient
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from mas_stream.store.worker_ids import LEASE_SECONDS as ID_LEASE_SECONDS
from mas_stream.store.worker_ids import WorkerIdClaim, claim_worker_id
from worker.importance_metrics import (
    BATCHES,
    COMMIT_CONFLICTS,
    DEAD_LETTER_CORRUPT,
    DEAD_LETTER_FAILED,
    DEAD_LETTER_NON_FINITE,
    DEAD_LETTER_RETRIES,
    DEAD_LETTERED,
    LAST_UPDATE,
    METRICS,
    SAMPLES_APPLIED,
    ImportanceGauges,
)

log = logging.getLogger(__name__)

_MODEL_CACHE_SIZE: Final = 4
# The longest pause before the loop reads again while Redis cannot be reached.
_REDIS_RETRY_CAP_S: Final = 1.0


class ImportanceWorker:
    """`worker_id` names the Ω partial (stable across restarts, unique among live workers);
    `consumer` names the stream consumer (new per process, so a restart reclaims the old one's
    pending entries once they are `claim_min_idle_ms` idle)."""

    def __init__(
        self,
        settings: Settings,
        redis_client: RedisClient,
        keys: Keys,
        registry: ModelRegistry,
        *,
        worker_id: str,
        consumer: str,
        device: str | torch.device = "cpu",
        read_count: int = 64,
        block_ms: int = 1000,
        id_claim: WorkerIdClaim | None = None,
    ) -> None:
        self._settings = settings
        self._id_claim = id_claim
        self._stream = SampleStream(redis_client, keys, settings.stream_maxlen)
        self._omega = OmegaStore(redis_client, keys)
        self._registry = registry
        self.worker_id = worker_id
        self.consumer = consumer
        self._device = torch.device(device)
        self._read_count = read_count
        self._block_ms = block_ms
        self._models: OrderedDict[int, MultiHeadNet] = OrderedDict()
        self._gauges = ImportanceGauges(
            self._stream, registry, OmegaSummarizer(self._omega, registry)
        )
        # Uncommitted work: whole partials of the touched versions, the rows each task added to
        # them, and the entries they include.
        self._accumulators: dict[int, ImportanceAccumulator] = {}
        self._task_counts: defaultdict[int, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._uncommitted: set[str] = set()
        self._reads_since_commit = 0
        self._last_read_full = False
        self._stream.ensure_group()

    def __repr__(self) -> str:
        return f"ImportanceWorker({self.worker_id}, consumer {self.consumer}, on {self._device})"

    def run_once(self) -> int:
        """One read (blocking up to block_ms when there is nothing to claim); returns the rows
        added to Ω in memory, committed now or at a later checkpoint."""
        entries = self._stream.claim_stale(
            self.consumer, self._settings.claim_min_idle_ms, self._read_count
        )
        if len(entries) < self._read_count:
            block_ms = None if entries else self._block_ms
            entries += self._stream.read(self.consumer, self._read_count - len(entries), block_ms)
        self._last_read_full = len(entries) >= self._read_count
        # An entry can arrive twice in one loop (claimed, then in this consumer's backlog) and
        # again later while applied but uncommitted (reclaimed from itself): apply it once.
        fresh = list(
            {e.entry_id: e for e in entries if e.entry_id not in self._uncommitted}.values()
        )
        with self._kept_fresh([e.entry_id for e in fresh] + sorted(self._uncommitted)):
            applied = self._apply(fresh)
            if fresh:
                self._reads_since_commit += 1
            if not fresh or self._reads_since_commit >= self._settings.checkpoint_every:
                self.checkpoint()
        self._gauges.refresh()
        return applied

    def run_forever(self, stop_event: threading.Event) -> None:
        """Until stop_event is set; the batch in hand is finished and committed before returning.
        The worker id's claim is renewed meanwhile; a worker that lost it stops."""
        claim = self._id_claim
        if claim is None:
            self._loop(stop_event)
            return

        def renew() -> None:
            if not claim.renew():
                log.error("lost the claim on worker id %s; stopping", self.worker_id)
                stop_event.set()

        try:
            with every(ID_LEASE_SECONDS / 3, renew, name=f"claim-{self.worker_id}"):
                self._loop(stop_event)
        finally:
            claim.release()

    def _loop(self, stop_event: threading.Event) -> None:
        linger_s = self._settings.importance_linger_ms / 1000
        reconnect = Reconnect(cap_seconds=_REDIS_RETRY_CAP_S)
        while not stop_event.is_set():
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                reconnect.wait_after(exc, stop_event, "importance worker: Redis unavailable")
            else:
                reconnect.succeeded()
                if not self._last_read_full:
                    # The worker keeps up: samples that gather meanwhile make one larger pass,
                    # which costs less CPU per sample than many passes of one entry each.
                    stop_event.wait(linger_s)
        self.checkpoint()

    def checkpoint(self) -> bool:
        """Commits uncommitted work. On a conflict, drops it: the partials are reloaded from Redis
        on next use and this consumer's still-pending entries are read again."""
        if not self._uncommitted:
            return True
        rows = sum(sum(tasks.values()) for tasks in self._task_counts.values())
        committed = self._omega.commit(
            {version: self._accumulators[version] for version in self._task_counts},
            PartialCheckpoint(
                worker=self.worker_id,
                consumer=self.consumer,
                task_counts={version: dict(tasks) for version, tasks in self._task_counts.items()},
                entry_ids=tuple(sorted(self._uncommitted)),
            ),
        )
        if committed:
            SAMPLES_APPLIED.inc(rows)
            LAST_UPDATE.set_to_current_time()
            self._gauges.omega_changed()
            for version in self._accumulators.keys() - self._models.keys():
                del self._accumulators[version]
        else:
            COMMIT_CONFLICTS.inc()
            log.warning(
                "checkpoint refused (entries reclaimed or partial moved on); redoing %d rows", rows
            )
            self._accumulators.clear()
            self._stream.rewind(self.consumer)
        self._task_counts.clear()
        self._uncommitted.clear()
        self._reads_since_commit = 0
        if committed:
            # Last, once the commit is accounted for: an error here loses nothing but the trim.
            self._stream.trim_acknowledged()
        return committed

    @contextmanager
    def _kept_fresh(self, entry_ids: list[str]) -> Iterator[None]:
        """Keeps the entries in hand fresh every third of claim_min_idle_ms while they are worked
        on: a pass slower than that would otherwise let another worker reclaim them, redo the
        work, refuse this worker's commit and count a delivery each time, until dead-lettered."""
        interval = self._settings.claim_min_idle_ms / 3000
        if not entry_ids or interval <= 0:
            yield
            return

        def keep() -> None:
            try:
                self._stream.keep(self.consumer, entry_ids)
            except redis.RedisError as exc:
                log.warning("could not keep %d entries fresh: %s", len(entry_ids), exc)

        with every(interval, keep, name=f"keep-{self.consumer}"):
            yield

    def _apply(self, entries: list[StreamEntry]) -> int:
        groups: dict[tuple[int, str, tuple[int, ...]], list[tuple[StreamEntry, Sample]]] = {}
        limit = self._settings.dead_letter_after
        for entry in entries:
            if entry.deliveries is not None and entry.deliveries > limit:
                self._dead_letter(entry, DEAD_LETTER_RETRIES, f"delivered {entry.deliveries} times")
                continue
            try:
                sample = entry.sample()
            except CorruptSample as exc:
                self._dead_letter(entry, DEAD_LETTER_CORRUPT, str(exc))
                continue
            key = (sample.version, sample.task, tuple(sample.inputs.shape[1:]))
            groups.setdefault(key, []).append((entry, sample))
        return sum(self._apply_group(v, task, group) for (v, task, _), group in groups.items())

    def _apply_group(self, version: int, task: str, group: list[tuple[StreamEntry, Sample]]) -> int:
        inputs = torch.cat([sample.inputs for _, sample in group])
        try:
            sums = importance_sums(
                self._model(version),
                inputs.to(self._device),
                task=task,
                method=self._settings.importance_method,
                batch_size=self._settings.importance_batch,
            )
        except redis.RedisError:
            raise
        except Exception as exc:
            # Left pending, the entries come back through claim_stale after claim_min_idle_ms.
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("version %d task %r: %s", version, task, reason)
            for entry, _ in group:
                if (entry.deliveries or 0) >= self._settings.dead_letter_after:
                    self._dead_letter(entry, DEAD_LETTER_FAILED, reason)
            return 0
        if not all_finite(sums):
            return self._apply_non_finite(version, task, group)
        # float64 running sums: in float32 one sample's share is lost once ~10⁷ are summed.
        sums64 = {name: value.to("cpu", torch.float64) for name, value in sums.items()}
        self._accumulator(version).add(sums64, inputs.shape[0])
        self._task_counts[version][task] += inputs.shape[0]
        self._uncommitted.update(entry.entry_id for entry, _ in group)
        BATCHES.inc()
        return inputs.shape[0]

    def _apply_non_finite(
        self, version: int, task: str, group: list[tuple[StreamEntry, Sample]]
    ) -> int:
        """Finite inputs can still overflow Ω (rows of ~1e20): one inf or NaN would poison the
        version's partial for good, so the entries are retried one by one and the ones that
        overflow alone are dead-lettered, while the rest are counted."""
        if len(group) > 1:
            return sum(self._apply_group(version, task, [item]) for item in group)
        self._dead_letter(
            group[0][0],
            DEAD_LETTER_NON_FINITE,
            f"its importance at version {version}, task {task!r} is not finite",
        )
        return 0

    def _dead_letter(self, entry: StreamEntry, kind: str, reason: str) -> None:
        log.warning("dead-lettering %s (%s): %s", entry.entry_id, kind, reason)
        self._stream.dead_letter(entry.entry_id, entry.fields, f"{kind}: {reason}")
        DEAD_LETTERED.labels(reason=kind).inc()

    def _model(self, version: int) -> MultiHeadNet:
        """Versions are immutable, so a cached model never goes stale."""
        if version in self._models:
            self._models.move_to_end(version)
        else:
            self._models[version] = self._registry.load(version, self._device).model
            if len(self._models) > _MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return self._models[version]

    def _accumulator(self, version: int) -> ImportanceAccumulator:
        """Continues this worker's committed partial, so a restart with the same id adds to it."""
        if version not in self._accumulators:
            partial = self._omega.load_partial(version, self.worker_id)
            self._accumulators[version] = ImportanceAccumulator() if partial is None else partial
        return self._accumulators[version]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker-id",
        default=None,
        help="Id of this worker's Ω partial, held by one live worker at a time (default: the "
        "first free one of <hostname>, <hostname>-2, ...).",
    )
    parser.add_argument(
        "--consumer",
        default=None,
        help="Stream consumer name (default: <worker-id>-<random>, new for every process).",
    )


def run(args: argparse.Namespace) -> int:
    def build(
        settings: Settings, client: RedisClient, keys: Keys, device: torch.device
    ) -> ImportanceWorker:
        torch.set_num_threads(settings.importance_threads)
        claim = claim_worker_id(client, keys, args.worker_id, socket.gethostname())
        return ImportanceWorker(
            settings,
            client,
            keys,
            ModelRegistry(client, keys, settings.models_dir),
            worker_id=claim.worker_id,
            consumer=args.consumer or f"{claim.worker_id}-{uuid.uuid4().hex[:8]}",
            device=device,
            id_claim=claim,
        )

    return run_worker(build, "importance", METRICS)
